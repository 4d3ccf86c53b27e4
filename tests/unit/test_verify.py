"""Verification over in-memory registries: what it reports, what it asks, and how often."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest

from adapters.base import AdapterInfo
from adapters.distribution.client import ManifestHead
from adapters.errors import NotFoundError, ReplicationError, ServerError
from adapters.oci import (
    DOCKER_FOREIGN_LAYER,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Digest,
    Manifest,
    parse_manifest,
)
from policies.models import Filter, Policy
from tasks.plan import Plan, PlannedRepository, PlannedTag
from tasks.summary import summarize
from tasks.verify import VERIFY_CONCURRENCY, VerifyReport, verify_policy
from tests.support.fake_client import NoRoundTrips

KNOWN: dict[str, Manifest] = {}  # every manifest made here, by digest, so a fake can push children


def blob(name: str) -> tuple[Digest, int]:
    return Digest.of(name.encode()), len(name)


def image(*layers: str, config: str = "config", foreign: str | None = None) -> Manifest:
    def desc(name: str, media_type: str) -> dict[str, object]:
        digest, size = blob(name)
        return {"mediaType": media_type, "digest": digest, "size": size}

    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(config, OCI_CONFIG),
            "layers": [desc(n, OCI_LAYER_GZIP) for n in layers]
            + ([desc(foreign, DOCKER_FOREIGN_LAYER)] if foreign else [])}
    return _known(parse_manifest(json.dumps(body).encode()))


def _known(manifest: Manifest) -> Manifest:
    KNOWN[manifest.digest] = manifest
    return manifest


def index(*children: Manifest) -> Manifest:
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": c.media_type, "digest": c.digest, "size": c.size,
         "platform": {"architecture": f"arch{i}", "os": "linux"}} for i, c in enumerate(children)]}
    return _known(parse_manifest(json.dumps(body).encode()))


class FakeClient(NoRoundTrips):
    """Repositories of tags and manifests (by digest) and blobs; counts and bounds every request."""

    host = "fake"

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, Digest]] = {}
        self.manifests: dict[str, dict[str, Manifest]] = {}
        self.blobs: dict[str, set[str]] = {}
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_blob: str | None = None

    def put(self, repository: str, tag: str, manifest: Manifest, *, blobs: bool = True) -> None:
        repo = self.manifests.setdefault(repository, {})
        pending = [manifest]
        while pending:
            m = pending.pop()
            repo[m.digest] = m
            pending.extend(KNOWN[c.digest] for c in m.children)
            if blobs:
                self.blobs.setdefault(repository, set()).update(b.digest for b in m.blobs)
        self.tags.setdefault(repository, {})[tag] = manifest.digest

    async def _request(self, kind: str, repository: str, ref: str) -> None:
        self.calls[(kind, repository, ref)] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        await self._request("head", repository, ref)
        digest = self.tags.get(repository, {}).get(ref, ref)
        manifest = self.manifests.get(repository, {}).get(digest)
        return ManifestHead(manifest.digest, manifest.media_type, manifest.size) if manifest else None

    async def get_manifest(self, repository: str, ref: str) -> Manifest:
        await self._request("get", repository, ref)
        manifest = self.manifests.get(repository, {}).get(ref)
        if manifest is None:
            raise NotFoundError(f"GET {repository}@{ref}: 404", status=404)
        return manifest

    async def blob_exists(self, repository: str, digest: Digest) -> int | None:
        await self._request("blob", repository, digest)
        if digest == self.fail_blob:
            raise ServerError("HEAD blob: 503", status=503)
        return 1 if digest in self.blobs.get(repository, set()) else None


class FakeAdapter:
    info = AdapterInfo(type="fake", description="in memory")

    def __init__(self) -> None:
        self.client = FakeClient()

    async def list_repositories(self, names: Sequence[str] | None = None) -> AsyncIterator[str]:
        for name in names if names is not None else sorted(self.client.tags):
            yield name

    async def list_tags(self, repository: str) -> list[str]:
        if repository not in self.client.tags:
            raise NotFoundError("404", status=404)
        return list(self.client.tags[repository])


def policy(**kw: object) -> Policy:
    fields: dict[str, object] = {"name": "p", "src_registry": "s", "dest_registry": "d",
                                 "dest_namespace": "mirror", "dest_namespace_replace_count": 1,
                                 "filters": [Filter(type="name", value="team/**")], **kw}
    return Policy.model_validate(fields)


def both(*, tags: dict[str, dict[str, Manifest]]) -> tuple[FakeAdapter, FakeAdapter]:
    """A source holding ``tags`` (repository -> tag -> manifest) and a complete copy on the target
    under mirror/..."""
    source, target = FakeAdapter(), FakeAdapter()
    for repository, by_tag in tags.items():
        for tag, manifest in by_tag.items():
            source.client.put(repository, tag, manifest)
            target.client.put(repository.replace("team/", "mirror/", 1), tag, manifest)
    return source, target


CHILD_A, CHILD_B = image("a1", "shared", config="ca"), image("b1", "shared", config="cb")
INDEX = index(CHILD_A, CHILD_B)
APP = image("base", "app")
TOOL = image("base", "tool", foreign="windows-base")


async def test_a_complete_copy_is_ok_and_each_blob_is_asked_once_per_repository():
    source, target = both(tags={"team/app": {"1.0": APP, "latest": APP, "multi": INDEX},
                                "team/tool": {"1.0": TOOL}, "other/x": {"1.0": APP}})

    report = await verify_policy(source, target, policy())

    assert report == VerifyReport(ok=True, checked_tags=4, checked_blobs=11, problems=[])
    blob_heads = [k for k in target.client.calls if k[0] == "blob"]
    assert all(target.client.calls[k] == 1 for k in blob_heads)
    # app: config, base, app, ca, cb, a1, b1, shared; tool: config, base, tool (foreign layer skipped)
    assert sorted({(r, d) for _, r, d in blob_heads}) == sorted(
        [("mirror/app", blob(n)[0]) for n in ("config", "base", "app", "ca", "cb", "a1", "b1", "shared")]
        + [("mirror/tool", blob(n)[0]) for n in ("config", "base", "tool")])
    assert ("blob", "mirror/tool", blob("windows-base")[0]) not in target.client.calls
    assert not any(r == "mirror/x" or r == "other/x" for _, r, _ in target.client.calls)  # filtered out
    # The manifest shared by two tags is read once.
    assert target.client.calls[("get", "mirror/app", APP.digest)] == 1


async def test_every_kind_of_problem_is_named_with_its_repository_tag_and_digest():
    moved = image("base", "app", config="config-2")
    source, target = both(tags={"team/app": {"1.0": APP, "2.0": moved, "multi": INDEX, "gone": APP}})
    target.client.put("mirror/app", "2.0", APP)  # the target is behind: digest differs
    del target.client.tags["mirror/app"]["gone"]  # never copied
    target.client.blobs["mirror/app"].discard(blob("app")[0])  # lost blob
    del target.client.manifests["mirror/app"][CHILD_B.digest]  # lost child manifest

    report = await verify_policy(source, target, policy())

    assert not report.ok and report.checked_tags == 4
    found = sorted((p.tag, p.kind, p.digest) for p in report.problems)
    assert found == sorted([
        ("1.0", "missing-blob", blob("app")[0]),
        ("2.0", "digest-differs", moved.digest),
        ("2.0", "missing-blob", blob("app")[0]),  # the target's own manifest of 2.0 is checked too
        ("multi", "missing-manifest", CHILD_B.digest),
        ("gone", "missing-tag", APP.digest),
    ])
    assert all((p.repository, p.target) == ("team/app", "mirror/app") for p in report.problems)
    lost = next(p for p in report.problems if p.kind == "missing-manifest")
    assert f"child of index {INDEX.digest}" in lost.detail
    assert target.client.calls[("blob", "mirror/app", blob("app")[0])] == 1  # asked once for two tags


async def test_override_off_explains_a_differing_tag():
    source, target = both(tags={"team/app": {"1.0": APP}})
    target.client.put("mirror/app", "1.0", TOOL)
    report = await verify_policy(source, target, policy(override=False))
    assert [p.kind for p in report.problems] == ["digest-differs"]
    assert "override is off" in report.problems[0].detail


async def test_a_tag_that_left_the_source_is_not_checked_and_tag_filters_apply():
    source, target = both(tags={"team/app": {"1.0": APP, "2.0": APP}})
    report = await verify_policy(source, target, policy(filters=[
        Filter(type="name", value="team/**"), Filter(type="tag", value="1.*")]))
    assert (report.ok, report.checked_tags) == (True, 1)

    from tasks.discover import RepositoryTags
    report = await verify_policy(source, target, policy(),
                                 found=[RepositoryTags(repository="team/app", tags=["1.0", "deleted"])])
    assert (report.ok, report.checked_tags) == (True, 1)


async def test_requests_in_flight_stay_within_the_bound():
    many = {f"t{i}": image(f"layer-{i}", "base") for i in range(60)}
    source, target = both(tags={"team/app": many})
    report = await verify_policy(source, target, policy())
    assert report.ok and report.checked_tags == 60
    assert source.client.max_in_flight + target.client.max_in_flight <= 2 * VERIFY_CONCURRENCY
    assert max(source.client.max_in_flight, target.client.max_in_flight) <= VERIFY_CONCURRENCY
    assert target.client.max_in_flight > 1  # and it does run concurrently


async def test_a_registry_failure_raises_the_error_itself():
    source, target = both(tags={"team/app": {"1.0": APP, "2.0": TOOL}})
    target.client.fail_blob = blob("app")[0]
    with pytest.raises(ReplicationError, match="503"):
        await verify_policy(source, target, policy())


def test_a_failed_verification_fails_the_execution_and_the_message_names_it():
    plan = Plan(repositories=[PlannedRepository(source_repository="team/app", target_repository="mirror/app",
                                                tags=[PlannedTag(tag="1.0", digest=APP.digest,
                                                                 target_digest=APP.digest,
                                                                 action="identical")])])
    from tasks.verify import Problem
    problems = [Problem(repository="team/app", target="mirror/app", tag="1.0", kind="missing-blob",
                        detail=f"blob {d} gone", digest=d)
                for d in (blob(n)[0] for n in ("a", "b", "c", "d"))]
    bad = summarize("p", plan, {}, verify=VerifyReport(ok=False, checked_tags=1, checked_blobs=4,
                                                        problems=problems))
    assert bad.status == "Failed" and bad.verify is not None
    assert bad.message.startswith("verification found 4 problem(s): mirror/app:1.0 missing-blob")
    assert blob("a")[0] in bad.message and "(+1 more)" in bad.message and blob("d")[0] not in bad.message
    assert bad.public()["verify"]["problems"][3]["digest"] == blob("d")[0]

    good = summarize("p", plan, {}, verify=VerifyReport(ok=True, checked_tags=1, checked_blobs=4))
    assert good.status == "Succeeded" and "verified 1 tags and 4 blobs" in good.message
    broken = summarize("p", plan, {}, verify=VerifyReport(ok=False, checked_tags=0, checked_blobs=0,
                                                           error="TransportError: refused"))
    assert broken.status == "Failed" and "could not finish: TransportError" in broken.message
    assert summarize("p", plan, {}).verify is None


def test_verify_is_off_unless_the_policy_asks():
    assert policy().verify is False
    assert policy(verify=True).verify is True
