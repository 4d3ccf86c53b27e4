"""A replicated deletion removes what the source lost and nothing else, against real CNCF
registries (deletion enabled), which delete only by digest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from adapters.native import NativeAdapter
from adapters.oci import Digest
from tasks import delete as delete_module
from tasks.delete import DeleteSpec, delete_manifest
from tasks.models import TagOutcome
from tests.support.corpus import ImageKind
from tests.support.endpoints import endpoint_for
from tests.support.registry import RegistryProcess

pytestmark = pytest.mark.integration


@asynccontextmanager
async def adapters(src: RegistryProcess,
                   dst: RegistryProcess) -> AsyncIterator[tuple[NativeAdapter, NativeAdapter]]:
    source, target = NativeAdapter(endpoint_for(src)), NativeAdapter(endpoint_for(dst))
    try:
        yield source, target
    finally:
        await source.aclose()
        await target.aclose()


async def replicate_deletion(src: RegistryProcess, dst: RegistryProcess, repository: str, tag: str | None,
                             digest: str | None) -> TagOutcome:
    spec = DeleteSpec(source_repository=repository, target_repository=repository, tag=tag,
                      digest=Digest(digest) if digest else None)
    async with adapters(src, dst) as (source, target):
        result = await delete_manifest(target, spec, source=source)
    [outcome] = result.tags
    return outcome


async def test_deleting_one_of_two_tags_sharing_a_digest_leaves_the_other(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("basic")
    pushed = make_corpus(dst).push("app/web", ["1.0", "latest"], ImageKind.OCI)  # the source lost 1.0

    outcome = await replicate_deletion(src, dst, "app/web", "1.0", pushed.digest)

    assert outcome.status == "skipped", outcome
    assert "latest" in outcome.reason and "only by digest" in outcome.reason
    assert make_corpus(dst).client.tags("app/web") == ["1.0", "latest"]


async def test_a_tag_alone_on_its_manifest_is_deleted_and_its_neighbours_stay(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(dst)
    gone = corpus.push("app/web", ["1.0"], ImageKind.DOCKER)
    corpus.push("app/web", ["2.0"], ImageKind.DOCKER)

    outcome = await replicate_deletion(src, dst, "app/web", "1.0", gone.digest)

    assert (outcome.status, outcome.digest) == ("deleted", gone.digest), outcome
    assert corpus.client.tags("app/web") == ["2.0"]


async def test_a_platform_manifest_an_index_holds_is_kept(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(dst)
    index = corpus.factory.image(ImageKind.OCI_INDEX, "app/multi:1.0")
    corpus.push_image("app/multi", index, ["1.0"])
    child = index.children[0]
    corpus.client.push_manifest("app/multi", "amd64", child.manifest.data, child.media_type)

    outcome = await replicate_deletion(src, dst, "app/multi", "amd64", None)

    assert outcome.status == "skipped", outcome
    assert "1.0 (an index holding it)" in outcome.reason
    assert corpus.client.tags("app/multi") == ["1.0", "amd64"]


async def test_a_tag_the_source_still_has_is_not_deleted(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    image = make_corpus(src).factory.image(ImageKind.OCI, "app/web:1.0")
    pushed = make_corpus(src).push_image("app/web", image, ["1.0"])
    make_corpus(dst).push_image("app/web", image, ["1.0"])

    outcome = await replicate_deletion(src, dst, "app/web", "1.0", pushed.digest)

    assert outcome.status == "skipped", outcome
    assert outcome.reason == f"the source still has 1.0 (at {pushed.digest})"
    assert make_corpus(dst).client.tags("app/web") == ["1.0"]


async def test_a_manifest_the_source_still_has_by_digest_is_not_deleted(make_registry, make_corpus):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    image = make_corpus(src).factory.image(ImageKind.OCI, "app/web:1.0")
    pushed = make_corpus(src).push_image("app/web", image, ["1.0"])
    make_corpus(dst).push_image("app/web", image, ["1.0"])

    kept = await replicate_deletion(src, dst, "app/web", None, pushed.digest)
    assert (kept.status, kept.reason) == ("skipped", f"the source still has {pushed.digest}")

    make_corpus(src).client.delete_manifest("app/web", pushed.digest)
    gone = await replicate_deletion(src, dst, "app/web", None, pushed.digest)
    assert gone.status == "deleted", gone
    assert make_corpus(dst).client.tags("app/web") == []


async def test_too_many_tags_to_check_refuses_and_says_why(make_registry, make_corpus, monkeypatch):
    monkeypatch.setattr(delete_module, "MAX_TAGS_CHECKED", 1)
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(dst)
    pushed = corpus.push("app/web", ["1.0"], ImageKind.DOCKER)
    corpus.push("app/web", ["2.0", "3.0"], ImageKind.DOCKER)

    outcome = await replicate_deletion(src, dst, "app/web", "1.0", pushed.digest)

    assert outcome.status == "failed", outcome
    assert "more than 1 other tags to check" in outcome.reason
    assert corpus.client.tags("app/web") == ["1.0", "2.0", "3.0"]
