"""Faults on the wire and in the registry, against real registries and the real transfer code.

A :class:`FaultProxy` (tests/support/faultproxy.py) sits in front of one registry and cuts,
delays or answers chosen requests; the product talks to the proxy as if it were the registry.
Every copy that is meant to succeed is checked by skopeo, the independent peer: the manifest
bytes hash to the source's digest, and ``skopeo copy`` to a directory re-reads and verifies
every blob.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import SecretStr

import tasks.blobs
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from tasks.bandwidth import Bandwidth
from tasks.blobs import BlobCopier
from tasks.models import TagPlan, TransferResult, TransferSpec
from tasks.transfer import transfer_repository
from tests.support.corpus import (
    MT_OCI_LAYER,
    Blob,
    Image,
    ImageKind,
    PushedTag,
    RegistryClient,
    make_config,
    make_image_manifest,
    sha256_digest,
)
from tests.support.endpoints import client_for
from tests.support.faultproxy import (
    FaultProxy,
    ProxiedRequest,
    delay,
    distribution_error,
    drop_after,
    respond,
)
from tests.support.registry import RegistryProcess
from tests.support.skopeo import inspect_raw_digest, skopeo_copy

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
RETRY_AFTER = 2.0


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def make_proxy() -> Iterator[Callable[[RegistryProcess], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def factory(registry: RegistryProcess) -> FaultProxy:
        proxy = FaultProxy(registry).start()
        proxies.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in proxies:
            proxy.close()


def client(registry: RegistryProcess, proxy: FaultProxy | None = None) -> DistributionClient:
    """The product's client for ``registry``, through ``proxy`` when given."""
    if proxy is None:
        return client_for(registry)
    password = SecretStr(registry.password) if registry.password else None
    return DistributionClient(Endpoint(url=proxy.url, username=registry.username, password=password))


async def copy(src: RegistryProcess, dst: RegistryProcess, repository: str, tags: list[str], *,
               src_proxy: FaultProxy | None = None, dst_proxy: FaultProxy | None = None,
               copy_by_chunk: bool = False, bandwidth: Bandwidth | None = None) -> TransferResult:
    async with client(src, src_proxy) as source, client(dst, dst_proxy) as target:
        spec = TransferSpec(source_repository=repository, target_repository=repository,
                            tags=[TagPlan(tag=t) for t in tags], copy_by_chunk=copy_by_chunk)
        return await transfer_repository(source, target, spec,
                                         BlobCopier(source, target, bandwidth=bandwidth))


def verify_with_skopeo(registry: RegistryProcess, pushed: PushedTag, tmp_path: Path) -> None:
    """The tag's manifest bytes hash to the source digest, and every blob skopeo pulls back
    (verifying each against its digest as it goes) is there with the source's bytes."""
    ref = registry.ref(pushed.repository, pushed.tag)
    assert inspect_raw_digest(ref, registry.creds) == pushed.digest
    out = tmp_path / f"skopeo-{pushed.repository.replace('/', '_')}-{pushed.tag}"
    skopeo_copy(ref, f"dir:{out}", src_creds=registry.creds, all_images=False, preserve_digests=False)
    for digest in pushed.blobs:
        hexpart = digest.removeprefix("sha256:")
        hasher = hashlib.sha256()
        with (out / hexpart).open("rb") as f:
            while piece := f.read(8 * MiB):
                hasher.update(piece)
        assert hasher.hexdigest() == hexpart


def one_layer_image(name: str, layer_bytes: int) -> Image:
    """An OCI image whose one layer is ``layer_bytes`` of pseudo-random bytes (AES-CTR: fast,
    deterministic, incompressible)."""
    key = hashlib.sha256(name.encode()).digest()[:16]
    data = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(layer_bytes))
    layer = Blob(data, MT_OCI_LAYER, diff_id=sha256_digest(name.encode()))
    config = make_config(name, "amd64", None, [layer], oci=True)
    manifest = make_image_manifest(config, [layer], oci=True)
    return Image(ImageKind.OCI, manifest, config=config, layers=(layer,),
                 platform={"architecture": "amd64", "os": "linux"})


def push_chunked(registry: RegistryProcess, repository: str, tag: str, image: Image) -> PushedTag:
    """Push a single-platform image, its blobs in 32 MiB PATCHes (distribution 2.8 ingests a
    256 MiB monolithic PUT several times slower), and return the record of what was pushed."""
    with RegistryClient(registry.url, registry.httpx_auth()) as c:
        for blob in image.blobs().values():
            response = c.http.post(f"/v2/{repository}/blobs/uploads/")
            assert response.status_code == 202, response.text
            location = response.headers["Location"]
            for offset in range(0, blob.size, 32 * MiB):
                response = c.http.patch(location, content=blob.data[offset:offset + 32 * MiB],
                                        headers={"Content-Type": "application/octet-stream"})
                assert response.status_code == 202, response.text
                location = response.headers["Location"]
            response = c.http.put(f"{location}&digest={blob.digest.replace(':', '%3A')}")
            assert response.status_code == 201, response.text
        digest = c.push_manifest(repository, tag, image.manifest.data, image.media_type)
    return PushedTag(repository=repository, tag=tag, digest=digest, media_type=image.media_type,
                     manifest=image.manifest.data, blobs=frozenset(image.blobs()),
                     manifests=frozenset([digest]), children=(), image=image)


def tags_on(registry: RegistryProcess, repository: str) -> list[str]:
    with RegistryClient(registry.url, registry.httpx_auth()) as c:
        return c.tags(repository)


# -- tests ---------------------------------------------------------------------------------------


async def test_source_cut_mid_blob_is_fetched_again_and_the_tag_copies(make_registry, make_corpus,
                                                                       make_proxy, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("basic")
    pushed = make_corpus(src).push("app/cut", ["1.0"], ImageKind.DOCKER, layer_sizes=[8 * MiB])
    layer = pushed.image.layers[-1]
    proxy = make_proxy(src)
    proxy.rule("GET", rf"/v2/app/cut/blobs/{layer.digest}", drop_after(fraction=0.5))

    result = await copy(src, dst, "app/cut", ["1.0"], src_proxy=proxy)

    assert result.status == "Succeeded", result.error
    assert [t.status for t in result.tags] == ["copied"]
    gets = proxy.requests("GET", rf"/v2/app/cut/blobs/{layer.digest}")
    assert len(gets) == 2
    assert gets[0].error == "dropped" and gets[0].response_bytes == layer.size // 2
    assert gets[1].status == 200 and gets[1].response_bytes == layer.size
    # The broken stream never became a blob on the target: one committed upload of it.
    assert dst.count_requests("PUT", r"/v2/app/cut/blobs/uploads/.*", status=201) == len(pushed.blobs)
    verify_with_skopeo(dst, pushed, tmp_path)


@pytest.mark.parametrize("where", ["manifest-put", "blob-post"])
async def test_429_retry_after_holds_every_request_to_that_registry(make_registry, make_corpus,
                                                                    make_proxy, tmp_path, where):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push("app/rl", ["1.0"], ImageKind.DOCKER)  # 4 blobs: base, 2, config
    proxy = make_proxy(dst)
    refused = respond(429, {"Retry-After": f"{RETRY_AFTER:.0f}", "Content-Type": "application/json"},
                      distribution_error("TOOMANYREQUESTS", "slow down"))
    if where == "manifest-put":
        method, path = "PUT", r"/v2/app/rl/manifests/.*"
    else:
        method, path = "POST", r"/v2/app/rl/blobs/uploads/"
        # The other blobs' POSTs, sent with the refused one, are answered well after the 429,
        # so whatever follows them is sent after the client has seen it.
        proxy.rule(method, path, delay(1.0), nth=range(2, 100))
    proxy.rule(method, path, refused, nth=1)

    result = await copy(src, dst, "app/rl", ["1.0"], dst_proxy=proxy)

    assert result.status == "Succeeded", result.error
    seen = proxy.requests()
    limited = [r for r in seen if r.status == 429]
    assert len(limited) == 1
    t429 = limited[0].time
    after = [r for r in seen if r.time > t429]
    within = [r for r in after if r.time < t429 + RETRY_AFTER]
    if where == "manifest-put":
        assert within == [], [(r.method, r.path, round(r.time - t429, 3)) for r in within]
    else:
        # Only the other blobs' first POSTs, on the wire with the refused one: nothing sent in
        # answer to a response (no PUT), no retry of the refused POST.
        first = {}
        for r in seen:
            first.setdefault(r.target, r)
        assert all(r.method == "POST" and r.path == "/v2/app/rl/blobs/uploads/"
                   and first[r.target] is r for r in within), \
            [(r.method, r.path, round(r.time - t429, 3)) for r in within]
    retried = [r for r in after if r.method == method and re.fullmatch(path, r.path)
               and r.target == limited[0].target]
    assert retried and retried[0].time >= t429 + RETRY_AFTER
    verify_with_skopeo(dst, pushed, tmp_path)


async def test_503_twice_then_ok_on_a_blob_upload(make_registry, make_corpus, make_proxy, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("basic")
    pushed = make_corpus(src).push("app/flaky", ["1.0"], ImageKind.OCI, layer_sizes=[1 * MiB])
    layer = pushed.image.layers[-1].digest
    proxy = make_proxy(dst)
    proxy.rule("PUT", r"/v2/app/flaky/blobs/uploads/.*",
               respond(503, {"Content-Type": "application/json"},
                       distribution_error("UNAVAILABLE", "service unavailable")),
               nth=(1, 2), query=layer.removeprefix("sha256:"))

    result = await copy(src, dst, "app/flaky", ["1.0"], dst_proxy=proxy)

    assert result.status == "Succeeded", result.error
    puts = [r for r in proxy.requests("PUT", r"/v2/app/flaky/blobs/uploads/.*")
            if layer.removeprefix("sha256:") in r.query]
    assert [r.status for r in puts] == [503, 503, 201]
    assert all(r.body_received == r.content_length for r in puts)  # each attempt sent it all
    verify_with_skopeo(dst, pushed, tmp_path)


async def test_blob_upload_unknown_is_tried_again_in_a_new_session(make_registry, make_corpus, make_proxy,
                                                                   tmp_path):
    """distribution's answer when it lost an upload (purged, or a restart on local storage): a 404
    that the error table marks transient, so the blob's next attempt opens a new session."""
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    pushed = make_corpus(src).push("app/lost", ["1.0"], ImageKind.OCI, layer_sizes=[1 * MiB])
    layer = pushed.image.layers[-1].digest.removeprefix("sha256:")
    proxy = make_proxy(dst)
    proxy.rule("PUT", r"/v2/app/lost/blobs/uploads/.*",
               respond(404, {"Content-Type": "application/json"},
                       distribution_error("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")),
               nth=1, query=layer)

    result = await copy(src, dst, "app/lost", ["1.0"], dst_proxy=proxy)

    assert result.status == "Succeeded", result.error
    puts = [r for r in proxy.requests("PUT", r"/v2/app/lost/blobs/uploads/.*") if layer in r.query]
    assert [r.status for r in puts] == [404, 201]
    assert puts[0].target.split("?")[0] != puts[1].target.split("?")[0]  # a new session
    verify_with_skopeo(dst, pushed, tmp_path)


HUGE = 256 * MiB


@pytest.fixture(scope="module")
def huge_source(testbed_binaries: None) -> Iterator[tuple[RegistryProcess, PushedTag]]:
    """One source registry holding a 256 MiB single-layer image, shared by the chunked tests."""
    with RegistryProcess("anonymous") as src:
        yield src, push_chunked(src, "app/huge", "1.0", one_layer_image("app/huge:1.0", HUGE))


def kept_by_registry(status: ProxiedRequest) -> int:
    """Bytes an upload-status answer (``Range: 0-N``) says the registry holds."""
    return int((status.response_header("Range") or "").rpartition("-")[2]) + 1


@pytest.mark.slow
async def test_chunked_upload_dropped_at_60_percent_resumes_from_the_registry_range(
        huge_source, make_registry, make_proxy, tmp_path, monkeypatch):
    # 51 MiB PATCHes: the 4th starts at 153 MiB, 60% of the blob, and its connection drops
    # there. The registry still holds exactly what it acknowledged, so it can say where it
    # stands (distribution 2.8 can only then: see the next test).
    chunk = 51 * MiB
    monkeypatch.setattr(tasks.blobs, "UPLOAD_CHUNK_BYTES", chunk)
    src, pushed = huge_source
    layer = pushed.image.layers[0]
    dst = make_registry("anonymous")
    proxy = make_proxy(dst)
    uploads = r"/v2/app/huge/blobs/uploads/.+"
    proxy.rule("PATCH", uploads, drop_after(0, side="request"), nth=4)

    # Over CHUNKED_UPLOAD_THRESHOLD_BYTES: chunked without copy_by_chunk (the config is a PUT).
    result = await copy(src, dst, "app/huge", ["1.0"], dst_proxy=proxy)

    assert result.status == "Succeeded", result.error
    patches = proxy.requests("PATCH", uploads)
    assert patches[3].error == "dropped" and patches[3].body_forwarded == 0
    status = proxy.requests("GET", uploads)
    assert len(status) == 1 and status[0].status == 204
    kept = kept_by_registry(status[0])
    assert kept == 3 * chunk
    assert (patches[4].request_header("Content-Range") or "").startswith(f"{kept}-")  # not 0-
    assert len(proxy.requests("POST", r"/v2/app/huge/blobs/uploads/")) == 2  # layer + config
    sent = proxy.bytes_forwarded("PATCH", uploads)
    assert sent == layer.size < 1.5 * layer.size  # every byte went up exactly once
    verify_with_skopeo(dst, pushed, tmp_path)


@pytest.mark.slow
async def test_the_next_attempt_continues_the_session_a_failed_attempt_left(
        huge_source, make_registry, make_proxy, tmp_path, monkeypatch):
    """As a Prefect task retry does: the same run's BlobCopier, a new transfer call."""
    chunk = 51 * MiB
    monkeypatch.setattr(tasks.blobs, "UPLOAD_CHUNK_BYTES", chunk)
    monkeypatch.setattr(tasks.blobs, "BLOB_ATTEMPTS", 1)  # the first attempt gives up at once
    src, pushed = huge_source
    layer = pushed.image.layers[0]
    dst = make_registry("anonymous")
    proxy = make_proxy(dst)
    uploads = r"/v2/app/huge/blobs/uploads/.+"
    proxy.rule("PATCH", uploads, drop_after(0, side="request"), nth=4)

    async with client(src) as source, client(dst, proxy) as target:
        copier = BlobCopier(source, target)
        spec = TransferSpec(source_repository="app/huge", target_repository="app/huge",
                            tags=[TagPlan(tag="1.0")])
        first = await transfer_repository(source, target, spec, copier)
        assert first.status == "Failed" and first.retryable, first.error
        second = await transfer_repository(source, target, spec, copier)

    assert second.status == "Succeeded", second.error
    patches = proxy.requests("PATCH", uploads)
    assert (patches[4].request_header("Content-Range") or "").startswith(f"{3 * chunk}-")  # not 0-
    # One session for the layer, kept across the two attempts (+ the config's own).
    assert len(proxy.requests("POST", r"/v2/app/huge/blobs/uploads/")) == 2
    assert proxy.bytes_forwarded("PATCH", uploads) == layer.size < 1.5 * layer.size
    verify_with_skopeo(dst, pushed, tmp_path)


@pytest.mark.slow
async def test_chunked_upload_cut_mid_patch_at_60_percent_still_copies(
        huge_source, make_registry, make_proxy, tmp_path, monkeypatch):
    chunk = 32 * MiB
    monkeypatch.setattr(tasks.blobs, "UPLOAD_CHUNK_BYTES", chunk)
    src, pushed = huge_source
    layer = pushed.image.layers[0]
    cut = int(HUGE * 0.6)
    full = cut // chunk  # 4 PATCHes go through, the 5th is cut 25.6 MiB into its body
    dst = make_registry("anonymous")
    proxy = make_proxy(dst)
    uploads = r"/v2/app/huge/blobs/uploads/.+"
    proxy.rule("PATCH", uploads, drop_after(cut - full * chunk, side="request"), nth=full + 1)

    result = await copy(src, dst, "app/huge", ["1.0"], dst_proxy=proxy)

    assert result.status == "Succeeded", result.error
    patches = proxy.requests("PATCH", uploads)
    assert patches[full].error == "dropped" and patches[full].body_forwarded == cut - full * chunk
    status = proxy.requests("GET", uploads)
    assert len(status) == 1
    sent = proxy.bytes_forwarded("PATCH", uploads)
    if status[0].status == 204:
        # A registry that reports what it kept of the broken PATCH (distribution >= 3): the
        # upload goes on from there, and only what it dropped is sent again.
        kept = kept_by_registry(status[0])
        assert full * chunk <= kept <= cut
        assert (patches[full + 1].request_header("Content-Range") or "").startswith(f"{kept}-")
        assert sent == layer.size + cut - kept < 1.5 * layer.size
    else:
        # distribution 2.8 (the test bed's): the bytes it kept of the broken PATCH no longer
        # match the offset signed into the upload URL, so it refuses the status request and
        # cancels the session. The blob starts over in a new session, once, and still copies.
        assert status[0].status == 404
        assert sent == cut + layer.size
        assert len(proxy.requests("POST", r"/v2/app/huge/blobs/uploads/")) == 3  # +1 session
        assert (patches[full + 1].request_header("Content-Range") or "").startswith("0-")
    verify_with_skopeo(dst, pushed, tmp_path)


class _KillTarget(Bandwidth):
    """Unlimited bandwidth that SIGKILLs the target registry once ``after`` bytes went out."""

    def __init__(self, registry: RegistryProcess, after: int) -> None:
        super().__init__(-1)
        self.registry, self.after = registry, after
        self.streamed = 0
        self.killed_at: int | None = None

    async def spend(self, n: int) -> None:
        self.streamed += n
        if self.killed_at is None and self.streamed >= self.after:
            self.registry.kill()
            self.killed_at = self.streamed


@pytest.mark.slow
async def test_target_killed_mid_blob_fails_every_unfinished_tag_then_a_second_run_completes(
        make_registry, make_corpus, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("basic")
    corpus = make_corpus(src)
    big = push_chunked(src, "app/crash", "1.0", one_layer_image("app/crash:1.0", 64 * MiB))
    small = corpus.push("app/crash", ["2.0"], ImageKind.OCI_INDEX)
    killer = _KillTarget(dst, after=24 * MiB)

    first = await copy(src, dst, "app/crash", ["1.0", "2.0"], bandwidth=killer)

    assert killer.killed_at is not None and not dst.running
    assert first.status == "Failed"
    assert [t.tag for t in first.tags] == ["1.0", "2.0"]
    # Tags are copied side by side: the small 2.0 may have finished before the kill.
    finished = [t.tag for t in first.tags if t.status == "copied"]
    assert finished in ([], ["2.0"])
    for outcome in first.tags:
        if outcome.tag not in finished:
            assert outcome.status == "failed" and outcome.reason.startswith("TransportError"), outcome
            assert outcome.transient

    dst.start()  # same port, same storage
    landed = tags_on(dst, "app/crash")
    # The big tag's blob never completed, so its manifest was never pushed. The small 2.0's
    # manifest PUT may have reached the registry with its answer lost to the kill: then it is
    # there although this run could only report it failed.
    assert "1.0" not in landed
    assert set(finished) <= set(landed) <= {"2.0"}

    second = await copy(src, dst, "app/crash", ["1.0", "2.0"])

    assert second.status == "Succeeded", second.error
    assert [t.status for t in second.tags] == ["copied", "skipped" if landed else "copied"]
    assert tags_on(dst, "app/crash") == ["1.0", "2.0"]
    verify_with_skopeo(dst, big, tmp_path)
    for child in small.image.children:
        assert inspect_raw_digest(dst.ref("app/crash", child.digest), dst.creds) == child.digest
    assert inspect_raw_digest(dst.ref("app/crash", "2.0"), dst.creds) == small.digest
