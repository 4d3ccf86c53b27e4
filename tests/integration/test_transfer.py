"""Byte-exact copies between real registries, verified by skopeo, the reference peer."""

from __future__ import annotations

import pytest

from adapters.oci import Digest
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferResult, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import ImageKind
from tests.support.endpoints import client_for
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

pytestmark = pytest.mark.integration

KINDS = [ImageKind.DOCKER, ImageKind.OCI, ImageKind.DOCKER_LIST, ImageKind.OCI_INDEX]


async def copy(src: RegistryProcess, dst: RegistryProcess, source_repo: str, tags: list[str], *,
               target_repo: str | None = None, override: bool = True,
               copy_by_chunk: bool = False) -> TransferResult:
    async with client_for(src) as source, client_for(dst) as target:
        spec = TransferSpec(source_repository=source_repo, target_repository=target_repo or source_repo,
                            tags=[TagPlan(tag=t) for t in tags], override=override,
                            copy_by_chunk=copy_by_chunk)
        return await transfer_repository(source, target, spec, BlobCopier(source, target))


@pytest.mark.parametrize(("src_kind", "dst_kind"), [
    ("anonymous", "basic"), ("basic", "token"), ("token", "anonymous"), ("basic", "anonymous"),
    ("anonymous", "token"), ("token", "basic"),
])
async def test_every_manifest_kind_copies_byte_exact_between_auth_modes(make_registry, make_corpus,
                                                                       src_kind, dst_kind):
    src, dst = make_registry(src_kind), make_registry(dst_kind)
    corpus = make_corpus(src)
    pushed = {kind: corpus.push(f"kinds/{kind.value}", ["1.0"], kind) for kind in KINDS}

    for kind, tag in pushed.items():
        result = await copy(src, dst, tag.repository, ["1.0"], target_repo=f"mirror/{kind.value}")
        assert result.status == "Succeeded", result.error
        assert [t.status for t in result.tags] == ["copied"]
        on_target = inspect_raw_digest(dst.ref(f"mirror/{kind.value}", "1.0"), dst.creds)
        on_source = inspect_raw_digest(src.ref(tag.repository, "1.0"), src.creds)
        assert on_target == on_source == tag.digest


async def test_second_copy_moves_no_blob_and_pushes_no_manifest(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("basic")
    corpus = make_corpus(src)
    corpus.push("app/multi", ["1.0", "latest"], ImageKind.OCI_INDEX)
    corpus.push("app/multi", ["2.0"], ImageKind.DOCKER)

    first = await copy(src, dst, "app/multi", ["1.0", "latest", "2.0"])
    assert [t.status for t in first.tags] == ["copied", "copied", "copied"]
    mark = dst.log_mark()
    second = await copy(src, dst, "app/multi", ["1.0", "latest", "2.0"])

    assert [(t.status, t.reason) for t in second.tags] == [("skipped", "identical on target")] * 3
    assert second.bytes == 0
    assert dst.count_requests("PUT", since=mark) == 0
    assert dst.count_requests("POST", since=mark) == 0
    assert dst.count_requests("PATCH", since=mark) == 0


async def test_override_rule_for_an_existing_different_tag(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    new = make_corpus(src, seed=1).push("app/web", ["1.0"], ImageKind.OCI)
    old = make_corpus(dst, seed=2).push("app/web", ["1.0"], ImageKind.OCI)
    assert new.digest != old.digest

    kept = await copy(src, dst, "app/web", ["1.0"], override=False)
    assert kept.tags[0].status == "skipped"
    assert "override is off" in kept.tags[0].reason and old.digest in kept.tags[0].reason
    assert inspect_raw_digest(dst.ref("app/web", "1.0")) == old.digest

    replaced = await copy(src, dst, "app/web", ["1.0"], override=True)
    assert replaced.tags[0].status == "copied"
    assert inspect_raw_digest(dst.ref("app/web", "1.0")) == new.digest


@pytest.mark.parametrize("copy_by_chunk", [False, True], ids=["monolithic", "chunked"])
async def test_corrupt_source_blob_fails_the_tag_and_leaves_no_manifest(make_registry, make_corpus,
                                                                        copy_by_chunk):
    from tests.support.corpus import corrupt_blob

    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push("app/bad", ["1.0"], ImageKind.DOCKER, layer_sizes=[200_000, 300_000])
    layer = pushed.image.layers[-1].digest
    corrupt_blob(src, layer)

    result = await copy(src, dst, "app/bad", ["1.0"], copy_by_chunk=copy_by_chunk)

    assert result.tags[0].status == "failed"
    assert result.tags[0].reason.startswith("DigestMismatchError")
    async with client_for(dst) as target:
        assert await target.head_manifest("app/bad", "1.0") is None
        assert await target.blob_exists("app/bad", Digest(layer)) is None


async def test_pinned_digest_wins_over_a_moved_tag(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    first = corpus.push("app/moving", ["1.0"], ImageKind.OCI, created=1)
    corpus.push("app/moving", ["1.0"], ImageKind.OCI, created=2)  # the tag moves after planning

    async with client_for(src) as source, client_for(dst) as target:
        spec = TransferSpec(source_repository="app/moving", target_repository="app/moving",
                            tags=[TagPlan(tag="1.0", digest=Digest(first.digest))])
        result = await transfer_repository(source, target, spec, BlobCopier(source, target))
    assert result.tags[0].status == "copied"
    assert inspect_raw_digest(dst.ref("app/moving", "1.0")) == first.digest


async def test_shared_blobs_are_uploaded_once_and_mounted_elsewhere(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("token")
    corpus = make_corpus(src)
    a = corpus.push("team/a", ["1"], ImageKind.DOCKER, base=0)
    b = corpus.push("team/b", ["1"], ImageKind.DOCKER, base=0)
    shared = set(a.blobs) & set(b.blobs)
    assert shared

    async with client_for(src) as source, client_for(dst) as target:
        copier = BlobCopier(source, target)
        for repo in ("team/a", "team/b"):
            spec = TransferSpec(source_repository=repo, target_repository=repo, tags=[TagPlan(tag="1")])
            result = await transfer_repository(source, target, spec, copier)
            assert result.status == "Succeeded", result.error
    mounts = dst.count_requests("POST", r"/v2/team/b/blobs/uploads/")
    uploads_b = dst.count_requests("PUT", r"/v2/team/b/blobs/uploads/.*")
    assert mounts >= len(shared)
    assert uploads_b == len(set(b.blobs) - shared)
    assert inspect_raw_digest(dst.ref("team/b", "1"), dst.creds) == b.digest


async def test_catalog_pages_past_one_hundred_repositories(make_registry, make_corpus):
    reg = make_registry("basic")
    corpus = make_corpus(reg)
    names = {f"many/repo-{i:03d}" for i in range(130)}
    for name in sorted(names):
        corpus.push(name, ["1"], ImageKind.OCI, layers=0)
    mark = reg.log_mark()
    async with client_for(reg) as client:
        listed = [name async for name in client.catalog()]
    assert set(listed) == names
    assert len(listed) == len(names)
    assert reg.count_requests("GET", r"/v2/_catalog", since=mark) >= 2


async def test_a_copy_into_an_empty_target_reads_each_manifest_once(make_registry, make_corpus):
    """The plan GETs the manifest of a tag the target lacks and the transfer copies those very
    bytes: no HEAD on the source, no second GET of a tag, no HEAD of a new repository's children."""
    from adapters import create_adapter
    from policies.models import Policy
    from tasks.discover import RepositoryTags
    from tasks.plan import make_plan
    from tests.support.endpoints import endpoint_for

    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    index = corpus.push("app/multi", ["1.0"], ImageKind.OCI_INDEX)
    single = corpus.push("app/multi", ["2.0"], ImageKind.DOCKER)
    policy = Policy(name="p", src_registry="s", dest_registry="d")
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("docker-registry", endpoint_for(dst))
    src_mark, dst_mark = src.log_mark(), dst.log_mark()
    try:
        plan = await make_plan(source, target, policy, [RepositoryTags(repository="app/multi",
                                                                      tags=["1.0", "2.0"])])
        [spec] = plan.specs(policy)
        assert spec.new_on_target
        assert [t.manifest.digest if t.manifest else None for t in spec.tags] == [index.digest, single.digest]
        result = await transfer_repository(source.client, target.client, spec,
                                           BlobCopier(source.client, target.client))
    finally:
        await source.aclose()
        await target.aclose()

    assert [t.status for t in result.tags] == ["copied", "copied"], result.error
    assert src.count_requests("HEAD", since=src_mark) == 0
    assert src.count_requests("GET", r"/v2/app/multi/manifests/(1\.0|2\.0)", since=src_mark) == 2
    assert src.count_requests("GET", r"/v2/app/multi/manifests/sha256:.*", since=src_mark) == \
        len(index.children)
    assert dst.count_requests("HEAD", since=dst_mark) == 2  # one per tag, none per child
    assert dst.count_requests("PUT", r"/v2/app/multi/manifests/.*", since=dst_mark) == 2 + len(index.children)
    for tag, pushed in (("1.0", index), ("2.0", single)):
        assert inspect_raw_digest(dst.ref("app/multi", tag), dst.creds) == pushed.digest


async def test_a_repository_with_a_tag_on_the_target_still_checks_its_children(make_registry, make_corpus):
    """Only a repository the target has no tag of is taken as new; otherwise each child
    manifest is asked for first, and one already there is not pushed again."""
    from adapters import create_adapter
    from policies.models import Policy
    from tasks.discover import RepositoryTags
    from tasks.plan import make_plan
    from tests.support.endpoints import endpoint_for

    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    corpus.push("app/multi", ["1.0", "1.1"], ImageKind.OCI_INDEX)
    await copy(src, dst, "app/multi", ["1.0"])
    policy = Policy(name="p", src_registry="s", dest_registry="d")
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("docker-registry", endpoint_for(dst))
    mark = dst.log_mark()
    try:
        plan = await make_plan(source, target, policy, [RepositoryTags(repository="app/multi",
                                                                      tags=["1.0", "1.1"])])
        [spec] = plan.specs(policy)
        assert not spec.new_on_target
        assert [t.tag for t in spec.tags] == ["1.1"]
        result = await transfer_repository(source.client, target.client, spec,
                                           BlobCopier(source.client, target.client))
    finally:
        await source.aclose()
        await target.aclose()

    assert [t.status for t in result.tags] == ["copied"], result.error
    assert dst.count_requests("HEAD", r"/v2/app/multi/manifests/sha256:.*", since=mark) >= 1
    assert dst.count_requests("PUT", r"/v2/app/multi/manifests/.*", since=mark) == 1  # the tag only


async def test_a_repository_new_on_the_target_is_asked_for_any_tag_once(make_registry, make_corpus):
    """Four tags into an empty token-auth target: one HEAD and one page of its tag list there,
    not four HEADs; once copied, a resync asks tag by tag and never lists."""
    from adapters import create_adapter
    from policies.models import Policy
    from tasks.discover import RepositoryTags
    from tasks.plan import make_plan
    from tests.support.endpoints import endpoint_for

    src, dst = make_registry("anonymous"), make_registry("token")
    tags = ["1.0", "1.1", "2.0", "latest"]
    make_corpus(src).push("app/web", tags, ImageKind.OCI)
    policy = Policy(name="p", src_registry="s", dest_registry="d")
    found = [RepositoryTags(repository="app/web", tags=tags)]
    source = create_adapter("docker-registry", endpoint_for(src))
    target = create_adapter("docker-registry", endpoint_for(dst))
    try:
        assert await target.client.has_tags("app/web") is False
        mark = dst.log_mark()
        [spec] = (await make_plan(source, target, policy, found)).specs(policy)
        assert dst.count_requests("HEAD", since=mark) == 1
        assert dst.count_requests("GET", "/v2/app/web/tags/list", since=mark) == 1
        assert [t.tag for t in spec.tags] == tags and spec.new_on_target
        result = await transfer_repository(source.client, target.client, spec,
                                           BlobCopier(source.client, target.client))
        assert result.status == "Succeeded", result.error
        assert await target.client.has_tags("app/web") is True

        mark = dst.log_mark()
        resync = await make_plan(source, target, policy, found)
        assert resync.specs(policy) == []
        assert dst.count_requests("HEAD", since=mark) == len(tags)
        assert dst.count_requests("GET", "/v2/app/web/tags/list", since=mark) == 0
    finally:
        await source.aclose()
        await target.aclose()
    for tag in tags:
        assert inspect_raw_digest(dst.ref("app/web", tag), dst.creds) == \
            inspect_raw_digest(src.ref("app/web", tag), src.creds)
