"""Referrers: the fallback tag schemas, the referrers API client, and how plan and transfer use
them. tests/integration/test_referrers.py covers the fallback path against the real registry;
the Debian registry has no referrers API, so the API path is tested here, over
httpx.MockTransport answering as the OCI distribution 1.1 spec says a registry with it does."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest

from adapters.distribution.client import DistributionClient, ManifestHead
from adapters.endpoint import Endpoint
from adapters.errors import ContentError
from adapters.oci import Descriptor, Digest, parse_manifest
from adapters.oci.referrers import (
    cosign_tag,
    fallback_tag,
    is_referrer_tag,
    merged_index,
    parse_referrer_tag,
    referrer_descriptor,
)
from policies.models import Policy
from tasks.discover import RepositoryTags
from tasks.models import TagOutcome, TagPlan
from tasks.plan import make_plan
from tasks.referrers import (
    MAX_REFERRER_DEPTH,
    push_order,
    subject_missing,
    subject_tags,
    write_fallback_index,
)
from tests.support.fake_client import NoRoundTrips

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": str(Digest.of(b"{}"))}


def manifest(name: str, subject: Digest | None = None, artifact_type: str | None = None):
    body: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": EMPTY,
                               "layers": [], "annotations": {"name": name}}
    if artifact_type:
        body["artifactType"] = artifact_type
    if subject:
        body["subject"] = {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": 1}
    return parse_manifest(json.dumps(body).encode(), OCI_MANIFEST)


IMAGE = manifest("image")
SBOM = manifest("sbom", IMAGE.digest, "application/spdx+json")
SBOM_SIGNATURE = manifest("sbom-signature", SBOM.digest, "application/vnd.dev.cosign.artifact.sig.v1+json")
COSIGNED = manifest("cosign-signature")


def index_of(*manifests) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [referrer_descriptor(m) for m in manifests]}).encode()


# -- the tag schemas -------------------------------------------------------------------------

def test_the_fallback_schemas_name_a_subject_and_nothing_else_does() -> None:
    hex_part = IMAGE.digest.removeprefix("sha256:")
    assert fallback_tag(IMAGE.digest) == f"sha256-{hex_part}"
    assert cosign_tag(IMAGE.digest, ".sig") == f"sha256-{hex_part}.sig"
    for suffix in ("", ".sig", ".att", ".sbom"):
        parsed = parse_referrer_tag(f"sha256-{hex_part}{suffix}")
        assert parsed is not None and parsed.subject == IMAGE.digest and parsed.suffix == suffix
        assert parsed.is_index == (suffix == "")
    for other in ("v1", "latest", f"sha256-{hex_part}.txt", f"sha256-{hex_part[:-1]}.sig",
                  f"sha256-{hex_part.upper()}", f"md5-{hex_part}", f"x-sha256-{hex_part}.sig"):
        assert not is_referrer_tag(other), other
    with pytest.raises(ValueError):
        cosign_tag(IMAGE.digest, ".txt")
    sha512 = Digest("sha512:" + "a" * 128)
    assert len(fallback_tag(sha512)) == 128  # truncated to the tag grammar's limit


def test_a_descriptor_carries_the_artifact_type_or_else_the_config_type_and_the_annotations() -> None:
    described = referrer_descriptor(SBOM)
    assert described == {"mediaType": OCI_MANIFEST, "digest": SBOM.digest, "size": SBOM.size,
                         "artifactType": "application/spdx+json", "annotations": {"name": "sbom"}}
    assert referrer_descriptor(COSIGNED)["artifactType"] == EMPTY["mediaType"]


def test_merging_keeps_every_entry_already_listed_and_adds_only_new_ones() -> None:
    other = {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"elsewhere")), "size": 9,
             "annotations": {"from": "another source"}}
    existing = parse_manifest(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                          "manifests": [other]}).encode(), OCI_INDEX)
    merged = merged_index(existing, [referrer_descriptor(SBOM), referrer_descriptor(SBOM)])
    assert merged is not None
    assert json.loads(merged.raw)["manifests"] == [other, referrer_descriptor(SBOM)]
    assert merged_index(merged, [referrer_descriptor(SBOM)]) is None  # nothing new: no write
    created = merged_index(None, [referrer_descriptor(SBOM)])
    assert created is not None and created.is_index and [c.digest for c in created.children] == [SBOM.digest]
    with pytest.raises(ContentError, match="not an index"):
        merged_index(IMAGE, [referrer_descriptor(SBOM)])


def test_referrers_off_leaves_the_schema_tags_to_the_filters_like_any_other() -> None:
    tags = ["v1", cosign_tag(IMAGE.digest, ".sig"), fallback_tag(IMAGE.digest)]
    assert subject_tags(tags, referrers=True) == ["v1"]
    assert subject_tags(tags, referrers=False) == tags


# -- the client ------------------------------------------------------------------------------

def client(handler) -> DistributionClient:
    return DistributionClient(Endpoint(url="http://registry.test"), transport=httpx.MockTransport(handler))


async def test_a_registry_with_the_api_is_asked_page_by_page_and_filtered_when_it_does_not() -> None:
    asked: list[str] = []
    pages = {None: [SBOM, COSIGNED], "2": [SBOM_SIGNATURE]}

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        page = request.url.params.get("page")
        headers = {"Content-Type": OCI_INDEX}
        if page is None:
            headers["Link"] = f'</v2/app/referrers/{IMAGE.digest}?page=2>; rel="next"'
        return httpx.Response(200, content=index_of(*pages[page]), headers=headers)

    async with client(handler) as registry:
        everything = await registry.referrers("app", IMAGE.digest)
        assert [d.digest for d in everything or ()] == [SBOM.digest, COSIGNED.digest, SBOM_SIGNATURE.digest]
        sboms = await registry.referrers("app", IMAGE.digest, "application/spdx+json")
        assert [d.digest for d in sboms or ()] == [SBOM.digest]  # the registry ignored the filter
        assert registry.referrers_api is True
    assert asked[0] == f"http://registry.test/v2/app/referrers/{IMAGE.digest}"
    assert asked[2].endswith("?artifactType=application%2Fspdx%2Bjson")


async def test_a_registry_without_the_api_is_asked_once_per_client_even_when_asked_at_once() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(404, text="404 page not found\n")  # what distribution 2.8 answers

    async with client(handler) as registry:
        answers = await asyncio.gather(*(registry.referrers("app", d) for d in (IMAGE.digest, SBOM.digest)))
        assert answers == [None, None]
        assert await registry.referrers("other", COSIGNED.digest) is None
        assert registry.referrers_api is False
    assert len(asked) == 1


async def test_an_oci_layout_has_no_api_and_is_never_asked(tmp_path) -> None:
    """Its fallback-schema tags are its only referrers index; it has no HTTP client to ask."""
    from adapters.oci_layout import OciLayoutClient

    layout = OciLayoutClient(Endpoint(url=tmp_path.as_uri()))
    assert layout.referrers_api is False
    assert await layout.referrers("app", IMAGE.digest) is None
    assert layout.requests_made == 0


# -- plan and transfer on the API path ------------------------------------------------------

class ApiRegistry(NoRoundTrips):
    """A registry with the referrers API holding ``manifests`` under ``tags`` (plan's view)."""

    def __init__(self, manifests, tags: dict[str, Digest] | None = None) -> None:
        self.manifests = {m.digest: m for m in manifests}
        self.tag_map = tags or {}
        self.calls: list[str] = []

    def _resolve(self, ref: str):
        return self.manifests.get(self.tag_map.get(ref, ref))  # type: ignore[arg-type]

    async def referrers(self, repository: str, digest: Digest, artifact_type: str | None = None):
        self.calls.append(f"referrers {digest}")
        return [Descriptor.model_validate(referrer_descriptor(m)) for m in self.manifests.values()
                if m.subject is not None and m.subject.digest == digest]

    async def list_tags(self, repository: str) -> list[str]:
        self.calls.append("tags")
        return list(self.tag_map)

    async def get_manifest(self, repository: str, ref: str):
        self.calls.append(f"GET {ref}")
        found = self._resolve(ref)
        if found is None:
            from adapters.errors import NotFoundError
            raise NotFoundError(f"{ref} unknown", status=404)
        return found

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        self.calls.append(f"HEAD {ref}")
        found = self._resolve(ref)
        return ManifestHead(found.digest, found.media_type, found.size) if found else None


def adapter(registry: ApiRegistry) -> SimpleNamespace:
    return SimpleNamespace(client=registry, info=SimpleNamespace(min_path_components=None,
                                                                 max_path_components=None))


POLICY = Policy(name="p", src_registry="s", dest_registry="d")


async def test_referrers_found_by_the_api_are_planned_by_digest_after_their_subject_and_follow_down() -> None:
    source = ApiRegistry([IMAGE, SBOM, SBOM_SIGNATURE], {"v1": IMAGE.digest})
    target = ApiRegistry([IMAGE, SBOM])  # the image and its SBOM arrived before; not the signature
    plan = await make_plan(adapter(source), adapter(target), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=["v1"], referrer_tags=[])])

    [repository] = plan.repositories
    assert [(t.tag, t.subject, t.action) for t in repository.tags] == [
        ("v1", None, "copy"), (SBOM.digest, IMAGE.digest, "identical"),
        (SBOM_SIGNATURE.digest, SBOM.digest, "copy")]
    [spec] = plan.specs(POLICY)
    assert [(t.tag, t.subject) for t in spec.tags] == [("v1", None), (SBOM_SIGNATURE.digest, SBOM.digest)]
    assert "tags" not in source.calls  # discover's full list is used, not read again
    # The target's API says which referrers it lists: no HEAD per referrer.
    assert not [c for c in target.calls if c.startswith("HEAD sha256:")]


async def test_referrers_off_asks_nothing_about_them() -> None:
    source = ApiRegistry([IMAGE, SBOM], {"v1": IMAGE.digest})
    off = POLICY.model_copy(update={"referrers": False})
    plan = await make_plan(adapter(source), adapter(ApiRegistry([])), off,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=["v1"])])
    assert [t.tag for t in plan.repositories[0].tags] == ["v1"]
    assert not [c for c in source.calls if c.startswith(("referrers", "tags"))]


def test_referrers_are_pushed_turn_by_turn_after_their_subjects() -> None:
    plans = [TagPlan(tag=SBOM_SIGNATURE.digest, digest=SBOM_SIGNATURE.digest, subject=SBOM.digest),
             TagPlan(tag=SBOM.digest, digest=SBOM.digest, subject=IMAGE.digest),
             TagPlan(tag="v1", digest=IMAGE.digest),
             TagPlan(tag="sig", digest=COSIGNED.digest, subject=Digest.of(b"on the target already"))]
    assert push_order(plans) == [2, 1, 0, 0]
    loop = [TagPlan(tag="a", digest=SBOM.digest, subject=IMAGE.digest),
            TagPlan(tag="b", digest=IMAGE.digest, subject=SBOM.digest)]
    assert max(push_order(loop)) <= len(loop)  # a cycle ends
    failed = {2: TagOutcome(tag="v1", digest=IMAGE.digest, status="failed", reason="boom")}
    assert "was not copied" in subject_missing(plans[1], plans, failed)
    assert subject_missing(plans[3], plans, failed) == ""
    assert MAX_REFERRER_DEPTH >= 2  # an SBOM's signature is two levels below the image


async def test_a_target_with_the_api_gets_no_fallback_index() -> None:
    target = ApiRegistry([IMAGE, SBOM])
    written = await write_fallback_index(target, "app", IMAGE.digest, [SBOM.digest])  # type: ignore[arg-type]
    assert written is False
    assert target.calls == [f"referrers {IMAGE.digest}"]


async def test_a_named_signature_travels_only_when_its_image_is_on_the_target() -> None:
    """An event names cosign's tag alone (it signs after the push): the signature of an image
    the target holds travels; one whose image is nowhere is an orphan and stays behind."""
    orphan_subject = Digest.of(b"an image nobody has")
    signed, orphan = cosign_tag(IMAGE.digest, ".sig"), cosign_tag(orphan_subject, ".sig")
    source = ApiRegistry([COSIGNED], {signed: COSIGNED.digest, orphan: COSIGNED.digest})
    target = ApiRegistry([IMAGE])
    plan = await make_plan(adapter(source), adapter(target), POLICY,  # type: ignore[arg-type]
                           [RepositoryTags(repository="app", tags=[signed, orphan])])

    [repository] = plan.repositories
    assert [(t.tag, t.subject, t.action) for t in repository.tags] == [(signed, IMAGE.digest, "copy")]
    assert "tags" in source.calls  # an event's tags: the full list is read once, here
