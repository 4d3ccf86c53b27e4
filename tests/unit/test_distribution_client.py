"""Unit tests of adapters.distribution.client over httpx.MockTransport (no network): pagination,
manifests, blob uploads and downloads, and how HTTP answers map onto the error tree."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from adapters.distribution.client import (
    ERROR_DETAIL_CHARS,
    MAX_ERROR_BODY_BYTES,
    DistributionClient,
)
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    DigestMismatchError,
    ManifestTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RegistryError,
    ServerError,
    TransportError,
)
from adapters.oci import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Digest,
    parse_manifest,
)

REGISTRY = "http://reg.example"
BLOB = Digest.of(b"0123456789")

Handler = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, *, content: bytes = b"", body: object = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still a stream, as from a real transport (``content=`` would be
    read into memory at construction, and the client reads bodies raw)."""
    if body is not None:
        content = json.dumps(body).encode()
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


class CountingStream(httpx.AsyncByteStream):
    """``total`` bytes of ``fill`` in ``chunk``-sized pieces, no Content-Length; counts what was read."""

    def __init__(self, total: int, chunk: int = 4096, fill: bytes = b"x") -> None:
        self.total, self.chunk, self.fill = total, chunk, fill
        self.produced = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        piece = (self.fill * (self.chunk // len(self.fill) + 1))[:self.chunk]
        while self.produced < self.total:
            data = piece[:self.total - self.produced]
            self.produced += len(data)
            yield data


class ChunkedStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk = data, chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i:i + self.chunk]


def make_client(handler: Handler, *, url: str = REGISTRY) -> DistributionClient:
    return DistributionClient(Endpoint(url=url), transport=httpx.MockTransport(handler))


class Recorder:
    """A handler that answers from a function and keeps every request it saw."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def manifest_bytes() -> bytes:
    config, layer = b"{}", b"layer"
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest.of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": Digest.of(layer), "size": len(layer)}],
    }
    # Unusual formatting on purpose: only the exact bytes hash to the manifest's digest.
    return json.dumps(document, indent=3).encode() + b"\n"


MANIFEST = manifest_bytes()
MANIFEST_DIGEST = Digest.of(MANIFEST)


# -- pagination -------------------------------------------------------------------------------


async def test_catalog_follows_link_across_pages() -> None:
    pages = {
        None: (["a", "b"], '</v2/_catalog?last=b&n=100>; rel="next"'),
        "b": (["c", "d"], '</v2/_catalog?last=d&n=100>; rel="next"'),
        "d": (["e"], None),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        names, link = pages[request.url.params.get("last")]
        return reply(body={"repositories": names}, headers={"Link": link} if link else {})

    rec = Recorder(answer)
    async with make_client(rec) as client:
        names = [name async for name in client.catalog()]

    assert names == ["a", "b", "c", "d", "e"]
    assert [(r.url.path, r.url.params.get("last"), r.url.params.get("n")) for r in rec.requests] == [
        ("/v2/_catalog", None, "100"), ("/v2/_catalog", "b", "100"), ("/v2/_catalog", "d", "100"),
    ]


async def test_catalog_ignores_a_link_to_another_host() -> None:
    rec = Recorder(lambda request: reply(
        body={"repositories": ["a"]},
        headers={"Link": '<http://evil.example/v2/_catalog?last=a&n=100>; rel="next"'},
    ))
    async with make_client(rec) as client:
        names = [name async for name in client.catalog()]

    assert names == ["a"]
    assert [r.url.host for r in rec.requests] == ["reg.example"]


async def test_list_tags_follows_link_pages() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("last") == "v2":
            return reply(body={"name": "a/b", "tags": ["v3"]})
        return reply(body={"name": "a/b", "tags": ["v1", "v2"]},
                     headers={"Link": '</v2/a/b/tags/list?last=v2&n=2>; rel="next"'})

    rec = Recorder(answer)
    async with make_client(rec) as client:
        assert await client.list_tags("a/b") == ["v1", "v2", "v3"]

    assert [str(r.url) for r in rec.requests] == [
        "http://reg.example/v2/a/b/tags/list",
        "http://reg.example/v2/a/b/tags/list?last=v2&n=2",
    ]


async def test_list_tags_under_a_path_prefix() -> None:
    rec = Recorder(lambda request: reply(body={"name": "a/b", "tags": None}))
    async with make_client(rec, url="http://reg.example/mirror/") as client:
        assert await client.list_tags("a/b") == []

    assert rec.requests[0].url.path == "/mirror/v2/a/b/tags/list"


# -- manifests --------------------------------------------------------------------------------


async def test_head_manifest_returns_none_on_404() -> None:
    rec = Recorder(lambda request: reply(404))
    async with make_client(rec) as client:
        assert await client.head_manifest("a/b", "v1") is None

    assert rec.requests[0].method == "HEAD"


async def test_head_manifest_reads_digest_media_type_and_size_from_headers() -> None:
    rec = Recorder(lambda request: httpx.Response(200, headers={
        "Docker-Content-Digest": MANIFEST_DIGEST,
        "Content-Type": f"{DOCKER_MANIFEST_V2}; charset=utf-8",
        "Content-Length": "1234",
    }))
    async with make_client(rec) as client:
        head = await client.head_manifest("a/b", "v1")

    assert head is not None
    assert (head.digest, head.media_type, head.size) == (MANIFEST_DIGEST, DOCKER_MANIFEST_V2, 1234)
    assert len(rec.requests) == 1
    assert rec.requests[0].method == "HEAD"
    assert rec.requests[0].url.path == "/v2/a/b/manifests/v1"


async def test_get_manifest_sends_full_accept_and_returns_exact_bytes() -> None:
    rec = Recorder(lambda request: reply(content=MANIFEST, headers={
        "Content-Type": OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}))
    async with make_client(rec) as client:
        manifest = await client.get_manifest("a/b", "v1")

    accept = [t.strip() for t in rec.requests[0].headers["Accept"].split(",")]
    assert sorted(accept) == sorted([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST])
    assert manifest.raw == MANIFEST
    assert manifest.digest == MANIFEST_DIGEST
    assert manifest.media_type == OCI_MANIFEST
    assert rec.requests[0].url.path == "/v2/a/b/manifests/v1"


async def test_get_manifest_by_digest_accepts_matching_bytes() -> None:
    rec = Recorder(lambda request: reply(content=MANIFEST, headers={"Content-Type": OCI_MANIFEST}))
    async with make_client(rec) as client:
        manifest = await client.get_manifest("a/b", MANIFEST_DIGEST)

    assert manifest.raw == MANIFEST
    assert rec.requests[0].url.path == f"/v2/a/b/manifests/{MANIFEST_DIGEST}"


async def test_get_manifest_raises_when_bytes_do_not_hash_to_the_requested_digest() -> None:
    wanted = Digest.of(b"some other manifest")
    async with make_client(lambda request: reply(content=MANIFEST)) as client:
        with pytest.raises(DigestMismatchError) as info:
            await client.get_manifest("a/b", wanted)

    assert info.value.expected == wanted
    assert info.value.actual == MANIFEST_DIGEST


async def test_get_manifest_raises_when_docker_content_digest_disagrees() -> None:
    served = Digest.of(b"something else")
    handler = Recorder(lambda request: reply(content=MANIFEST, headers={"Docker-Content-Digest": served}))
    async with make_client(handler) as client:
        with pytest.raises(DigestMismatchError) as info:
            await client.get_manifest("a/b", "v1")

    assert (info.value.expected, info.value.actual) == (served, MANIFEST_DIGEST)


async def test_get_manifest_refuses_declared_oversize_without_reading_it() -> None:
    stream = CountingStream(MAX_MANIFEST_BYTES + 1)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(MAX_MANIFEST_BYTES + 1)}, stream=stream)

    async with make_client(answer) as client:
        with pytest.raises(ManifestTooLargeError):
            await client.get_manifest("a/b", "v1")

    assert stream.produced == 0


async def test_get_manifest_refuses_undeclared_oversize_and_stops_reading() -> None:
    stream = CountingStream(10 * MAX_MANIFEST_BYTES, chunk=64 * 1024, fill=b" ")

    async with make_client(lambda request: httpx.Response(200, stream=stream)) as client:
        with pytest.raises(ManifestTooLargeError):
            await client.get_manifest("a/b", "v1")

    assert MAX_MANIFEST_BYTES < stream.produced <= MAX_MANIFEST_BYTES + 64 * 1024


async def test_put_manifest_sends_exact_bytes_and_content_type() -> None:
    manifest = parse_manifest(MANIFEST, OCI_MANIFEST)
    rec = Recorder(lambda request: reply(201, headers={"Docker-Content-Digest": MANIFEST_DIGEST}))
    async with make_client(rec) as client:
        assert await client.put_manifest("a/b", "v1", manifest) == MANIFEST_DIGEST

    [request] = rec.requests
    assert request.method == "PUT"
    assert request.url.path == "/v2/a/b/manifests/v1"
    assert request.content == MANIFEST
    assert request.headers["Content-Type"] == OCI_MANIFEST


# -- error mapping ----------------------------------------------------------------------------

IN_TWO_MINUTES = "in two minutes"  # an HTTP date, made when the test runs


@pytest.mark.parametrize(
    ("status", "headers", "error", "transient"),
    [
        (400, {}, RegistryError, False),
        (401, {}, AuthenticationError, False),
        (403, {}, PermissionDeniedError, False),
        (404, {}, NotFoundError, False),
        (408, {}, RegistryError, True),
        (429, {}, RateLimitedError, True),
        (500, {}, ServerError, True),
        (502, {}, ServerError, True),
        (503, {"Retry-After": "30"}, ServerError, True),
    ],
)
async def test_status_maps_to_error_class(
    status: int, headers: dict[str, str], error: type[RegistryError], transient: bool
) -> None:
    async with make_client(lambda request: reply(status, headers=headers)) as client:
        with pytest.raises(RegistryError) as info:
            await client.list_tags("a/b")

    assert type(info.value) is error
    assert info.value.transient is transient
    assert info.value.status == status
    assert info.value.method == "GET"
    assert info.value.url == "reg.example/v2/a/b/tags/list"
    assert str(status) in str(info.value)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", (7, 7)), (IN_TWO_MINUTES, (100, 121)), ("soon", None), (None, None)],
)
async def test_rate_limit_reads_retry_after(retry_after: str | None,
                                            expected: tuple[float, float] | None) -> None:
    if retry_after == IN_TWO_MINUTES:
        retry_after = email.utils.formatdate(time.time() + 120, usegmt=True)
    headers = {"Retry-After": retry_after} if retry_after else {}
    async with make_client(lambda request: reply(429, headers=headers)) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.list_tags("a/b")

    assert info.value.transient
    if expected is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after is not None
        assert expected[0] <= info.value.retry_after <= expected[1]


async def test_distribution_error_codes_are_parsed() -> None:
    body = {"errors": [
        {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "v9"}},
        {"code": "NAME_UNKNOWN", "message": "repository name not known to registry"},
    ]}
    async with make_client(lambda request: reply(404, body=body)) as client:
        with pytest.raises(NotFoundError) as info:
            await client.get_manifest("a/b", "v9")

    assert info.value.codes == ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    assert "manifest unknown" in info.value.detail
    assert "repository name not known" in info.value.detail
    assert "MANIFEST_UNKNOWN" in str(info.value)


async def test_blob_upload_unknown_is_transient() -> None:
    body = {"errors": [{"code": "BLOB_UPLOAD_UNKNOWN", "message": "blob upload unknown"}]}
    async with make_client(lambda request: reply(400, body=body)) as client:
        with pytest.raises(RegistryError) as info:
            await client.upload_status("a/b", "http://reg.example/v2/a/b/blobs/uploads/u1?_state=s")

    assert info.value.transient
    assert "_state" not in str(info.value)  # upload state is redacted from messages


async def test_huge_non_json_error_body_is_capped_and_not_read_whole() -> None:
    stream = CountingStream(10 * 1024 * 1024, fill=b"<html>oops</html>\n\x00")

    async with make_client(lambda request: httpx.Response(500, stream=stream)) as client:
        with pytest.raises(ServerError) as info:
            await client.list_tags("a/b")

    assert info.value.codes == ()
    assert info.value.detail.startswith("<html>oops</html>")
    assert len(info.value.detail) <= ERROR_DETAIL_CHARS
    assert len(str(info.value)) <= ERROR_DETAIL_CHARS + 100
    assert "\x00" not in str(info.value)
    assert stream.produced <= MAX_ERROR_BODY_BYTES + stream.chunk


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_connection_errors_become_transient_transport_errors(exc: type[httpx.TransportError]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    async with make_client(answer) as client:
        with pytest.raises(TransportError) as info:
            await client.list_tags("a/b")

    assert info.value.transient
    assert exc.__name__ in str(info.value)
    assert "/v2/a/b/tags/list" in str(info.value)


async def test_error_in_the_middle_of_a_blob_is_a_transport_error() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"01234"
            raise httpx.ReadError("connection reset")

    async with make_client(lambda request: httpx.Response(200, stream=Broken())) as client:
        async with client.open_blob("a/b", BLOB) as stream:
            received: list[bytes] = []
            with pytest.raises(TransportError) as info:
                async for chunk in stream.chunks(chunk_size=5):
                    received.append(chunk)

    assert received == [b"01234"]
    assert info.value.transient
    assert "ReadError" in str(info.value)


# -- blob uploads -----------------------------------------------------------------------------


async def test_put_blob_keeps_the_location_query_and_adds_the_digest() -> None:
    rec = Recorder(lambda request: reply(201))
    location = "http://reg.example/v2/a/b/blobs/uploads/u1?_state=abc"
    async with make_client(rec) as client:
        await client.put_blob("a/b", location, BLOB, 10, b"0123456789")

    [request] = rec.requests
    assert request.method == "PUT"
    assert request.url.path == "/v2/a/b/blobs/uploads/u1"
    assert list(request.url.params.multi_items()) == [("_state", "abc"), ("digest", BLOB)]
    assert request.content == b"0123456789"
    assert request.headers["Content-Length"] == "10"
    assert request.headers["Content-Type"] == "application/octet-stream"


async def test_put_blob_without_a_query_and_with_a_streamed_body() -> None:
    rec = Recorder(lambda request: reply(201))

    async def body() -> AsyncIterator[bytes]:
        yield b"01234"
        yield b"56789"

    async with make_client(rec) as client:
        await client.put_blob("a/b", "http://reg.example/v2/a/b/blobs/uploads/u1", BLOB, 10, body())

    assert list(rec.requests[0].url.params.multi_items()) == [("digest", BLOB)]
    assert rec.requests[0].content == b"0123456789"


async def test_start_upload_with_mount_returns_none_when_mounted() -> None:
    rec = Recorder(lambda request: reply(201, headers={"Location": f"/v2/a/b/blobs/{BLOB}"}))
    async with make_client(rec) as client:
        assert await client.start_upload("a/b", mount=BLOB, mount_from="c/d") is None

    [request] = rec.requests
    assert request.method == "POST"
    assert request.url.path == "/v2/a/b/blobs/uploads/"
    assert dict(request.url.params) == {"mount": BLOB, "from": "c/d"}


async def test_start_upload_with_mount_returns_absolute_location_on_202() -> None:
    rec = Recorder(lambda request: reply(202, headers={"Location": "/v2/a/b/blobs/uploads/u1?_state=s"}))
    async with make_client(rec) as client:
        location = await client.start_upload("a/b", mount=BLOB, mount_from="c/d")

    assert location == "http://reg.example/v2/a/b/blobs/uploads/u1?_state=s"


async def test_start_upload_without_mount_sends_no_query() -> None:
    rec = Recorder(lambda request: reply(202, headers={"Location": "http://reg.example/v2/a/b/blobs/uploads/u2"}))
    async with make_client(rec) as client:
        assert await client.start_upload("a/b") == "http://reg.example/v2/a/b/blobs/uploads/u2"

    assert rec.requests[0].url.query == b""


@pytest.mark.parametrize(("range_header", "offset"), [("0-99", 100), ("0-0", 0), (None, 0)])
async def test_upload_status_reads_the_range(range_header: str | None, offset: int) -> None:
    headers = {"Location": "/v2/a/b/blobs/uploads/u1?_state=next"}
    if range_header is not None:
        headers["Range"] = range_header
    rec = Recorder(lambda request: reply(204, headers=headers))
    async with make_client(rec) as client:
        status = await client.upload_status("a/b", "http://reg.example/v2/a/b/blobs/uploads/u1?_state=s")

    assert status.offset == offset
    assert status.location == "http://reg.example/v2/a/b/blobs/uploads/u1?_state=next"
    assert rec.requests[0].method == "GET"


# -- blob downloads ---------------------------------------------------------------------------


async def read_blob(client: DistributionClient, offset: int = 0) -> tuple[bytes, int | None]:
    async with client.open_blob("a/b", BLOB, offset) as stream:
        data = b"".join([chunk async for chunk in stream.chunks()])
        return data, stream.size


async def test_open_blob_from_the_start_sends_no_range() -> None:
    rec = Recorder(lambda request: reply(content=b"0123456789"))
    async with make_client(rec) as client:
        assert await read_blob(client) == (b"0123456789", 10)

    assert "Range" not in rec.requests[0].headers
    assert rec.requests[0].url.path == f"/v2/a/b/blobs/{BLOB}"


async def test_open_blob_with_offset_sends_range_and_reads_a_206() -> None:
    rec = Recorder(lambda request: reply(206, content=b"56789", headers={"Content-Range": "bytes 5-9/10"}))
    async with make_client(rec) as client:
        assert await read_blob(client, offset=5) == (b"56789", 10)

    assert rec.requests[0].headers["Range"] == "bytes=5-"


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 100])
async def test_open_blob_skips_to_the_offset_when_the_server_ignores_range(chunk: int) -> None:
    rec = Recorder(lambda request: httpx.Response(200, headers={"Content-Length": "10"},
                                                  stream=ChunkedStream(b"0123456789", chunk)))
    async with make_client(rec) as client:
        assert await read_blob(client, offset=5) == (b"56789", 10)

    assert rec.requests[0].headers["Range"] == "bytes=5-"
