"""Connections to a plain-http registry as lanes: one httpx transport of one connection each,
and a request waits for a free lane instead of queueing inside a shared pool.

Why: httpcore 1.0's pool hands an idle HTTP/1.1 connection to every request that queues before
the first of them starts on it; all but one then fail over (``ConnectionNotAvailable``) and
queue again (encode/httpcore#822, #1035; fixed in httpx2's pool, not in httpx). With a copy's
16 requests in flight that is about three extra passes per request, and the pool's CPU grew
several times over (docs/performance.md). A pool that never holds more than one request cannot
hand its connection twice. Everything below is httpx's public transport API: no framing, no
sockets of ours. TLS registries keep httpx's own pool: HTTP/2 carries every request on one
connection, where the pool has nothing to hand out twice.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import httpx


class ConnectionLanes(httpx.AsyncBaseTransport):
    """``count`` one-connection transports; each request takes a free one for as long as its
    answer is open. ``proxy``: the proxy every lane goes through (None: direct)."""

    def __init__(self, count: int, *, keepalive_expiry: float, proxy: str | None = None,
                 **transport: Any) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                              keepalive_expiry=keepalive_expiry)
        self._lanes = [httpx.AsyncHTTPTransport(limits=limits, proxy=proxy, **transport)
                       for _ in range(count)]
        self._free: asyncio.LifoQueue[httpx.AsyncHTTPTransport] = asyncio.LifoQueue()
        for lane in reversed(self._lanes):  # LIFO: the connection used last is warm
            self._free.put_nowait(lane)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane = await self._free.get()
        try:
            response = await lane.handle_async_request(request)
        except BaseException:
            self._free.put_nowait(lane)
            raise
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_LaneStream(response, lambda: self._free.put_nowait(lane)),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.aclose()


class _LaneStream(httpx.AsyncByteStream):
    """The answer's body; closing it (read to the end or not) gives the lane back, once."""

    def __init__(self, response: httpx.Response, release: Callable[[], None]) -> None:
        self._response = response
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, AsyncIterable)
        async for chunk in stream:
            yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None
        try:
            await self._response.aclose()
        finally:
            if release is not None:
                release()


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTP_PROXY / ALL_PROXY, NO_PROXY honoured),
    as httpx would use it without lanes."""
    if not url.startswith("http://"):
        return None
    host = httpx.URL(url).host
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get("http") or proxies.get("all")
