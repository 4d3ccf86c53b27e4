"""Platform specs and the selection of an index's children for a policy's platforms."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.distribution.auth import finished
from adapters.distribution.client import ManifestHead
from adapters.errors import ConfigError, ContentError, NotFoundError
from adapters.oci import DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST, Digest, Manifest
from adapters.oci import parse_manifest as parse
from adapters.oci.image_config import MAX_IMAGE_CONFIG_BYTES, parse_image_config
from adapters.oci.manifest import Descriptor, Platform
from adapters.oci.platform import (
    ATTESTATION_MANIFEST,
    REFERENCE_DIGEST,
    REFERENCE_TYPE,
    PlatformSpec,
    is_attestation,
    parse_platforms,
    platform_text,
)
from policies.models import Policy, parse_config
from tasks.discover import RepositoryTags
from tasks.image_config import read_image_config
from tasks.plan import make_plan
from tasks.platforms import no_match_reason, select
from tasks.verify import verify_policy

FOUR = (("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "arm", "v7"),
        ("windows", "amd64", None))


def image(os: str, arch: str, variant: str | None = None, *, oci: bool = True) -> Manifest:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json",
              "digest": str(Digest.of(f"{os}/{arch}/{variant}".encode())), "size": 2}
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST_V2,
            "config": config, "layers": []}
    return parse(json.dumps(body).encode())


def entry(manifest: Manifest, platform: dict[str, str] | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": manifest.media_type, "digest": str(manifest.digest),
                           "size": manifest.size}
    if platform is not None:
        out["platform"] = platform
    if annotations is not None:
        out["annotations"] = annotations
    return out


def platform(os: str, arch: str, variant: str | None = None) -> dict[str, str]:
    return {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}


def index(entries: list[dict[str, Any]], *, oci: bool = True, **extra: Any) -> Manifest:
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX if oci else DOCKER_MANIFEST_LIST,
            "manifests": entries, **extra}
    # indent: not the compact form, so a rewrite cannot produce these bytes by chance.
    return parse(json.dumps(body, indent=3).encode())


class Source:
    """Manifests by digest, as the source registry would serve them."""

    def __init__(self, *manifests: Manifest) -> None:
        self.by_digest = {m.digest: m for m in manifests}
        self.asked: list[str] = []

    async def __call__(self, digest: Digest) -> Manifest:
        self.asked.append(digest)
        return self.by_digest[digest]


def four_platforms(*, oci: bool) -> tuple[Manifest, list[Manifest]]:
    images = [image(*p, oci=oci) for p in FOUR]
    return index([entry(m, platform(*p)) for m, p in zip(images, FOUR, strict=True)], oci=oci), images


AMD64 = parse_platforms(["linux/amd64"])


# ------------------------------------------------------------------------------ specs
@pytest.mark.parametrize(("text", "expected"), [
    ("linux/amd64", "linux/amd64"), ("linux/arm64/v8", "linux/arm64/v8"), ("linux/*", "linux/*"),
    (" Linux/AMD64 ", "linux/amd64"), ("linux/x86_64", "linux/amd64"), ("linux/aarch64", "linux/arm64"),
    ("linux/armhf", "linux/arm/v7"), ("windows/amd64", "windows/amd64"),
])
def test_specs_read_in_the_form_they_are_compared(text: str, expected: str) -> None:
    assert str(PlatformSpec.parse(text)) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", "*/amd64", "linux/*/v7", "*/*",
                                  "linux/amd 64", "linux/" + "a" * 40, ""])
def test_a_bad_spec_is_one_line_naming_the_forms(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PlatformSpec.parse(text)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("platform: platform ")
    assert "OS/ARCH" in message or "only the architecture may be '*'" in message


def test_matching_by_os_architecture_and_variant() -> None:
    def found(os: str, arch: str, variant: str | None = None) -> Platform:
        return Platform(os=os, architecture=arch, variant=variant)

    arm64 = PlatformSpec.parse("linux/arm64")
    assert arm64.matches(found("linux", "arm64", "v8")) and arm64.matches(found("linux", "arm64"))
    assert not arm64.matches(found("windows", "arm64")) and not arm64.matches(found("linux", "amd64"))
    assert PlatformSpec.parse("linux/arm64/v8").matches(found("linux", "arm64"))  # v8 is arm64's only
    v7 = PlatformSpec.parse("linux/arm/v7")
    assert v7.matches(found("linux", "arm", "v7")) and not v7.matches(found("linux", "arm", "v6"))
    any_linux = PlatformSpec.parse("linux/*")
    assert any_linux.matches(found("linux", "s390x")) and not any_linux.matches(found("windows", "amd64"))
    assert not any_linux.matches(found("unknown", "unknown")) and not any_linux.matches(None)
    assert PlatformSpec.parse("linux/amd64").matches(found("Linux", "AMD64"))


def test_a_policy_keeps_its_platforms_normalised_and_refuses_a_bad_one_in_one_line() -> None:
    base = {"name": "p", "src_registry": "a", "dest_registry": "b", "dest_namespace": "m"}
    given = ["linux/x86_64", "linux/amd64", "linux/arm64/v8"]
    rewrite = {**base, "platforms": given, "platform_index": "rewrite"}
    config = parse_config({"version": 1, "policies": [rewrite]})
    assert config.policies[0].platforms == ["linux/amd64", "linux/arm64/v8"]
    with pytest.raises(ConfigError) as caught:
        parse_config({"version": 1, "policies": [{**base, "platforms": ["linux/amd64", "arm64"]}]})
    assert str(caught.value) == ("policies[0].platforms: platform 'arm64' is not OS/ARCH, OS/ARCH/VARIANT "
                                 "or OS/*, e.g. linux/arm64")


# ------------------------------------------------------------------------------ selection
@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
async def test_keep_pushes_the_source_index_with_only_the_chosen_child(oci: bool) -> None:
    top, images = four_platforms(oci=oci)
    selection = await select(top, AMD64, "keep", Source())

    assert [c.digest for c in selection.kept] == [images[0].digest]
    assert selection.pushed is top and not selection.rewritten
    assert selection.dropped == 3 and selection.platforms == ("linux/amd64",)
    assert selection.offered == ("linux/amd64", "linux/arm/v7", "linux/arm64/v8", "windows/amd64")


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
async def test_rewrite_lists_exactly_the_chosen_children_and_keeps_every_other_field(oci: bool) -> None:
    images = [image(*p, oci=oci) for p in FOUR]
    extra = {"annotations": {"org.opencontainers.image.ref.name": "1.0"}} if oci else {}
    top = index([entry(m, platform(*p)) for m, p in zip(images, FOUR, strict=True)], oci=oci, **extra)
    wanted = parse_platforms(["linux/amd64", "linux/arm/v7"])

    selection = await select(top, wanted, "rewrite", Source())

    pushed = selection.pushed
    assert selection.rewritten and pushed.digest == Digest.of(pushed.raw) != top.digest
    assert pushed.media_type == top.media_type
    body, source = json.loads(pushed.raw), json.loads(top.raw)
    assert body["manifests"] == [source["manifests"][0], source["manifests"][2]]
    assert {k: v for k, v in body.items() if k != "manifests"} == \
        {k: v for k, v in source.items() if k != "manifests"}
    assert [c.digest for c in pushed.children] == [images[0].digest, images[2].digest]
    assert selection.platforms == ("linux/amd64", "linux/arm/v7")


async def test_rewrite_of_an_index_whose_every_child_is_chosen_keeps_its_digest() -> None:
    top, _ = four_platforms(oci=True)
    selection = await select(top, parse_platforms(["linux/*", "windows/*"]), "rewrite", Source())
    assert selection.pushed is top and not selection.rewritten and selection.dropped == 0


async def test_attestations_follow_the_image_they_describe() -> None:
    top_images = [image(*p) for p in FOUR[:2]]
    proofs = [image("unknown", "unknown", f"proof-{i}") for i in range(2)]
    entries = [entry(m, platform(*p)) for m, p in zip(top_images, FOUR[:2], strict=True)]
    entries += [entry(proof, platform("unknown", "unknown"),
                      {REFERENCE_TYPE: ATTESTATION_MANIFEST, REFERENCE_DIGEST: str(subject.digest)})
                for proof, subject in zip(proofs, top_images, strict=True)]
    top = index(entries)

    selection = await select(top, parse_platforms(["linux/arm64"]), "rewrite", Source())
    assert [c.digest for c in selection.kept] == [top_images[1].digest, proofs[1].digest]
    assert [c.digest for c in selection.pushed.children] == [top_images[1].digest, proofs[1].digest]
    # An unknown/unknown spec does not bring attestations on their own: they follow their image.
    alone = await select(top, parse_platforms(["unknown/unknown"]), "keep", Source())
    assert alone.kept == ()


async def test_nested_indexes_are_looked_into_and_rewritten_from_the_inside_out() -> None:
    linux = [image(*p) for p in FOUR[:2]]
    windows = image(*FOUR[3])
    inner = index([entry(m, platform(*p)) for m, p in zip(linux, FOUR[:2], strict=True)])
    other = index([entry(windows, platform(*FOUR[3]))])
    top = index([entry(inner), entry(other)])
    source = Source(inner, other)

    kept = await select(top, AMD64, "keep", source)
    assert [c.digest for c in kept.kept] == [inner.digest] and kept.pushed is top
    assert kept.nested[inner.digest].pushed is inner and kept.offered == (
        "linux/amd64", "linux/arm64/v8", "windows/amd64")

    rewritten = await select(top, AMD64, "rewrite", source)
    new_inner = rewritten.nested[inner.digest].pushed
    assert [c.digest for c in new_inner.children] == [linux[0].digest]
    (listed,) = rewritten.pushed.children
    assert (listed.digest, listed.size, listed.media_type) == (new_inner.digest, new_inner.size, OCI_INDEX)
    assert rewritten.platforms == ("linux/amd64",)


async def test_a_child_index_of_another_size_than_listed_is_refused() -> None:
    inner = index([entry(image(*FOUR[0]), platform(*FOUR[0]))])
    listed = {**entry(inner), "size": inner.size + 1}
    with pytest.raises(ContentError, match="the index says"):
        await select(index([listed]), AMD64, "keep", Source(inner))


async def test_no_child_of_the_platforms_says_what_the_index_has() -> None:
    top, _ = four_platforms(oci=True)
    wanted = parse_platforms(["linux/s390x"])
    selection = await select(top, wanted, "rewrite", Source())
    assert selection.kept == () and selection.nothing_chosen and selection.pushed is top
    assert no_match_reason(wanted, selection) == (
        "no image for platforms linux/s390x in the index (it has: linux/amd64, linux/arm/v7, "
        "linux/arm64/v8, windows/amd64)")


def test_a_child_without_platform_is_of_no_platform() -> None:
    child = Descriptor.model_validate({"mediaType": OCI_MANIFEST, "digest": str(Digest.of(b"x")), "size": 1})
    assert platform_text(child) == "unknown" and not AMD64[0].matches(child)


@pytest.mark.parametrize(("config", "expected"), [
    ({"os": "linux", "architecture": "arm", "variant": "v7", "rootfs": {}}, "linux/arm/v7"),
    ({"os": "linux", "architecture": "amd64"}, "linux/amd64"),
    ({"architecture": "", "os": ""}, None),  # cosign's signature images
    ({}, None), ([], None),
])
def test_an_image_config_names_its_platform_or_none(config: object, expected: str | None) -> None:
    found = parse_image_config(json.dumps(config).encode()).platform
    assert (platform_text(found) if found is not None else None) == expected


async def test_an_index_of_no_platform_travels_whole() -> None:
    """A referrers fallback index (artifacts, no platforms) or an empty index is no
    multi-platform image: nothing of it stays behind."""
    signature = image("unknown", "unknown", "sig")
    cosign = "application/vnd.dev.cosign.artifact.sig.v1+json"
    artifacts = index([{**entry(signature), "artifactType": cosign}])
    for whole in (artifacts, index([])):
        selection = await select(whole, AMD64, "rewrite", Source())
        assert selection.pushed is whole and selection.kept == whole.children and selection.dropped == 0
        assert not selection.nothing_chosen
    # Beside images of a platform, a child naming none is of no platform and stays behind.
    amd64 = image(*FOUR[0])
    mixed = index([entry(amd64, platform(*FOUR[0])), entry(signature)])
    assert [c.digest for c in (await select(mixed, AMD64, "keep", Source())).kept] == [amd64.digest]


# ------------------------------------------------------------------------------ plan and verify
class Registry:
    """One repository of a registry, as the plan and verification ask it: manifests by tag and
    digest, blobs by digest; records each request."""

    fastest_answer = None  # no round trips measured: the default concurrency

    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {}
        self.tags: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}
        self.calls: list[str] = []

    def push(self, manifest: Manifest, *tags: str, blobs: bool = True) -> Manifest:
        self.manifests[manifest.digest] = manifest
        if blobs:
            self.blobs.update({b.digest: b"" for b in manifest.blobs})
        self.tags.update(dict.fromkeys(tags, manifest.digest))
        return manifest

    def _find(self, ref: str) -> Manifest | None:
        return self.manifests.get(self.tags.get(ref, ref))

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        self.calls.append(f"HEAD {ref}")
        found = self._find(ref)
        return ManifestHead(found.digest, found.media_type, found.size) if found else None

    async def get_manifest(self, repository: str, ref: str) -> Manifest:
        self.calls.append(f"GET {ref}")
        found = self._find(ref)
        if found is None:
            raise NotFoundError(f"{ref}: 404", status=404)
        return found

    async def has_tags(self, repository: str) -> bool:
        return bool(self.tags)

    async def prefetch_tokens(self, repositories: object, actions: str) -> None:
        return None

    async def start_prefetch_tokens(self, repositories: object, actions: str) -> asyncio.Future[None]:
        return finished()

    async def blob_exists(self, repository: str, digest: Digest) -> int | None:
        self.calls.append(f"BLOB {digest}")
        return 1 if digest in self.blobs else None

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> AsyncIterator[Any]:
        self.calls.append(f"GET blob {digest}")
        data = self.blobs[digest]

        class Stream:
            async def chunks(self) -> AsyncIterator[bytes]:
                yield data

        yield Stream()


def adapter(client: Registry) -> Any:
    return SimpleNamespace(client=client, info=SimpleNamespace(min_path_components=None,
                                                               max_path_components=None))


def rewrite_policy(**extra: Any) -> Policy:
    return Policy(name="p", src_registry="s", dest_registry="d", platforms=["linux/amd64"],
                  platform_index="rewrite", referrers=False, **extra)


def real_image(os: str, arch: str) -> tuple[Manifest, bytes]:
    """An image whose config blob exists and names its platform."""
    config = json.dumps({"os": os, "architecture": arch}).encode()
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": str(Digest.of(config)), "size": len(config)}}
    return parse(json.dumps(body).encode()), config


async def plan_of(source: Registry, target: Registry, chosen: Policy, *tags: str) -> list[Any]:
    plan = await make_plan(adapter(source), adapter(target), chosen,
                           [RepositoryTags(repository="app", tags=list(tags))])
    [repository] = plan.repositories
    assert repository.error == ""
    return [(t.tag, t.action, t.pushed_digest) for t in repository.tags], repository  # type: ignore[return-value]


@pytest.mark.parametrize("override", [True, False])
async def test_a_tag_rewritten_on_the_target_plans_as_identical_and_needs_no_transfer(override: bool) -> None:
    top, _ = four_platforms(oci=True)
    source, target = Registry(), Registry()
    source.push(top, "1.0")
    rewritten = (await select(top, AMD64, "rewrite", Source())).pushed
    target.push(rewritten, "1.0")

    actions, repository = await plan_of(source, target, rewrite_policy(override=override), "1.0")

    assert actions == [("1.0", "identical", rewritten.digest)]
    assert repository.spec(rewrite_policy(override=override)) is None  # no transfer task
    [settled] = repository.settled()
    assert (settled.status, settled.reason, settled.pushed_digest) == ("skipped", "identical on target",
                                                                         rewritten.digest)
    assert source.calls == ["HEAD 1.0", f"GET {top.digest}"]  # no child is read for a flat index


async def test_a_rewritten_tag_of_nested_indexes_reads_them_and_plans_as_identical() -> None:
    linux = [image(*p) for p in FOUR[:2]]
    inner = index([entry(m, platform(*p)) for m, p in zip(linux, FOUR[:2], strict=True)])
    other = index([entry(image(*FOUR[3]), platform(*FOUR[3]))])
    top = index([entry(inner), entry(other)])
    source, target = Registry(), Registry()
    for manifest in (inner, other):
        source.push(manifest)
    source.push(top, "1.0")
    target.push((await select(top, AMD64, "rewrite", Source(inner, other))).pushed, "1.0")

    actions, _ = await plan_of(source, target, rewrite_policy(), "1.0")

    assert [a[1] for a in actions] == ["identical"]
    assert sorted(source.calls) == sorted(["HEAD 1.0", f"GET {top.digest}", f"GET {inner.digest}",
                                           f"GET {other.digest}"])


async def test_a_target_holding_something_else_still_plans_overwrite_or_kept() -> None:
    top, _ = four_platforms(oci=True)
    source, target = Registry(), Registry()
    source.push(top, "1.0")
    # An index rewritten for other platforms (an earlier policy): not what this one pushes.
    target.push((await select(top, parse_platforms(["linux/arm64"]), "rewrite", Source())).pushed, "1.0")

    actions, repository = await plan_of(source, target, rewrite_policy(), "1.0")
    assert actions == [("1.0", "overwrite", None)]
    [work] = repository.spec(rewrite_policy()).tags
    assert work.manifest == top  # read once, handed on to the transfer
    kept, _ = await plan_of(source, target, rewrite_policy(override=False), "1.0")
    assert kept == [("1.0", "kept", None)]


async def test_an_image_or_a_keep_policy_costs_the_plan_no_manifest_read() -> None:
    amd64, _ = real_image("linux", "amd64")
    top, _ = four_platforms(oci=True)
    source, target = Registry(), Registry()
    source.push(amd64, "image")
    source.push(top, "index")
    target.push(real_image("linux", "arm64")[0], "image", "index")

    actions, _ = await plan_of(source, target, rewrite_policy(), "image")
    assert actions == [("image", "overwrite", None)] and source.calls == ["HEAD image"]
    source.calls.clear()
    keep = rewrite_policy().model_copy(update={"platform_index": "keep"})
    actions, _ = await plan_of(source, target, keep, "index")
    assert actions == [("index", "overwrite", None)] and source.calls == ["HEAD index"]


def setup_for_verify() -> tuple[Registry, Registry, Manifest, list[Manifest]]:
    """A four-platform index on the source; on the target its amd64 image, with its blobs."""
    top, images = four_platforms(oci=True)
    source, target = Registry(), Registry()
    for m in images:
        source.push(m)
    source.push(top, "1.0")
    target.push(images[0])
    return source, target, top, images


async def verify(source: Registry, target: Registry, chosen: Policy, *tags: str) -> Any:
    return await verify_policy(adapter(source), adapter(target), chosen,
                               found=[RepositoryTags(repository="app", tags=list(tags))])


async def test_verify_with_keep_expects_the_source_index_and_only_the_kept_children() -> None:
    source, target, top, images = setup_for_verify()
    target.push(top, "1.0", blobs=False)
    keep = rewrite_policy().model_copy(update={"platform_index": "keep"})

    report = await verify(source, target, keep, "1.0")
    assert report.ok and report.checked_tags == 1, report.problems
    assert not any(str(m.digest) in " ".join(target.calls) for m in images[1:])  # others not asked
    # Without the platforms, the same target lacks three images: the check can fail.
    everything = await verify(source, target, keep.model_copy(update={"platforms": []}), "1.0")
    assert sorted(p.digest for p in everything.problems if p.kind == "missing-manifest") == sorted(
        m.digest for m in images[1:])


async def test_verify_with_rewrite_expects_the_rewritten_index() -> None:
    source, target, top, _ = setup_for_verify()
    rewritten = (await select(top, AMD64, "rewrite", Source())).pushed
    target.push(rewritten, "1.0", blobs=False)

    assert (await verify(source, target, rewrite_policy(), "1.0")).ok
    target.push(top, "1.0", blobs=False)  # the unfiltered index instead
    report = await verify(source, target, rewrite_policy(), "1.0")
    [differs, *missing] = report.problems
    assert (differs.kind, differs.digest) == ("digest-differs", rewritten.digest)
    assert differs.detail == (f"expected {rewritten.digest} (the source's {top.digest} rewritten for "
                              f"linux/amd64), target has {top.digest}")
    assert {p.kind for p in missing} == {"missing-manifest"}  # the target's own index looked into
    del target.tags["1.0"]
    [absent] = (await verify(source, target, rewrite_policy(), "1.0")).problems
    assert (absent.kind, absent.digest) == ("missing-tag", rewritten.digest)


async def test_verify_does_not_expect_an_image_the_platforms_leave_behind() -> None:
    arm64, arm_config = real_image("linux", "arm64")
    amd64, amd_config = real_image("linux", "amd64")
    source, target = Registry(), Registry()
    source.push(arm64, "arm")
    source.push(amd64, "amd")
    source.blobs.update({arm64.config.digest: arm_config, amd64.config.digest: amd_config})  # type: ignore[union-attr]

    report = await verify(source, target, rewrite_policy(), "arm", "amd")

    assert [(p.tag, p.kind) for p in report.problems] == [("amd", "missing-tag")]


# ------------------------------------------------------------------------------ one config reader
async def test_the_config_reader_is_bounded_by_the_declared_size_and_checked_against_the_digest() -> None:
    amd64, config = real_image("linux", "amd64")
    registry = Registry()
    assert amd64.config is not None
    registry.blobs[amd64.config.digest] = config
    read = await read_image_config(registry, "app", amd64)  # type: ignore[arg-type]
    assert read is not None and platform_text(read.platform) == "linux/amd64" and read.created is None

    registry.blobs[amd64.config.digest] = config + b" "  # longer than the manifest says
    with pytest.raises(ContentError, match="longer than the"):
        await read_image_config(registry, "app", amd64)  # type: ignore[arg-type]
    registry.blobs[amd64.config.digest] = config.replace(b"amd64", b"arm64")  # same size, other bytes
    with pytest.raises(ContentError):
        await read_image_config(registry, "app", amd64)  # type: ignore[arg-type]


async def test_no_config_is_read_of_an_artifact_or_an_oversized_one() -> None:
    registry = Registry()
    huge = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(b"x")),
            "size": MAX_IMAGE_CONFIG_BYTES + 1}
    chart = {**huge, "mediaType": "application/vnd.cncf.helm.config.v1+json", "size": 1}
    for config in (huge, chart):
        manifest = parse(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                                     "layers": []}).encode())
        assert await read_image_config(registry, "app", manifest) is None  # type: ignore[arg-type]
    assert registry.calls == []


def test_attestations_are_known_by_their_annotation_or_their_unknown_platform() -> None:
    def child(platform_: dict[str, str] | None, annotations: dict[str, str] | None = None) -> Descriptor:
        return Descriptor.model_validate(entry(image("linux", "amd64"), platform_, annotations))

    assert is_attestation(child(platform("unknown", "unknown")))  # as the versions helper reads them
    assert is_attestation(child(None, {REFERENCE_TYPE: ATTESTATION_MANIFEST}))
    assert not is_attestation(child(platform("linux", "amd64"))) and not is_attestation(child(None))
