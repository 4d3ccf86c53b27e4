"""How many round trips a new blob waits for, between real registries behind recording proxies.

Into a repository the plan found new, the source's GET goes out while the target's POST (the
upload session) is still unanswered; elsewhere the POST is answered first, because a mount or an
existing blob would leave the GET unread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferResult, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import ImageKind, PushedTag
from tests.support.faultproxy import FaultProxy, ProxiedRequest, delay, distribution_error, respond
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# Long enough that a GET sent only after the POST's answer cannot arrive before it by accident.
POST_DELAY = 1.0
UPLOADS = r"/v2/app/web/blobs/uploads/"
BLOB_GETS = r"/v2/app/web/blobs/sha256:[0-9a-f]+"


@pytest.fixture
def proxies(make_registry, make_corpus) -> Iterator[tuple[RegistryProcess, RegistryProcess, FaultProxy,
                                                          FaultProxy, PushedTag]]:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push("app/web", ["1.0"], ImageKind.OCI, layer_sizes=[1 * MiB, 256 * 1024])
    with FaultProxy(src) as src_proxy, FaultProxy(dst) as dst_proxy:
        yield src, dst, src_proxy, dst_proxy, pushed


async def copy(src_proxy: FaultProxy, dst_proxy: FaultProxy, *, fresh: bool) -> tuple[TransferResult, BlobCopier]:
    async with DistributionClient(Endpoint(url=src_proxy.url)) as source, \
            DistributionClient(Endpoint(url=dst_proxy.url)) as target:
        spec = TransferSpec(source_repository="app/web", target_repository="app/web",
                            tags=[TagPlan(tag="1.0")], new_on_target=fresh)
        copier = BlobCopier(source, target)
        return await transfer_repository(source, target, spec, copier), copier


def by_digest(requests: list[ProxiedRequest], digest: str) -> ProxiedRequest:
    [found] = [r for r in requests if digest in r.target or digest.replace(":", "%3A") in r.target]
    return found


async def test_into_a_new_repository_each_blob_is_read_while_its_session_opens(proxies):
    src, dst, src_proxy, dst_proxy, pushed = proxies
    dst_proxy.rule("POST", UPLOADS, delay(POST_DELAY), nth=None)

    result, copier = await copy(src_proxy, dst_proxy, fresh=True)

    assert result.status == "Succeeded", result.error
    assert copier.blobs_uploaded == len(pushed.blobs) and copier.blobs_mounted == 0
    posts, gets = dst_proxy.requests("POST", UPLOADS), src_proxy.requests("GET", BLOB_GETS)
    for digest in pushed.blobs:
        post, get = by_digest(posts, digest), by_digest(gets, digest)
        assert post.finished is not None
        assert get.time < post.finished, f"{digest}: GET sent only after the session opened"
    assert inspect_raw_digest(dst.ref("app/web", "1.0"), dst.creds) == pushed.digest


async def test_into_a_repository_with_tags_the_session_opens_before_the_source_is_read(proxies):
    src, dst, src_proxy, dst_proxy, pushed = proxies
    dst_proxy.rule("POST", UPLOADS, delay(POST_DELAY), nth=None)

    result, _ = await copy(src_proxy, dst_proxy, fresh=False)

    assert result.status == "Succeeded", result.error
    posts, gets = dst_proxy.requests("POST", UPLOADS), src_proxy.requests("GET", BLOB_GETS)
    for digest in pushed.blobs:
        post, get = by_digest(posts, digest), by_digest(gets, digest)
        assert post.finished is not None and get.time >= post.finished
    assert inspect_raw_digest(dst.ref("app/web", "1.0"), dst.creds) == pushed.digest


async def test_a_new_repository_that_holds_the_blobs_after_all_drops_the_unread_reads(proxies, make_corpus):
    """No tag on the target, but its blobs are there (an earlier run that died before its
    manifests): each mount answers 201, the GET sent beside it is closed unread, nothing is
    uploaded, and the tag still copies."""
    src, dst, src_proxy, dst_proxy, pushed = proxies
    with make_corpus(dst) as on_target:
        for blob in pushed.image.blobs().values():
            on_target.push_blob("app/web", blob.data)

    result, copier = await copy(src_proxy, dst_proxy, fresh=True)

    assert result.status == "Succeeded", result.error
    assert copier.blobs_mounted == len(pushed.blobs) and copier.blobs_uploaded == 0
    assert dst_proxy.requests("PUT", UPLOADS + ".*") == []
    assert inspect_raw_digest(dst.ref("app/web", "1.0"), dst.creds) == pushed.digest


async def test_a_source_that_fails_the_read_abandons_the_session_without_waiting_for_it(proxies):
    src, dst, src_proxy, dst_proxy, pushed = proxies
    held = 5.0
    dst_proxy.rule("POST", UPLOADS, delay(held), nth=None)
    src_proxy.rule("GET", BLOB_GETS, respond(404, {"Content-Type": "application/json"},
                                             distribution_error("BLOB_UNKNOWN", "blob unknown to registry")),
                   nth=None)

    started = time.monotonic()
    result, copier = await copy(src_proxy, dst_proxy, fresh=True)

    assert result.status == "Failed"
    assert "404" in result.error or "BLOB_UNKNOWN" in result.error, result.error
    assert time.monotonic() - started < held  # the POSTs were cancelled, not awaited
    assert copier.blobs_uploaded == 0
