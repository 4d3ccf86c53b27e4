"""HTTP/1.1 to registries reached over plain http, on asyncio's transports, without httpcore.

Measured on the 2-core reference machine, HEADs to a local registry with 8 in flight: the
registry client's whole request cost 0.50 ms of CPU, 0.36 ms of it in httpcore's pool and h11,
where a bare keep-alive exchange costs 0.06 ms; a full copy of the benchmark's medium corpus
makes ~4,100 requests. Registries behind TLS keep httpcore, which also speaks HTTP/2 when the
registry offers it. This speaks what a registry over plain http needs: one request at a time
per connection, keep-alive, Content-Length, chunked and close-delimited bodies, no upgrades.

Errors are httpx's, as the client expects from any transport.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Literal, Self

import httpx

# Status line and headers of one answer; a registry's are well under 2 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Received but not yet read, past which the socket is left to fill (TCP flow control) until
# the reader catches up: a few of the event loop's 256 KiB reads.
MAX_UNREAD_BYTES = 1024 * 1024
# anyio's delay before racing the next address of a host (RFC 8305's recommendation), as
# httpcore's default backend waits.
HAPPY_EYEBALLS_SECONDS = 0.25
# Requests sent again on a new connection when a kept-alive one turns out closed by the
# server before it answered: the same bytes, so only requests whose body is in hand and whose
# method may be repeated.
_REPEATABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

Framing = Literal["none", "length", "chunked", "close"]
Origin = tuple[str, int]


class Http1Pool:
    """Kept-alive connections per origin; at most ``max_connections`` requests at once (each
    holding one connection until its answer is closed) and as many connections open."""

    def __init__(self, max_connections: int, max_idle: int | None, keepalive_expiry: float | None) -> None:
        self._max = max_connections
        self._max_idle = max_connections if max_idle is None else max_idle
        self._expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[tuple[Wire, float]]] = {}
        self._open = 0
        self._closed = False

    async def request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection in time") from None
        try:
            return await self._exchange(request, timeouts)
        except BaseException:
            self._slots.release()
            raise

    async def aclose(self) -> None:
        self._closed = True  # answers still open drop their connection when they close
        for idle in self._idle.values():
            while idle:
                self._drop(idle.pop()[0])

    # -- one exchange ------------------------------------------------------------------------

    async def _exchange(self, request: httpx.Request, timeouts: dict[str, float | None]) -> httpx.Response:
        origin = (request.url.host, request.url.port or 80)
        read_timeout = timeouts.get("read")
        repeatable = request.method in _REPEATABLE_METHODS and isinstance(request.stream, httpx.ByteStream)
        while True:
            wire, reused = await self._connection(origin, timeouts.get("connect"))
            try:
                head = await _send(wire, request, timeouts.get("write"), read_timeout)
                status, reason, version, headers = _parse_head(head)
                while 100 <= status < 200:  # interim answers (102, 103) come before the real one
                    if status == 101:
                        raise httpx.RemoteProtocolError("the registry switched protocols unasked")
                    status, reason, version, headers = _parse_head(await _receive_head(wire, read_timeout))
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                self._drop(wire)
                if reused and repeatable and not wire.answered:
                    continue  # the server had closed it while idle; a new connection will do
                raise
            except BaseException:
                self._drop(wire)
                raise
            framing, length, keep_alive = _framing(request.method, status, version, headers)
            body = _Body(self, wire, origin, framing, length, keep_alive, read_timeout)
            return httpx.Response(status, headers=headers, stream=body,
                                  extensions={"http_version": version, "reason_phrase": reason})

    # -- connections -------------------------------------------------------------------------

    async def _connection(self, origin: Origin, connect_timeout: float | None) -> tuple[Wire, bool]:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            wire, since = idle.pop()  # the most recently used first: the least likely closed
            if wire.usable and (self._expiry is None or now - since < self._expiry):
                wire.answered = False
                return wire, True
            self._drop(wire)
        while self._open >= self._max and self._drop_oldest_idle():
            pass
        wire = await Wire.open(origin[0], origin[1], connect_timeout)
        self._open += 1
        return wire, False

    def _give_back(self, wire: Wire, origin: Origin, reusable: bool) -> None:
        self._slots.release()
        if not (reusable and wire.usable) or self._closed:
            self._drop(wire)
            return
        idle = self._idle.setdefault(origin, deque())
        idle.append((wire, asyncio.get_running_loop().time()))
        if len(idle) > self._max_idle:
            self._drop(idle.popleft()[0])

    def _drop(self, wire: Wire) -> None:
        if not wire.dropped:
            wire.dropped = True
            self._open -= 1
            wire.abort()

    def _drop_oldest_idle(self) -> bool:
        candidates = [(idle[0][1], idle) for idle in self._idle.values() if idle]
        if not candidates:
            return False
        _, idle = min(candidates, key=lambda c: c[0])
        self._drop(idle.popleft()[0])
        return True


async def _send(wire: Wire, request: httpx.Request, write_timeout: float | None,
                read_timeout: float | None) -> bytes:
    """Writes the request and returns the head of the answer."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines.extend(name + b": " + value for name, value in request.headers.raw)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    chunked = b"chunked" in request.headers.get("Transfer-Encoding", "").encode("latin-1").lower()
    stream = request.stream
    try:
        if isinstance(stream, httpx.ByteStream):  # the body is in hand: one write with the head
            body = b"".join([part async for part in stream])
            await wire.send(head + (_chunk(body) + b"0\r\n\r\n" if chunked else body), write_timeout)
        else:
            await wire.send(head, write_timeout)
            assert isinstance(stream, httpx.AsyncByteStream)
            async for part in stream:
                await wire.send(_chunk(part) if chunked else part, write_timeout)
            if chunked:
                await wire.send(b"0\r\n\r\n", write_timeout)
    except httpx.WriteError:
        # A server may answer (an error) and close without reading the whole body: its answer
        # says more than the broken pipe.
        if not wire.answered:
            raise
    return await _receive_head(wire, read_timeout)


async def _receive_head(wire: Wire, seconds: float | None) -> bytes:
    """An answer's status line and headers, without the blank line that ends them."""
    head = b""
    while True:
        data = await wire.receive(seconds)
        if not data:
            raise httpx.RemoteProtocolError(
                "the registry closed the connection " + ("inside an answer's headers" if head else
                                                          "without answering"))
        head += data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            wire.unread(head[end + 4:])
            return head[:end]
        if len(head) > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("an answer's headers over 64 KiB")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _parse_head(head: bytes) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    status_line, *header_lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise httpx.RemoteProtocolError(f"malformed header line: {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    return int(code), reason, version, headers


def _framing(method: str, status: int, version: bytes,
             headers: list[tuple[bytes, bytes]]) -> tuple[Framing, int, bool]:
    """How the answer's body ends (RFC 9112 section 6.3), its length, and whether the
    connection can carry another request after it."""
    lengths: set[bytes] = set()
    codings = b""
    connection = b""
    for name, value in headers:
        key = name.lower()
        if key == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif key == b"transfer-encoding":
            codings += b"," + value.lower()
        elif key == b"connection":
            connection += b"," + value.lower()
    tokens = {t.strip() for t in connection.split(b",")}
    keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
    if method == "HEAD" or status in (204, 304):
        return "none", 0, keep_alive
    if codings:
        if codings.rsplit(b",", 1)[-1].strip() == b"chunked":
            return "chunked", 0, keep_alive
        return "close", 0, False
    if lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise httpx.RemoteProtocolError(f"unusable Content-Length: {sorted(lengths)!r}")
        length = int(next(iter(lengths)))
        return ("length" if length else "none"), length, keep_alive
    return "close", 0, False


class _Body(httpx.AsyncByteStream):
    """An answer's body as it arrives; closing it hands the connection back (kept alive only
    when the body was read to its end)."""

    def __init__(self, pool: Http1Pool, wire: Wire, origin: Origin, framing: Framing, length: int,
                 keep_alive: bool, read_timeout: float | None) -> None:
        self._pool = pool
        self._wire = wire
        self._origin = origin
        self._framing = framing
        self._length = length
        self._keep_alive = keep_alive
        self._timeout = read_timeout
        self._complete = framing == "none"
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._complete:
            return
        if self._framing == "length":
            pieces = self._sized()
        elif self._framing == "chunked":
            pieces = self._chunked()
        else:
            pieces = self._until_close()
        async for piece in pieces:
            yield piece
        self._complete = True

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._give_back(self._wire, self._origin, self._complete and self._keep_alive)

    async def _sized(self) -> AsyncIterator[bytes]:
        remaining = self._length
        while remaining > 0:
            data = await self._wire.receive(self._timeout)
            if not data:
                raise httpx.RemoteProtocolError(
                    f"the registry closed the connection {self._length - remaining} bytes into a "
                    f"body of {self._length}")
            if len(data) > remaining:  # bytes past the body: the server broke the protocol
                self._keep_alive = False
                data = data[:remaining]
            remaining -= len(data)
            yield data

    async def _until_close(self) -> AsyncIterator[bytes]:
        while data := await self._wire.receive(self._timeout):
            yield data

    async def _chunked(self) -> AsyncIterator[bytes]:
        buffer = b""
        while True:
            line, buffer = await self._line(buffer)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad chunk size line: {line[:40]!r}") from None
            if size == 0:
                while True:  # trailers, up to the blank line that ends the message
                    line, buffer = await self._line(buffer)
                    if not line:
                        break
                if buffer:
                    self._keep_alive = False
                return
            while size > 0:
                if not buffer:
                    buffer = await self._more()
                piece, buffer = buffer[:size], buffer[size:]
                size -= len(piece)
                yield piece
            end, buffer = await self._line(buffer)
            if end:
                raise httpx.RemoteProtocolError("a chunk longer than its size line said")

    async def _line(self, buffer: bytes) -> tuple[bytes, bytes]:
        while (end := buffer.find(b"\r\n")) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("a chunked-body line over 64 KiB")
            buffer += await self._more()
        return buffer[:end], buffer[end + 2:]

    async def _more(self) -> bytes:
        data = await self._wire.receive(self._timeout)
        if not data:
            raise httpx.RemoteProtocolError("the registry closed the connection inside a chunked body")
        return data


class Wire(asyncio.Protocol):
    """One connection on an asyncio transport. The event loop reads the socket as bytes arrive
    and they wait here to be received; a receive or a send arms a timer only when it has to
    wait. (anyio, httpcore's default, arms a cancel scope's timer per read and write, and
    pauses the socket after every read and resumes it before the next: two epoll calls.)
    Errors are the class's own: httpx's here, httpcore's for the TLS connections in client.py."""

    connect_error: type[Exception] = httpx.ConnectError
    connect_timeout: type[Exception] = httpx.ConnectTimeout
    read_error: type[Exception] = httpx.ReadError
    read_timeout: type[Exception] = httpx.ReadTimeout
    write_error: type[Exception] = httpx.WriteError
    write_timeout: type[Exception] = httpx.WriteTimeout

    @classmethod
    async def open(cls, host: str, port: int, seconds: float | None,
                   local_address: str | None = None) -> Self:
        """A connection to ``host``, its addresses raced as anyio races them (Happy Eyeballs)."""
        loop = asyncio.get_running_loop()
        with cls.connecting(f"no connection to {host}:{port} in time"):
            async with asyncio.timeout(seconds):
                _, wire = await loop.create_connection(
                    cls, host, port, local_addr=(local_address, 0) if local_address else None,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_SECONDS)
        return wire

    @classmethod
    @contextmanager
    def connecting(cls, too_slow: str) -> Iterator[None]:
        """A timeout or OS error while connecting (or starting TLS), as this class's errors."""
        try:
            yield
        except TimeoutError as exc:
            raise cls.connect_timeout(str(exc) or too_slow) from exc
        except OSError as exc:  # ssl.SSLError included: a refused certificate names itself
            raise cls.connect_error(str(exc)) from exc

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._unread: deque[bytes] = deque()
        self._unread_bytes = 0
        self._reading_paused = False
        self._eof = False
        self._lost = False
        self._lost_error: BaseException | None = None
        self._closed = False  # by us
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # while the kernel's buffer is full
        self.answered = False  # received anything since the current request went out
        self.dropped = False  # by its pool

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attach(transport)

    def data_received(self, data: bytes) -> None:
        if type(data) is not bytes:  # as anyio: some event loops hand over a bytearray
            data = bytes(data)
        self.answered = True
        self._unread.append(data)
        self._unread_bytes += len(data)
        if self._unread_bytes > MAX_UNREAD_BYTES and not self._reading_paused and self._transport:
            self._transport.pause_reading()
            self._reading_paused = True
        _wake(self._readable)

    def eof_received(self) -> None:
        self._eof = True  # returning None lets asyncio close the transport
        _wake(self._readable)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._lost_error = True, exc
        _wake(self._readable)
        _wake(self._writable)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        _wake(self._writable)
        self._writable = None

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # As anyio: a write is done when the kernel holds all of it, not while asyncio buffers it.
        # asyncio's TLS transport pauses at a high-water mark of 0 even with nothing buffered and
        # then never resumes: 1 byte is its equivalent.
        tls = transport.get_extra_info("ssl_object") is not None
        transport.set_write_buffer_limits(high=1 if tls else 0)

    # -- reading and writing ------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Idle and fit for a request: nothing unread, not closed by either side."""
        return not (self._unread or self._eof or self._lost or self._closed or self.dropped)

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    async def send(self, data: bytes, seconds: float | None) -> None:
        if not data:
            return
        self._check_writable()
        assert self._transport is not None
        self._transport.write(data)
        if self._writable is not None:  # the kernel took part of it; the rest waits in asyncio
            await _wait(self._writable, seconds, self.write_timeout)
            self._check_writable()

    def _check_writable(self) -> None:
        if self._closed:
            raise self.write_error("connection closed")
        if self._lost_error is not None:
            raise self.write_error(str(self._lost_error)) from self._lost_error
        if self._lost:
            raise self.write_error("the peer closed the connection")

    async def receive(self, seconds: float | None) -> bytes:
        """What has arrived (waiting for some if nothing has); b"" once the peer closed."""
        while not self._unread:
            if self._closed:
                raise self.read_error("connection closed")
            if self._lost_error is not None:
                raise self.read_error(str(self._lost_error)) from self._lost_error
            if self._eof or self._lost:
                return b""
            self._readable = self._loop.create_future()
            try:
                await _wait(self._readable, seconds, self.read_timeout)
            finally:
                self._readable = None
        data = self._unread.popleft()
        self._unread_bytes -= len(data)
        if self._reading_paused and not self._unread and self._transport is not None:
            self._transport.resume_reading()
            self._reading_paused = False
        return data

    def unread(self, data: bytes) -> None:
        """Hand back the part of a receive that belongs to what comes next."""
        if data:
            self._unread.appendleft(data)
            self._unread_bytes += len(data)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


async def _wait(waiter: asyncio.Future[None], seconds: float | None,
                timeout_error: type[Exception]) -> None:
    if seconds is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(seconds, _expire, waiter)
    try:
        await waiter
    except TimeoutError:
        raise timeout_error(f"no progress for {seconds} s") from None
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
