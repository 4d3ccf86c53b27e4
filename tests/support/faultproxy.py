"""A loopback HTTP/1.1 reverse proxy that the tests own, put in front of a real registry to
script faults per request.

It forwards bytes as they come (request and response bodies are never buffered whole) and
changes nothing but three headers: ``Host`` goes to the upstream as the upstream's own
``host:port`` (as a reverse proxy's default), ``Connection`` is hop-by-hop (each request gets its
own upstream connection; the client's connection is kept alive), and a ``Location`` pointing at
the upstream is rewritten to point at the proxy, so a client keeps going through the proxy for
the upload sessions the registry hands out.

Rules are matched on method, a regex fullmatched on the path (``query``: a regex searched in the
query string), and the n-th matching request (1-based; ``nth=None`` for every one). Every rule
counts its matches; the firing rules' delays add up, then the first other action wins::

    proxy = FaultProxy(registry).start()                  # anything with .host, or "127.0.0.1:PORT"
    proxy.rule("GET", r"/v2/app/blobs/sha256:.*", drop_after(fraction=0.5))   # cut the response
    proxy.rule("PATCH", r"/v2/app/blobs/uploads/.*", drop_after(1 << 20, side="request"), nth=3)
    proxy.rule("POST", r"/v2/app/blobs/uploads/", respond(429, {"Retry-After": "2"}))
    proxy.rule("PUT", r"/v2/app/blobs/uploads/.*", respond(503), nth=(1, 2))
    proxy.rule("HEAD", r".*", delay(0.5), nth=None)
    ... use proxy.url / proxy.host instead of the registry's ...
    proxy.requests("PATCH", r"/v2/app/blobs/uploads/.*")   # what was seen, in arrival order
    proxy.close()

Dropping closes both connections at once (the peers see a reset): ``side="request"`` after that
many bytes of the request body went upstream, ``side="response"`` after that many bytes of the
response body went to the client. ``respond`` reads the request body (counted, not forwarded)
and answers without touching the upstream. When the upstream cannot be reached, the client's
connection is closed without an answer, as the registry's own port would.

Each :class:`ProxiedRequest` records the method, target, arrival time (``time.monotonic()``, the
clock asyncio uses too), request body bytes received and forwarded (updated live, so a test can
poll a transfer in flight), the status sent back and what the proxy did. The proxy runs its own
event loop in a daemon thread; it listens on ``127.0.0.1`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

# Bytes read from a socket at a time; flow control keeps at most a few of these in flight.
READ_CHUNK = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
CONNECT_TIMEOUT_SECONDS = 5.0
# Idle keep-alive connections from the client are closed after this long.
IDLE_TIMEOUT_SECONDS = 120.0
_BODYLESS_STATUSES = (204, 304)


class _HasHost(Protocol):
    @property
    def host(self) -> str: ...


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropAfter:
    """Close both connections once ``n_bytes`` (or ``fraction`` of the declared Content-Length)
    of the ``side``'s body have been passed on."""

    n_bytes: int | None = None
    fraction: float | None = None
    side: Literal["request", "response"] = "response"

    def limit(self, content_length: int | None) -> int:
        if self.n_bytes is not None:
            return self.n_bytes
        assert self.fraction is not None
        return int((content_length or 0) * self.fraction)

    def __str__(self) -> str:
        amount = f"{self.n_bytes} bytes" if self.n_bytes is not None else f"{self.fraction:.0%}"
        return f"drop {self.side} after {amount}"


@dataclass(frozen=True)
class Delay:
    """Wait before forwarding the request."""

    seconds: float

    def __str__(self) -> str:
        return f"delay {self.seconds}s"


@dataclass(frozen=True)
class Respond:
    """Answer without forwarding."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def __str__(self) -> str:
        return f"respond {self.status}"


Action = DropAfter | Delay | Respond


def drop_after(n_bytes: int | None = None, *, fraction: float | None = None,
               side: Literal["request", "response"] = "response") -> DropAfter:
    """Cut the request body going upstream (``side="request"``) or the response body coming
    back (``side="response"``) after ``n_bytes``, or after ``fraction`` of its Content-Length."""
    if (n_bytes is None) == (fraction is None):
        raise ValueError("give exactly one of n_bytes and fraction")
    if side not in ("request", "response"):
        raise ValueError(f"side must be 'request' or 'response', not {side!r}")
    return DropAfter(n_bytes, fraction, side)


def delay(seconds: float) -> Delay:
    return Delay(seconds)


def respond(status: int, headers: Mapping[str, str] | None = None, body: bytes | str = b"") -> Respond:
    data = body.encode() if isinstance(body, str) else body
    return Respond(status, tuple((headers or {}).items()), data)


def distribution_error(code: str, message: str) -> bytes:
    """A body in distribution's error format, for :func:`respond`."""
    return ('{"errors":[{"code":"%s","message":"%s"}]}' % (code, message)).encode()  # noqa: UP031


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    action: Action
    nth: frozenset[int] | None  # 1-based occurrences that fire; None = every one
    query: re.Pattern[str] | None = None
    matched: int = 0  # requests that matched method/path/query so far
    fired: int = 0

    def _matches(self, method: str, path: str, query: str) -> bool:
        return (self.method in ("*", method) and self.path.fullmatch(path) is not None
                and (self.query is None or self.query.search(query) is not None))

    def consider(self, method: str, path: str, query: str) -> bool:
        """Count the request if it matches; True when this occurrence fires the action."""
        if not self._matches(method, path, query):
            return False
        self.matched += 1
        if self.nth is None or self.matched in self.nth:
            self.fired += 1
            return True
        return False


# -- records ------------------------------------------------------------------------------------


@dataclass
class ProxiedRequest:
    method: str
    target: str  # path and query, as the client sent it
    time: float  # time.monotonic() when the request head arrived
    wall: float  # time.time() at the same moment
    content_length: int | None
    request_headers: tuple[tuple[str, str], ...] = ()  # as the client sent them
    response_headers: tuple[tuple[str, str], ...] = ()  # as the client got them
    actions: tuple[str, ...] = ()
    body_received: int = 0  # request body bytes read from the client
    body_forwarded: int = 0  # request body bytes written to the upstream
    status: int | None = None  # status sent back to the client (None: no answer)
    response_bytes: int = 0  # response body bytes written to the client
    finished: float | None = None
    error: str = ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def request_header(self, name: str) -> str | None:
        return next((v for k, v in self.request_headers if k.lower() == name.lower()), None)

    def response_header(self, name: str) -> str | None:
        return next((v for k, v in self.response_headers if k.lower() == name.lower()), None)


class _Dropped(Exception):
    """A scripted drop happened: close both connections."""


class _NoUpstream(Exception):
    """The upstream could not be reached: close the client's connection without an answer."""


# -- HTTP/1.1 plumbing --------------------------------------------------------------------------


@dataclass
class _Head:
    start: str  # request line or status line
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(k, v) for k, v in self.headers if k.lower() not in drop]

    def framing(self) -> tuple[str, int]:
        """("chunked", 0), ("length", n) or ("eof", 0)."""
        te = (self.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return "chunked", 0
        length = self.get("Content-Length")
        if length is not None and length.strip().isdigit():
            return "length", int(length.strip())
        return "eof", 0


def _encode_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """The next message head, or None on a clean EOF before any byte of it."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ConnectionError("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise ConnectionError("message head too large") from None
    lines = raw.decode("latin-1").split("\r\n")
    head = _Head(lines[0])
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        head.headers.append((name.strip(), value.strip()))
    return head


def _abort(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.transport.abort()


class _Body:
    """Relays one message body from ``reader`` to ``writer`` (or nowhere), framed as its head
    says, counting bytes and cutting it at ``limit``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None,
                 framing: tuple[str, int], limit: int | None,
                 progress: Callable[[int], None]) -> None:
        self.reader, self.writer = reader, writer
        self.kind, self.length = framing
        self.limit = limit
        self.count = 0
        self.progress = progress  # told the running count after every piece: records stay live

    async def relay(self) -> None:
        if self.kind == "length":
            await self._exactly(self.length)
        elif self.kind == "chunked":
            await self._chunked()
        else:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    return
                await self._pass(data)

    async def _pass(self, data: bytes) -> None:
        if self.limit is not None and self.count + len(data) >= self.limit:
            data = data[: max(0, self.limit - self.count)]
            await self._write(data)
            raise _Dropped
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        if self.writer is not None and data:
            self.writer.write(data)
            await self.writer.drain()
        self.count += len(data)
        self.progress(self.count)

    async def _exactly(self, n: int) -> None:
        if self.limit is not None and self.limit <= 0 and n > 0:
            raise _Dropped
        while n > 0:
            data = await self.reader.read(min(READ_CHUNK, n))
            if not data:
                raise ConnectionError(f"body ended {n} bytes early")
            n -= len(data)
            await self._pass(data)

    async def _chunked(self) -> None:
        # Bytes counted are the raw chunked stream (sizes and CRLFs included).
        while True:
            line = await self.reader.readuntil(b"\r\n")
            await self._pass(line)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the empty line
                    trailer = await self.reader.readuntil(b"\r\n")
                    await self._pass(trailer)
                    if trailer == b"\r\n":
                        return
            await self._exactly(size + 2)


# -- the proxy ----------------------------------------------------------------------------------


class FaultProxy:
    def __init__(self, upstream: str | _HasHost, *, port: int = 0) -> None:
        self._upstream_obj = upstream
        self._port = port
        self._rules: list[Rule] = []
        self._records: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def upstream(self) -> str:
        """``127.0.0.1:PORT`` of the registry behind (read each time: it may have restarted)."""
        up = self._upstream_obj
        return up if isinstance(up, str) else up.host

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repository: str, reference: str) -> str:
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{reference}"

    # -- rules and records -------------------------------------------------------------------

    def rule(self, method: str, path: str, action: Action, *, nth: int | Collection[int] | None = 1,
             query: str | None = None) -> Rule:
        """Add a rule: ``method`` ("*" for any), ``path`` regex (fullmatch), the occurrences
        that fire (``nth``), an optional ``query`` regex (searched)."""
        occurrences = None if nth is None else frozenset([nth] if isinstance(nth, int) else nth)
        r = Rule(method.upper(), re.compile(path), action, occurrences,
                 re.compile(query) if query is not None else None)
        with self._lock:
            self._rules.append(r)
        return r

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[ProxiedRequest]:
        """Requests seen so far, in arrival order, optionally filtered (``path``: fullmatch)."""
        rx = re.compile(path) if path is not None else None
        with self._lock:
            records = list(self._records)
        return [r for r in records
                if (method is None or r.method == method.upper())
                and (rx is None or rx.fullmatch(r.path) is not None)]

    def bytes_forwarded(self, method: str | None = None, path: str | None = None) -> int:
        """Request body bytes that went upstream, over the matching requests."""
        return sum(r.body_forwarded for r in self.requests(method, path))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"faultproxy-{self.upstream}",
                                        daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        return self

    async def _listen(self) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._accept, "127.0.0.1", self._port,
                                            limit=MAX_HEAD_BYTES * 2, reuse_address=True)
        self._port = int(server.sockets[0].getsockname()[1])
        return server

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                head = await asyncio.wait_for(_read_head(reader), IDLE_TIMEOUT_SECONDS)
                if head is None:
                    break
                if not await self._exchange(head, reader, writer):
                    break
        except (_Dropped, _NoUpstream):
            _abort(writer)
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            _abort(writer)
        except asyncio.CancelledError:
            # Only close() cancels a connection; ending quietly keeps asyncio's stream callback
            # from logging the cancellation as an error.
            _abort(writer)
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def _fire(self, method: str, path: str, query: str) -> list[Action]:
        with self._lock:
            return [r.action for r in self._rules if r.consider(method, path, query)]

    async def _exchange(self, head: _Head, creader: asyncio.StreamReader,
                        cwriter: asyncio.StreamWriter) -> bool:
        """One request and its answer. True when the client's connection may be reused."""
        method, target, _version = [*head.start.split(" ", 2), "", ""][:3]
        kind, length = head.framing()
        rec = ProxiedRequest(method=method.upper(), target=target, time=time.monotonic(),
                             wall=time.time(), content_length=length if kind == "length" else None,
                             request_headers=tuple(head.headers))
        with self._lock:
            self._records.append(rec)
        actions = self._fire(rec.method, rec.path, rec.query)
        rec.actions = tuple(str(a) for a in actions)
        request_framing = (kind, length) if kind != "eof" else ("length", 0)  # no body without framing
        try:
            for action in actions:
                if isinstance(action, Delay):
                    await asyncio.sleep(action.seconds)
            final = next((a for a in actions if not isinstance(a, Delay)), None)
            if isinstance(final, Respond):
                return await self._respond(final, head, rec, creader, cwriter, request_framing)
            return await self._forward(head, rec, creader, cwriter, request_framing,
                                       final if isinstance(final, DropAfter) else None)
        except _Dropped:
            rec.error = "dropped"
            raise
        except _NoUpstream as exc:
            rec.error = f"upstream unreachable: {exc}"
            raise
        except Exception as exc:
            rec.error = rec.error or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            rec.finished = time.monotonic()

    async def _respond(self, action: Respond, head: _Head, rec: ProxiedRequest,
                       creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter,
                       framing: tuple[str, int]) -> bool:
        def received(n: int) -> None:
            rec.body_received = n

        await _Body(creader, None, framing, None, received).relay()
        headers = [(k, v) for k, v in action.headers if k.lower() not in ("content-length", "connection")]
        headers.append(("Content-Length", str(len(action.body))))
        rec.response_headers = tuple(headers)
        cwriter.write(_encode_head(f"HTTP/1.1 {action.status} {_reason(action.status)}", headers))
        if rec.method != "HEAD":
            cwriter.write(action.body)
            rec.response_bytes = len(action.body)
        await cwriter.drain()
        rec.status = action.status
        return (head.get("Connection") or "").lower() != "close"

    async def _forward(self, head: _Head, rec: ProxiedRequest, creader: asyncio.StreamReader,
                       cwriter: asyncio.StreamWriter, framing: tuple[str, int],
                       drop: DropAfter | None) -> bool:
        upstream = self.upstream
        up_host, _, up_port = upstream.rpartition(":")
        try:
            ureader, uwriter = await asyncio.wait_for(
                asyncio.open_connection(up_host, int(up_port), limit=MAX_HEAD_BYTES * 2),
                CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as exc:
            raise _NoUpstream(f"{type(exc).__name__}: {exc}") from None
        try:
            headers = head.without("Host", "Connection", "Keep-Alive", "Proxy-Connection")
            uwriter.write(_encode_head(head.start, [("Host", upstream), *headers, ("Connection", "close")]))
            req_limit = drop.limit(rec.content_length) if drop and drop.side == "request" else None

            def forwarded(n: int) -> None:
                # Received and forwarded are the same bytes: the relay writes what it reads.
                rec.body_received = rec.body_forwarded = n

            await _Body(creader, uwriter, framing, req_limit, forwarded).relay()
            await uwriter.drain()
            return await self._answer(head, rec, ureader, cwriter, drop, upstream)
        except _Dropped:
            _abort(uwriter)
            raise
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            # The upstream went away mid-exchange: so does the client's connection.
            _abort(uwriter)
            raise _NoUpstream(f"{type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                uwriter.close()

    async def _answer(self, head: _Head, rec: ProxiedRequest, ureader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter, drop: DropAfter | None, upstream: str) -> bool:
        while True:
            resp = await _read_head(ureader)
            if resp is None:
                raise ConnectionError("upstream closed without an answer")
            status = int(resp.start.split(" ", 2)[1])
            headers = resp.without("Connection", "Keep-Alive")
            headers = [(k, _rewrite_location(v, upstream, self.host) if k.lower() == "location" else v)
                       for k, v in headers]
            if 100 <= status < 200:  # interim answers pass through; the final one follows
                cwriter.write(_encode_head(resp.start, headers))
                await cwriter.drain()
                continue
            break
        rec.status = status
        bodyless = rec.method == "HEAD" or status in _BODYLESS_STATUSES
        kind, length = resp.framing()
        keep = (head.get("Connection") or "").lower() != "close"
        if not bodyless and kind == "eof":
            keep = False  # the body ends when the connection does: so must the client's
            headers.append(("Connection", "close"))
        rec.response_headers = tuple(headers)
        cwriter.write(_encode_head(resp.start, headers))
        if bodyless:
            await cwriter.drain()
            return keep
        limit = drop.limit(length if kind == "length" else None) if drop and drop.side == "response" else None

        def sent(n: int) -> None:
            rec.response_bytes = n

        await _Body(ureader, cwriter, (kind, length), limit, sent).relay()
        return keep


def _rewrite_location(value: str, upstream: str, proxy: str) -> str:
    for scheme in ("http://", "https://"):
        if value.startswith(scheme + upstream):
            return "http://" + proxy + value[len(scheme + upstream):]
    return value


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


@contextlib.contextmanager
def fault_proxy(upstream: str | _HasHost) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.close()
