"""Every answer that is not a blob is capped while it is read and finished by a deadline
(adapters/bounded.py, as the distribution client and the vendor API clients use it); blobs keep
per-read timeouts only. Caps are checked with streams that count what was taken from them,
deadlines against a server on loopback that trickles its answer."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from pydantic import SecretStr

from adapters import bounded, harbor, vendor_api, vendor_http
from adapters.bounded import MAX_PASSED_OVER_BODY_BYTES, read_capped, within
from adapters.chartmuseum import ChartMuseumClient
from adapters.distribution import client as client_module
from adapters.distribution.client import MAX_LISTING_PAGE_BYTES, DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import AnswerTooLargeError, ManifestTooLargeError, NotFoundError, TransportError
from adapters.oci import MAX_MANIFEST_BYTES, Digest

BLOB = Digest.of(b"blob")
READ = 64 * 1024  # what one read of a connection brings at most


class Counting(httpx.AsyncByteStream):
    """``total`` bytes in ``READ``-sized pieces, made as they are taken; counts them."""

    def __init__(self, total: int, fill: bytes = b" ") -> None:
        self.total = total
        self.piece = fill * (READ // len(fill))
        self.produced = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.produced < self.total:
            piece = self.piece[:self.total - self.produced]
            self.produced += len(piece)
            yield piece


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> DistributionClient:
    return DistributionClient(Endpoint(url="http://reg.example"), transport=httpx.MockTransport(handler))


# -- caps ---------------------------------------------------------------------------------------


async def test_a_96_mib_chunked_tag_list_is_refused_after_the_cap() -> None:
    """The answer that took a process from 60 to 278 MiB: no Content-Length, one page."""
    body = Counting(96 * 1024 * 1024, fill=b'"tag",')
    async with mock_client(lambda request: httpx.Response(200, stream=body)) as client:
        with pytest.raises(AnswerTooLargeError, match=f"over {MAX_LISTING_PAGE_BYTES} bytes") as info:
            await client.list_tags("a/b")

    assert MAX_LISTING_PAGE_BYTES < body.produced <= MAX_LISTING_PAGE_BYTES + READ
    assert not info.value.transient  # the same answer would come again


async def test_a_declared_oversize_catalog_page_is_refused_before_reading() -> None:
    body = Counting(MAX_LISTING_PAGE_BYTES + 1)
    headers = {"Content-Length": str(MAX_LISTING_PAGE_BYTES + 1)}
    async with mock_client(lambda request: httpx.Response(200, headers=headers, stream=body)) as client:
        with pytest.raises(AnswerTooLargeError, match="is over"):
            _ = [name async for name in client.catalog()]

    assert body.produced == 0


async def test_answers_nobody_reads_are_drained_only_up_to_their_cap() -> None:
    body = Counting(50 * 1024 * 1024)
    async with mock_client(lambda request: httpx.Response(202, headers={"Location": "/u"},
                                                          stream=body)) as client:
        assert await client.start_upload("a/b") == "http://reg.example/u"

    assert body.produced <= client_module.MAX_DRAINED_BODY_BYTES + READ


async def test_read_capped_counts_decoded_bytes_so_a_compression_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # ~8 KiB on the wire
    response = httpx.Response(200, headers={"Content-Encoding": "gzip", "Content-Length": str(len(bomb))},
                              stream=httpx.ByteStream(bomb))
    with pytest.raises(AnswerTooLargeError, match="token answer: answer over 65536 bytes"):
        await read_capped(response, 64 * 1024, what="token answer")


async def test_read_capped_truncating_keeps_the_first_bytes_and_stops_reading() -> None:
    body = Counting(10 * 1024 * 1024, fill=b"0123456789")
    response = httpx.Response(500, headers={"Content-Length": str(body.total)}, stream=body)

    excerpt = await read_capped(response, 1000, what="error body", truncate=True)

    assert excerpt == b"0123456789" * 100
    assert body.produced == len(body.piece)  # one piece taken, no more


# -- bodies httpx reads by itself inside send() -----------------------------------------------


async def test_the_body_of_a_followed_redirect_is_read_only_up_to_its_cap() -> None:
    """A blob GET redirected to storage: httpx reads the 307's body itself before following it;
    a 50 MiB chunked one is cut off at the cap and the blob still comes from storage."""
    padding = Counting(50 * 1024 * 1024)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example":
            return httpx.Response(200, stream=Counting(4, fill=b"blob"))
        return httpx.Response(307, headers={"Location": "http://storage.example/b"}, stream=padding)

    async with mock_client(answer) as client:
        async with client.open_blob("a/b", BLOB) as stream:
            received = b"".join([chunk async for chunk in stream.chunks()])

    assert received == b"blob"
    assert 0 < padding.produced <= MAX_PASSED_OVER_BODY_BYTES + READ


async def test_the_body_of_a_401_before_the_retry_with_credentials_is_read_only_up_to_its_cap() -> None:
    padding = Counting(50 * 1024 * 1024)
    seen: list[bool] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append("Authorization" in request.headers)
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}, stream=padding)
        return httpx.Response(200, json={"name": "a/b", "tags": ["1"]})

    endpoint = Endpoint(url="http://reg.example", username="u", password=SecretStr("p"))
    async with DistributionClient(endpoint, transport=httpx.MockTransport(answer)) as client:
        assert await client.list_tags("a/b") == ["1"]

    assert seen == [False, True]  # the 401 was answered, with one retry
    assert 0 < padding.produced <= MAX_PASSED_OVER_BODY_BYTES + READ


async def test_a_redirect_body_within_the_cap_is_read_whole() -> None:
    """Cut short only past the cap: a redirect's usual line of HTML is read to its end (so its
    connection can serve the next request)."""
    body = Counting(MAX_PASSED_OVER_BODY_BYTES)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example":
            return httpx.Response(200, stream=Counting(4, fill=b"blob"))
        return httpx.Response(307, headers={"Location": "http://storage.example/b"}, stream=body)

    async with mock_client(answer) as client, client.open_blob("a/b", BLOB) as stream:
        assert b"".join([chunk async for chunk in stream.chunks()]) == b"blob"

    assert body.produced == body.total


# -- deadlines, against a server that trickles -------------------------------------------------

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    for i in range(len(data)):
        writer.write(data[i:i + 1])
        await writer.drain()
        await asyncio.sleep(every)


def chunked_drip(status: int = 200, every: float = 0.2, headers: str = "") -> Script:
    """A chunked answer whose body gains one byte every ``every`` seconds, without end."""
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\n{headers}Transfer-Encoding: chunked\r\n\r\n".encode())
        while True:
            writer.write(b"1\r\n \r\n")
            await writer.drain()
            await asyncio.sleep(every)
    return script


class Loopback:
    """A server on 127.0.0.1 that reads one request head and answers it with ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Loopback:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            await self.script(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up on us: what these tests want
        finally:
            writer.close()


@pytest.fixture
def one_second(monkeypatch: pytest.MonkeyPatch) -> float:
    for module in (client_module, vendor_http, vendor_api):
        monkeypatch.setattr(module, "NON_BLOB_DEADLINE_SECONDS", 1.0)
    return 1.0


async def head_drip(writer: asyncio.StreamWriter) -> None:
    """An answer whose status line and headers come one byte every 0.1 s."""
    await trickle(writer, b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 1000, 0.1)


@pytest.mark.parametrize("where", ["body", "head"])
async def test_a_trickling_answer_fails_by_the_deadline(where: str, one_second: float) -> None:
    """One byte every 0.2 s never trips a 60 s read timeout; the deadline ends it."""
    script = chunked_drip() if where == "body" else head_drip
    async with Loopback(script) as server, DistributionClient(Endpoint(url=server.url)) as client:
        started = time.monotonic()
        expected = r"GET .*/v2/a/b/tags/list: no complete answer within 1 s"
        with pytest.raises(TransportError, match=expected) as info:
            await client.list_tags("a/b")
        elapsed = time.monotonic() - started

    assert info.value.transient
    assert one_second <= elapsed < one_second + 1.0


async def test_every_non_blob_verb_has_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "NON_BLOB_DEADLINE_SECONDS", 0.3)
    async with Loopback(head_drip) as server, DistributionClient(Endpoint(url=server.url)) as client:
        calls: list[Callable[[], Awaitable[object]]] = [
            client.ping,
            client.check_credentials,
            lambda: client.get_manifest("a/b", "v1"),
            lambda: client.head_manifest("a/b", "v1"),
            lambda: client.blob_exists("a/b", BLOB),
            lambda: client.start_upload("a/b"),
            lambda: client.upload_status("a/b", f"{server.url}/v2/a/b/blobs/uploads/u"),
            lambda: client.complete_upload("a/b", f"{server.url}/v2/a/b/blobs/uploads/u", BLOB),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"within 0\.3 s"):
                await call()
            assert time.monotonic() - started < 1.0
    assert server.requests == len(calls)


async def test_a_blob_may_take_longer_than_the_deadline(one_second: float) -> None:
    data = b"0123456789"

    async def slow_blob(writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        await trickle(writer, data, 0.15)  # 1.5 s in all, no read waits long

    async with Loopback(slow_blob) as server, DistributionClient(Endpoint(url=server.url)) as client:
        started = time.monotonic()
        async with client.open_blob("a/b", BLOB) as stream:
            received = b"".join([chunk async for chunk in stream.chunks(4)])
        elapsed = time.monotonic() - started

    assert received == data
    assert elapsed > one_second


async def test_a_trickling_error_body_of_a_blob_request_is_cut_at_the_deadline(one_second: float) -> None:
    async with Loopback(chunked_drip(404)) as server, DistributionClient(Endpoint(url=server.url)) as client:
        started = time.monotonic()
        with pytest.raises(NotFoundError):
            async with client.open_blob("a/b", BLOB):
                pass
        elapsed = time.monotonic() - started

    assert one_second <= elapsed < one_second + 1.0


async def test_a_trickling_redirect_body_of_a_blob_request_fails_by_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob GET has no deadline of its own; the redirect httpx follows for it does."""
    monkeypatch.setattr(bounded, "NON_BLOB_DEADLINE_SECONDS", 1.0)
    redirect = chunked_drip(307, headers="Location: /storage/b\r\n")
    async with Loopback(redirect) as server, DistributionClient(Endpoint(url=server.url)) as client:
        started = time.monotonic()
        with pytest.raises(TransportError, match="no complete answer within 1 s") as info:
            async with asyncio.timeout(5), client.open_blob("a/b", BLOB):  # uncapped: forever
                pass
        elapsed = time.monotonic() - started

    assert info.value.transient
    assert 1.0 <= elapsed < 2.0


async def test_a_too_large_manifest_by_content_length_is_refused_before_reading(one_second: float) -> None:
    async def declares_too_much(writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_MANIFEST_BYTES + 1}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(30)  # a client that read on would wait here for the deadline

    async with Loopback(declares_too_much) as server, DistributionClient(Endpoint(url=server.url)) as client:
        started = time.monotonic()
        with pytest.raises(ManifestTooLargeError, match=f"over {MAX_MANIFEST_BYTES} bytes"):
            await client.get_manifest("a/b", "v1")
        assert time.monotonic() - started < one_second / 2


async def test_vendor_api_calls_have_the_deadline(one_second: float) -> None:
    async with Loopback(chunked_drip()) as server:
        api = vendor_api.VendorApi(server.url, Endpoint(url=server.url))
        started = time.monotonic()
        try:
            with pytest.raises(TransportError, match="within 1 s"):
                await api.get("/v1/repositories")
        finally:
            await api.aclose()
        assert time.monotonic() - started < one_second + 1.0

        async with vendor_http.api_client(base_url=server.url) as http:
            started = time.monotonic()
            with pytest.raises(TransportError, match="within 1 s"):
                await vendor_http.call_json(http, "GET", "/token", what="token API")
            assert time.monotonic() - started < one_second + 1.0


async def test_harbor_and_chartmuseum_answers_have_the_deadline(one_second: float,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harbor, "NON_BLOB_DEADLINE_SECONDS", one_second)
    async with Loopback(chunked_drip()) as server:
        api = harbor.HarborApi(Endpoint(url=server.url))
        started = time.monotonic()
        try:
            with pytest.raises(TransportError, match=r"GET .*/api/v2\.0/projects: no complete answer"):
                await api.get_json("/projects")
        finally:
            await api.aclose()
        assert time.monotonic() - started < one_second + 1.0

        async with ChartMuseumClient(Endpoint(url=server.url)) as museum:
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"GET .*/api/charts/web: no complete answer within 1 s"):
                await museum.list_tags("web")
            assert time.monotonic() - started < one_second + 1.0


async def test_a_timeout_error_from_inside_is_not_taken_for_the_deadline() -> None:
    with pytest.raises(TimeoutError):
        async with within(10.0, what="x"):
            raise TimeoutError("from a library")
