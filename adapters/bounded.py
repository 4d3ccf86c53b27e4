"""Reading an HTTP answer that is not a blob: capped while it is read, and finished by a
deadline, so a registry (or anything it redirects to) can neither fill memory nor trickle an
answer forever. Blobs are streamed instead, with per-read timeouts only.

Every non-blob body regflow reads (manifests, catalog and tag pages, token answers, vendor
JSON, error bodies) goes through ``read_capped``; ``within`` puts one deadline over a whole
exchange, from sending the request to the answer's last byte. The bodies httpx reads by itself
inside ``send`` (a redirect it follows, a 401 before an auth flow's retry) are cut short by
``cap_bodies_httpx_reads``, an event hook, since no caller ever holds those answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from adapters.errors import AnswerTooLargeError, TransportError

# The longest one non-blob request may take from sending to its last byte. A manifest, a tag
# page or a token is a few KiB to a few MiB: a minute is generous on any link a registry is
# reachable over, and short enough that a stalled answer fails the attempt instead of the run.
NON_BLOB_DEADLINE_SECONDS = 60.0
# The most httpx may read of an answer it passes over by itself: a redirect's body (distribution
# and object stores send a line of HTML or nothing) or a 401's (a JSON error). Within it the
# connection is read to its end and serves the next request; past it the body is cut off with
# its connection.
MAX_PASSED_OVER_BODY_BYTES = 64 * 1024


async def read_capped(response: httpx.Response, limit: int, *, what: str,
                      truncate: bool = False) -> bytes:
    """The body of a streamed ``response``, decoded, read up to ``limit`` bytes.

    A body over the cap (declared by Content-Length, or met while reading) raises
    ``AnswerTooLargeError`` naming ``what`` before more is read; with ``truncate`` its first
    ``limit`` bytes are returned instead (error bodies, bodies nobody uses). Decoded bytes are
    counted, so a small compressed answer cannot inflate past the cap either."""
    declared = response.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise AnswerTooLargeError(f"{what}: answer of {declared} bytes is over {limit} bytes")
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            if truncate:
                del buf[limit:]
                break
            raise AnswerTooLargeError(f"{what}: answer over {limit} bytes")
    return bytes(buf)


@asynccontextmanager
async def within(deadline: float | None = NON_BLOB_DEADLINE_SECONDS, *,
                 what: str) -> AsyncIterator[None]:
    """Everything inside finishes within ``deadline`` seconds (None: no deadline), or fails as
    a transient ``TransportError`` naming ``what`` (httpx closes the connection it cut off)."""
    timer = asyncio.timeout(deadline)
    try:
        async with timer:
            yield
    except TimeoutError:
        if not timer.expired():
            raise
        raise TransportError(f"{what}: no complete answer within {deadline:g} s") from None


async def read_capped_until(response: httpx.Response, limit: int, *, what: str,
                            deadline: float = NON_BLOB_DEADLINE_SECONDS,
                            truncate: bool = False) -> bytes:
    """``read_capped`` that also fails (as transient) once ``deadline`` seconds have passed.
    Prefer ``within`` around the request and the read together, so sending counts too."""
    async with within(deadline, what=what):
        return await read_capped(response, limit, what=what, truncate=truncate)


async def cap_bodies_httpx_reads(response: httpx.Response) -> None:
    """A response event hook (``event_hooks={"response": [cap_bodies_httpx_reads]}``) for
    clients that follow redirects or whose auth retries a 401: httpx reads those answers' bodies
    whole inside ``send``, before any caller could cap them. Their stream is replaced by one
    that ends after MAX_PASSED_OVER_BODY_BYTES and fails (transient) after
    NON_BLOB_DEADLINE_SECONDS, so neither a padded nor a trickling body holds the request.

    Cut short rather than refused: the body is never used (the redirect's target and the
    retried request's answer are what count), so a server that pads it should not fail a
    request that works; memory and time stay bounded either way. A 401 that ends up returned
    to the caller is read by its own capped error reader all the same."""
    if response.status_code == 401 or response.has_redirect_location:
        what = f"{response.request.method} {response.url.host}{response.url.path}"
        response.stream = _PassedOverBody(response.stream, MAX_PASSED_OVER_BODY_BYTES,
                                          NON_BLOB_DEADLINE_SECONDS, what=what)


class _PassedOverBody(httpx.AsyncByteStream):
    """A response body that ends after ``limit`` bytes and fails after ``deadline`` seconds."""

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, limit: int,
                 deadline: float, *, what: str) -> None:
        if not isinstance(inner, httpx.AsyncByteStream):
            raise RuntimeError("cap_bodies_httpx_reads is an event hook of httpx.AsyncClient only")
        self._inner = inner
        self._limit = limit
        self._deadline = deadline
        self._ends_at = asyncio.get_running_loop().time() + deadline  # from the answer's head
        self._what = what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pieces = self._inner.__aiter__()
        taken = 0
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._ends_at) as timer:
                        piece = await anext(pieces)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not timer.expired():
                        raise
                    raise TransportError(f"{self._what}: no complete answer within "
                                         f"{self._deadline:g} s") from None
                taken += len(piece)
                if taken > self._limit:
                    # Unread to its end, the connection is closed, not handed to the next request.
                    yield piece[:len(piece) - (taken - self._limit)]
                    return
                yield piece
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()

    async def aclose(self) -> None:
        await self._inner.aclose()
