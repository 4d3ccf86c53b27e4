"""regflow's HTTP/1.1 connections to plain-http registries (adapters/distribution/http1.py),
against a scripted server in the test's own event loop on loopback: each connection answers
its requests with the exact bytes a test gives, so framing and misbehaviour are under control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from adapters.distribution.http1 import Http1Pool

# One connection's script: for each request it reads, the bytes to answer (None: close
# without answering; ending in CLOSE: close once they are sent). Gets the connection's number
# and the request's head and body.
Script = Callable[[int, bytes, bytes], bytes | None]
CLOSE = b"<close>"


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                if b"transfer-encoding: chunked" in head.lower():
                    body = await reader.readuntil(b"0\r\n\r\n")
                self.requests.append((number, head, body))
                answer = self.script(number, head, body)
                if answer is None:
                    break
                writer.write(answer.removesuffix(CLOSE))
                await writer.drain()
                if answer.endswith(CLOSE):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[ScriptedServer, httpx.AsyncClient]]:
    server = ScriptedServer(script)
    server._server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    transport = _Transport(Http1Pool(4, 4, 5.0))
    try:
        async with httpx.AsyncClient(transport=transport, timeout=2.0) as client:
            yield server, client
    finally:
        server._server.close()


class _Transport(httpx.AsyncBaseTransport):
    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.pool.request(request)

    async def aclose(self) -> None:
        await self.pool.aclose()


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), b"".join(h + b"\r\n" for h in extra), body)


async def test_kept_alive_answers_share_one_connection_and_bodies_arrive_whole() -> None:
    def script(n: int, head: bytes, body: bytes) -> bytes:
        return ok(b"x" * 300_000 if b"/big" in head else b"{}")

    async with serving(script) as (server, client):
        for path in ("/a", "/big", "/c"):
            response = await client.get(server.url + path)
            assert response.status_code == 200
        assert len(response.content) == 2
        assert len((await client.get(server.url + "/big")).content) == 300_000
    assert server.connections == 1
    assert [r[1].split(b" ")[1] for r in server.requests] == [b"/a", b"/big", b"/c", b"/big"]


async def test_a_chunked_answer_with_trailers_is_decoded_and_the_connection_kept() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")
    async with serving(lambda n, head, body: chunked if b"/c " in head else ok(b"after")) as (server, client):
        assert (await client.get(server.url + "/c")).content == b"hello world"
        assert (await client.get(server.url + "/d")).content == b"after"
    assert server.connections == 1


async def test_a_body_ended_by_close_is_read_to_the_end_and_not_reused() -> None:
    def script(n: int, head: bytes, body: bytes) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\n\r\nuntil close" + CLOSE if n == 1 else ok(b"second")

    async with serving(script) as (server, client):
        assert (await client.get(server.url + "/a")).content == b"until close"
        assert (await client.get(server.url + "/b")).content == b"second"
    assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    async with serving(lambda n, head, body: ok(b"bye", b"Connection: close")) as (server, client):
        for _ in range(3):
            assert (await client.get(server.url + "/a")).content == b"bye"
    assert server.connections == 3


async def test_a_kept_alive_connection_closed_without_answering_is_retried_once_on_a_new_one() -> None:
    def script(n: int, head: bytes, body: bytes) -> bytes | None:
        # The first connection answers one request, then drops the next one unanswered (as a
        # server does when its idle timeout and our request cross).
        if n == 1 and len([r for r in server_requests() if r[0] == 1]) > 1:
            return None
        return ok(b"fine")

    async with serving(script) as (server, client):
        def server_requests() -> list[tuple[int, bytes, bytes]]:
            return server.requests

        assert (await client.get(server.url + "/a")).content == b"fine"
        assert (await client.put(server.url + "/b", content=b"same bytes")).content == b"fine"
    assert server.connections == 2
    assert [r[2] for r in server.requests] == [b"", b"same bytes", b"same bytes"]


async def test_a_post_is_never_sent_twice() -> None:
    calls = []

    def script(n: int, head: bytes, body: bytes) -> bytes | None:
        calls.append(head.split(b" ")[0])
        return ok(b"fine") if len(calls) == 1 else None

    async with serving(script) as (server, client):
        assert (await client.get(server.url + "/a")).content == b"fine"
        with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
            await client.post(server.url + "/uploads/", content=b"")
    assert calls == [b"GET", b"POST"]


async def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"real")
    async with serving(lambda n, head, body: answer) as (server, client):
        response = await client.get(server.url + "/a")
    assert (response.status_code, response.content) == (200, b"real")


@pytest.mark.parametrize(("answer", "message"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "5 bytes into a body of 10"),
    (b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n", "malformed header"),
    (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "unusable Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "over 64 KiB"),
])
async def test_a_broken_answer_is_a_protocol_error(answer: bytes, message: str) -> None:
    async with serving(lambda n, head, body: answer + CLOSE) as (server, client):
        with pytest.raises(httpx.RemoteProtocolError, match=message):
            await client.get(server.url + "/a")


async def test_head_and_204_answers_have_no_body_whatever_their_length_says() -> None:
    def script(n: int, head: bytes, body: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    async with serving(script) as (server, client):
        head = await client.head(server.url + "/a")
        deleted = await client.delete(server.url + "/b")
        again = await client.head(server.url + "/c")
    assert (head.headers["content-length"], head.content, deleted.status_code, again.status_code) == \
        ("1234", b"", 204, 200)
    assert server.connections == 1


async def test_a_streamed_chunked_upload_is_framed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"abc", b"", b"defgh"):
            yield piece

    async with serving(lambda n, head, body: ok(b"stored")) as (server, client):
        response = await client.put(server.url + "/u", content=pieces())
    assert response.content == b"stored"
    [(_, head, body)] = server.requests
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"


async def test_at_most_the_pool_size_of_connections_at_once() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    in_flight = 0
    most = 0

    async def slow(client: httpx.AsyncClient, url: str) -> int:
        nonlocal in_flight, most
        async with client.stream("GET", url) as response:
            in_flight += 1
            most = max(most, in_flight)
            started.set()
            await release.wait()
            in_flight -= 1
            await response.aread()
            return response.status_code

    async with serving(lambda n, head, body: ok(b"x")) as (server, client):
        jobs = [asyncio.create_task(slow(client, server.url + f"/{i}")) for i in range(10)]
        await started.wait()
        await asyncio.sleep(0.1)
        release.set()
        assert await asyncio.gather(*jobs) == [200] * 10
    assert most == 4
    assert server.connections == 4
