"""Reading an HTTP answer that is not a blob: capped while it is read, and finished by a
deadline, so a registry (or anything it redirects to) can neither fill memory nor trickle an
answer forever. Blobs are streamed instead, with per-read timeouts only.

Every non-blob body regflow reads (manifests, catalog and tag pages, token answers, vendor
JSON, error bodies) goes through ``read_capped``; ``within`` puts one deadline over a whole
exchange, from sending the request to the answer's last byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from adapters.errors import ContentError, TransportError

# The longest one non-blob request may take from sending to its last byte. A manifest, a tag
# page or a token is a few KiB to a few MiB: a minute is generous on any link a registry is
# reachable over, and short enough that a stalled answer fails the attempt instead of the run.
NON_BLOB_DEADLINE_SECONDS = 60.0


class AnswerTooLargeError(ContentError):
    """An answer that went over its cap; what was read is dropped."""


async def read_capped(response: httpx.Response, limit: int, *, what: str,
                      truncate: bool = False) -> bytes:
    """The body of a streamed ``response``, decoded, read up to ``limit`` bytes.

    A body over the cap (declared by Content-Length, or met while reading) raises
    ``AnswerTooLargeError`` naming ``what`` before more is read; with ``truncate`` its first
    ``limit`` bytes are returned instead (error bodies, bodies nobody uses). Decoded bytes are
    counted, so a small compressed answer cannot inflate past the cap either."""
    declared = response.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise AnswerTooLargeError(f"{what}: answer of {declared} bytes is over {limit}")
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
