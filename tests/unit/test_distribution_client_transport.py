"""How the distribution client uses httpx's transport: connections kept and replaced, per-read
timeouts, the pool's size, proxies from the environment, shared TLS contexts, cookies and blob
chunks. The transport tests talk to a small HTTP/1.1 server in the test's own event loop on
loopback."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from adapters.distribution import client as client_module
from adapters.distribution.client import DistributionClient, tls_verify
from adapters.endpoint import Endpoint
from adapters.errors import NotFoundError, TransportError
from adapters.oci import Digest
from tests.support.registry import make_tls_files

BLOB = Digest.of(b"0123456789")


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    read_delay: float = 0.0  # seconds before reading the request body
    close: bool = False  # close the connection after answering, without saying so
    read_body: bool = True  # False: never read the request body


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body_sha256: str


class LoopbackServer:
    """HTTP/1.1 with keep-alive, answering each request from a function; counts connections."""

    def __init__(self, answer: Callable[[str, str], Answer]) -> None:
        self.answer = answer
        self.connections = 0
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method, target, _ = head.split("\r\n")[0].split(" ")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.split("\r\n")[1:] if line)}
        answer = self.answer(method, target)
        digest = hashlib.sha256()
        await asyncio.sleep(answer.read_delay)
        if answer.read_body:
            left = int(headers.get("content-length", "0"))
            while left:
                piece = await reader.read(min(left, 1 << 20))
                if not piece:
                    return False
                digest.update(piece)
                left -= len(piece)
        self.seen.append(Seen(method, target, headers, digest.hexdigest()))
        await asyncio.sleep(answer.delay)
        headers = {"Content-Length": str(len(answer.body)), **answer.headers}  # a HEAD's may differ
        lines = [f"HTTP/1.1 {answer.status} X", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if method != "HEAD":
            writer.write(answer.body)
        await writer.drain()
        return not answer.close


def client_for(server: LoopbackServer) -> DistributionClient:
    return DistributionClient(Endpoint(url=server.url))


# -- the transport ----------------------------------------------------------------------------


async def test_answers_and_404s_of_heads_keep_one_connection() -> None:
    def answer(method: str, target: str) -> Answer:
        if method == "HEAD" and target.endswith(str(BLOB)):
            return Answer(200, headers={"Content-Length": "10"})
        return Answer(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')

    async with LoopbackServer(answer) as server, client_for(server) as client:
        for _ in range(3):
            assert await client.blob_exists("a/b", BLOB) is not None
            assert await client.blob_exists("a/b", Digest.of(b"other")) is None
            with pytest.raises(NotFoundError):
                await client.list_tags("a/b")

    # A HEAD's error is read to its (empty) end, so its connection goes back to the pool.
    assert server.connections == 1
    assert len(server.seen) == 9


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with LoopbackServer(lambda method, target: Answer(200, b"[]", close=True)) as server:
        async with client_for(server) as client:
            for _ in range(3):
                await client.check_credentials()
                await asyncio.sleep(0.05)  # the close reaches the client before the next request

    assert server.connections == 3


async def test_a_stalled_answer_is_a_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "READ_TIMEOUT_SECONDS", 0.2)
    async with LoopbackServer(lambda method, target: Answer(200, delay=5.0)) as server:
        async with client_for(server) as client:
            with pytest.raises(TransportError, match="ReadTimeout") as info:
                await client.check_credentials()
    assert info.value.transient


async def test_a_body_the_server_does_not_read_is_a_write_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "READ_TIMEOUT_SECONDS", 0.3)
    size = 64 * 1024 * 1024  # well past what loopback sockets buffer
    async with LoopbackServer(lambda method, target: Answer(201, read_body=False, delay=5.0)) as server:
        async with client_for(server) as client:
            with pytest.raises(TransportError, match="WriteTimeout"):
                await client.put_blob("a/b", f"{server.url}/v2/a/b/blobs/uploads/u", BLOB, size,
                                      body_of(size))


async def test_a_large_streamed_upload_arrives_whole() -> None:
    size = 24 * 1024 * 1024 + 5
    expected = hashlib.sha256(b"".join([piece async for piece in body_of(size)])).hexdigest()
    # The server reads late, so the kernel's buffers fill and the writes must wait for room.
    async with LoopbackServer(lambda method, target: Answer(201, read_delay=0.3)) as server:
        async with client_for(server) as client:
            await client.put_blob("a/b", f"{server.url}/v2/a/b/blobs/uploads/u", BLOB, size, body_of(size))

    [put] = server.seen
    assert put.method == "PUT" and put.headers["content-length"] == str(size)
    assert put.body_sha256 == expected


async def test_concurrent_requests_share_at_most_the_pool_s_connections() -> None:
    async with LoopbackServer(lambda method, target: Answer(200, headers={"Content-Length": "10"},
                                                            delay=0.05)) as server:
        async with client_for(server) as client:
            sizes = await asyncio.gather(*(client.blob_exists("a/b", BLOB) for _ in range(40)))
            again = await asyncio.gather(*(client.blob_exists("a/b", BLOB) for _ in range(40)))

    assert sizes == again == [10] * 40
    # As many connections as requests may run at once, each kept for the next ones.
    assert server.connections == client_module.MAX_CONNECTIONS_PER_HOST


async def body_of(size: int, piece: int = 1024 * 1024) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (piece // 256)
    while size > 0:
        yield block[:size]
        size -= len(block[:size])


# -- TLS contexts -----------------------------------------------------------------------------


def test_tls_contexts_are_shared_by_endpoints_that_trust_the_same() -> None:
    verified = tls_verify(Endpoint(url="https://a.example"))
    assert verified is tls_verify(Endpoint(url="https://b.example"))
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname

    insecure = tls_verify(Endpoint(url="https://a.example", insecure=True))
    assert insecure is not verified
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert insecure is tls_verify(Endpoint(url="https://c.example", insecure=True))


def test_a_ca_bundle_gets_a_context_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = make_tls_files(tmp_path).ca_path.read_text()
    with_ca = tls_verify(Endpoint(url="https://a.example", ca_certificate=pem))
    assert with_ca is not tls_verify(Endpoint(url="https://a.example"))
    assert with_ca is tls_verify(Endpoint(url="https://b.example", ca_certificate=pem, insecure=True))
    assert with_ca.verify_mode == ssl.CERT_REQUIRED
    assert with_ca.cert_store_stats()["x509_ca"] == 1

    # httpx's system trust follows SSL_CERT_FILE; a context built before it was set is not reused.
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(make_tls_files(tmp_path / "other").ca_path))
    from_env = tls_verify(Endpoint(url="https://a.example"))
    assert from_env.cert_store_stats()["x509_ca"] == 1
    monkeypatch.delenv("SSL_CERT_FILE")
    assert tls_verify(Endpoint(url="https://a.example")) is not from_env


# -- cookies and blob chunks ------------------------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> DistributionClient:
    return DistributionClient(Endpoint(url="http://reg.example"), transport=httpx.MockTransport(handler))


async def test_cookies_a_registry_sets_are_still_sent_back() -> None:
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("Cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "route=r1; Path=/"} if len(sent) == 2 else {})

    async with mock_client(handler) as client:
        for _ in range(3):
            await client.check_credentials()

    assert sent == [None, None, "route=r1"]


@pytest.mark.parametrize(("pieces", "piece_size", "chunk_size"),
                         [(100, 1000, 4096), (3, 10, 5), (1, 10, 100)])
async def test_blob_chunks_gather_reads_up_to_the_chunk_size(pieces: int, piece_size: int,
                                                            chunk_size: int) -> None:
    data = bytes(i % 251 for i in range(pieces * piece_size))

    class Pieces(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i in range(0, len(data), piece_size):
                yield data[i:i + piece_size]

    async with mock_client(lambda request: httpx.Response(200, stream=Pieces())) as client:
        async with client.open_blob("a/b", BLOB) as stream:
            chunks = [chunk async for chunk in stream.chunks(chunk_size)]

    assert b"".join(chunks) == data
    assert all(len(c) >= chunk_size for c in chunks[:-1])
    assert all(len(c) < chunk_size + piece_size for c in chunks)


async def test_a_refused_connection_is_a_transient_transport_error() -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()  # nothing listens there now: refused

    async with DistributionClient(Endpoint(url=f"http://127.0.0.1:{port}")) as client:
        with pytest.raises(TransportError, match="ConnectError") as info:
            await client.list_tags("a/b")
    assert info.value.transient


async def test_a_proxy_from_the_environment_carries_registry_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx mounts a proxy transport for HTTP_PROXY (trust_env): a plain-http registry's
    requests reach the proxy in absolute form, nothing goes to the registry's own address."""
    async with LoopbackServer(lambda method, target: Answer(200, b'{"tags": ["1"]}')) as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with DistributionClient(Endpoint(url="http://registry.invalid:5000")) as client:
            assert await client.list_tags("a/b") == ["1"]

    [seen] = proxy.seen
    assert seen.target == "http://registry.invalid:5000/v2/a/b/tags/list"
