"""The OCI distribution-spec client: one ``httpx.AsyncClient`` per registry, verbs named after
the spec. It knows requests, answers and errors; it does not know policies or transfers.

Every method makes exactly the requests its name says (plus a token fetch the first time a
scope is used), so callers can count and minimise them.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import httpcore
import httpx

from adapters.distribution.auth import SCOPES_EXTENSION, RegistryAuth
from adapters.distribution.http1 import Http1Pool, Wire
from adapters.endpoint import Endpoint
from adapters.errors import (
    ConfigError,
    ContentError,
    DigestMismatchError,
    ManifestTooLargeError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
    TransportError,
    error_for_status,
)
from adapters.oci import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, Digest, Manifest, parse_manifest

# Connections kept open to one registry. Registries on small machines are CPU-bound well
# before this; the transfer's own semaphores decide how many requests are in flight.
MAX_CONNECTIONS_PER_HOST = 16
# Per-read, not whole-request, timeouts: a 30 GB blob may take hours but must never stall.
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
# distribution rejects n > 1000; 100 is its own default page.
CATALOG_PAGE_SIZE = 100
MAX_PAGES = 100_000  # a Link loop on a broken registry must end
# Error bodies are read up to this size and shown up to ERROR_DETAIL_CHARS: enough for
# distribution's JSON errors, never a whole HTML page or a blob.
MAX_ERROR_BODY_BYTES = 16 * 1024
ERROR_DETAIL_CHARS = 300
# Blob bytes are moved in pieces of this size: memory per stream stays flat.
STREAM_CHUNK_BYTES = 1024 * 1024
# A 429's Retry-After holds every request to the registry, not only the refused one (the other
# streams would be refused too), for at most this long.
MAX_HOLD_SECONDS = 120.0

USER_AGENT = "regflow/0.1"
# Blobs and manifests are read raw and hashed: a proxy that compressed them would break both.
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class ManifestHead:
    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True)
class UploadStatus:
    location: str
    offset: int  # bytes the registry holds; the next byte to send


class BlobStream:
    """An open blob GET; iterate it once. ``size`` is the total blob size when known."""

    def __init__(self, response: httpx.Response, size: int | None, skip: int) -> None:
        self._response = response
        self.size = size
        self._skip = skip  # bytes to drop when the server ignored our Range

    async def chunks(self, chunk_size: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The body in pieces of at least ``chunk_size`` bytes (the last may be shorter)."""
        with _transport_errors("GET", str(self._response.url)):
            async for chunk in _gathered(self._response.aiter_raw(), chunk_size):
                if self._skip:
                    dropped = min(self._skip, len(chunk))
                    chunk = chunk[dropped:]
                    self._skip -= dropped
                if chunk:
                    yield chunk


async def _gathered(pieces: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Join the connection's reads (64 KiB each) into chunks of at least ``size`` bytes with one
    copy each; httpx's own ``aiter_raw(size)`` copies every byte three times to cut exact sizes."""
    held: list[bytes] = []
    count = 0
    async for piece in pieces:
        held.append(piece)
        count += len(piece)
        if count >= size:
            yield b"".join(held)
            held, count = [], 0
    if count:
        yield b"".join(held)


def repo_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


CATALOG_SCOPE = "registry:catalog:*"

# Sees every registry answer (success or error) before the client reads it, e.g. to follow a
# vendor's rate-limit headers; the seconds it returns hold every further request to the
# registry, exactly like a 429's Retry-After. None: carry on. It must not raise.
ResponseObserver = Callable[[httpx.Response], float | None]


class DistributionClient:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        max_connections: int = MAX_CONNECTIONS_PER_HOST,
        transport: httpx.AsyncBaseTransport | None = None,
        response_observer: ResponseObserver | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._observer = response_observer
        verify = tls_verify(endpoint)
        timeout = httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS,
                                write=READ_TIMEOUT_SECONDS, pool=None)
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self._token_http = _RegistryHttp(verify=verify, timeout=timeout, transport=transport,
                                         headers={"User-Agent": USER_AGENT})
        # httpx lower-cases the host and drops a default port in request URLs; compare like it.
        self.auth = RegistryAuth(httpx.URL(endpoint.url).netloc.decode(), endpoint.username,
                                 endpoint.password, token_client=self._token_http)
        self._origin = f"{urlsplit(endpoint.url).scheme}://{endpoint.host}"
        # limits and http2 still shape the transports httpx mounts for proxies it finds in the
        # environment; requests to the registry itself go through PoolTransport.
        self._http = _RegistryHttp(
            base_url=self._origin, verify=verify, timeout=timeout, limits=limits,
            transport=transport or PoolTransport(verify, limits, http2=True),
            http2=transport is None, follow_redirects=True, auth=self.auth, headers=DEFAULT_HEADERS,
        )
        self.requests_made = 0
        self._hold_until = 0.0  # time.monotonic() before which no request goes out (Retry-After)

    def __repr__(self) -> str:
        return f"DistributionClient({self.endpoint.url!r})"

    @property
    def host(self) -> str:
        return self.endpoint.host

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._token_http.aclose()

    async def __aenter__(self) -> DistributionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing --------------------------------------------------------------------------

    def remote_name(self, repository: str) -> str:
        """The name the registry itself knows ``repository`` by: the same, unless a vendor
        client maps it (Docker Hub reads ``nginx`` as ``library/nginx``). Paths and token
        scopes use it; callers and messages keep the caller's name."""
        return repository

    def _scope(self, repository: str, actions: str) -> str:
        return repo_scope(self.remote_name(repository), actions)

    def _path(self, repository: str, kind: str, ref: str = "") -> str:
        tail = f"/{quote(ref, safe=':@')}" if ref else "/"
        return f"{self.endpoint.prefix}/v2/{self.remote_name(repository)}/{kind}{tail}"

    def _absolute(self, location: str) -> str:
        # Upload locations may be relative; resolve against the registry, not the last request.
        return urljoin(f"{self._origin}/", location)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        ok: tuple[int, ...],
        stream: bool = False,
        **kw: Any,
    ) -> httpx.Response:
        await self._hold()
        # One parse of the whole URL: a relative one would be parsed, then merged with the base URL
        # and parsed again (httpx validates every character each time; digests make URLs long).
        target = httpx.URL(url if "://" in url else f"{self._origin}/{url.lstrip('/')}")
        request = self._http.build_request(method, target, extensions={SCOPES_EXTENSION: scopes}, **kw)
        self.requests_made += 1
        with _transport_errors(method, url if "://" in url else f"//{self.host}{url}"):
            # Always streamed, so that an error body is read only up to its cap.
            response = await self._http.send(request, stream=True)
            if self._observer is not None:
                self.hold_for(self._observer(response))
            if response.status_code not in ok:
                try:
                    error = await _error_from(response)
                    if isinstance(error, RateLimitedError):
                        self.hold_for(error.retry_after)
                    raise error
                finally:
                    await response.aclose()
            if not stream:
                await response.aread()
        return response

    def hold_for(self, seconds: float | None) -> None:
        """Send nothing more to this registry for ``seconds`` (at most MAX_HOLD_SECONDS)."""
        if seconds:
            self._hold_until = max(self._hold_until,
                                   time.monotonic() + min(seconds, MAX_HOLD_SECONDS))

    async def _hold(self) -> None:
        """Wait out a registry's Retry-After before any further request to it."""
        for _ in range(1000):  # bounded: each round sleeps until the deadline it read
            wait = self._hold_until - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    # -- base ------------------------------------------------------------------------------

    async def ping(self) -> int:
        """GET /v2/ without credentials. 200, 401 and 403 all mean a registry is there."""
        url = self._absolute(f"{self.endpoint.prefix}/v2/")
        self.requests_made += 1
        with _transport_errors("GET", url):
            response = await self._token_http.get(url)
        if response.status_code not in (200, 401, 403):
            raise await _error_from(response)
        return response.status_code

    async def check_credentials(self) -> None:
        """GET /v2/ through the auth flow: raises AuthenticationError when refused."""
        await self._send("GET", f"{self.endpoint.prefix}/v2/", scopes=(), ok=(200,))

    async def catalog(self, page_size: int = CATALOG_PAGE_SIZE) -> AsyncIterator[str]:
        url: str | None = f"{self.endpoint.prefix}/v2/_catalog?n={page_size}"
        for _ in range(MAX_PAGES):
            if url is None:
                return
            response = await self._send("GET", url, scopes=(CATALOG_SCOPE,), ok=(200,))
            for name in _json_list(response, "repositories"):
                yield name
            url = _next_link(response)
        raise ContentError(f"catalog of {self.host} did not end after {MAX_PAGES} pages")

    async def list_tags(self, repository: str) -> list[str]:
        tags: list[str] = []
        url: str | None = self._path(repository, "tags", "list")
        for _ in range(MAX_PAGES):
            if url is None:
                return tags
            response = await self._send("GET", url, scopes=(self._scope(repository, "pull"),), ok=(200,))
            tags.extend(_json_list(response, "tags"))
            url = _next_link(response)
        raise ContentError(f"tag list of {repository} did not end after {MAX_PAGES} pages")

    async def has_tags(self, repository: str) -> bool:
        """Whether the repository holds any tag, from a page of at most one (a registry that
        ignores ``n`` sends the whole list, which answers as well)."""
        try:
            response = await self._send("GET", self._path(repository, "tags", "list") + "?n=1",
                                        scopes=(self._scope(repository, "pull"),), ok=(200,))
        except NotFoundError:
            return False
        return bool(_json_list(response, "tags"))

    # -- manifests -------------------------------------------------------------------------

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead | None:
        """The digest a tag points at, or None when the registry has no such manifest."""
        try:
            response = await self._send(
                "HEAD", self._path(repository, "manifests", ref),
                scopes=(self._scope(repository, "pull"),), ok=(200,),
                headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
            )
        except NotFoundError:
            return None
        raw_digest = response.headers.get("Docker-Content-Digest")
        if not raw_digest:
            # Without the header a HEAD tells us nothing; the caller falls back to GET.
            manifest = await self.get_manifest(repository, ref)
            return ManifestHead(manifest.digest, manifest.media_type, manifest.size)
        return ManifestHead(
            Digest(raw_digest),
            response.headers.get("Content-Type", "").split(";")[0].strip(),
            int(response.headers.get("Content-Length", "0")),
        )

    async def get_manifest(self, repository: str, ref: str) -> Manifest:
        response = await self._send(
            "GET", self._path(repository, "manifests", ref),
            scopes=(self._scope(repository, "pull"),), ok=(200,), stream=True,
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        )
        async with _closing(response):
            declared = int(response.headers.get("Content-Length", "0") or 0)
            if declared > MAX_MANIFEST_BYTES:
                raise ManifestTooLargeError(
                    f"manifest {repository}@{ref} is {declared} bytes, over {MAX_MANIFEST_BYTES}")
            raw = await _read_at_most(response, MAX_MANIFEST_BYTES + 1)
            if len(raw) > MAX_MANIFEST_BYTES:
                raise ManifestTooLargeError(
                    f"manifest {repository}@{ref} is over {MAX_MANIFEST_BYTES} bytes")
        manifest = parse_manifest(raw, response.headers.get("Content-Type"))
        if ref.startswith(("sha256:", "sha512:")) and manifest.digest != ref:
            raise DigestMismatchError(ref, manifest.digest, what=f"manifest {repository}")
        served = response.headers.get("Docker-Content-Digest")
        if served and served.startswith("sha256:") and served != manifest.digest:
            raise DigestMismatchError(served, manifest.digest, what=f"manifest {repository}:{ref}")
        return manifest

    async def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> Digest:
        """Push the manifest's exact bytes under a tag or its own digest."""
        await self._send(
            "PUT", self._path(repository, "manifests", ref),
            scopes=(self._scope(repository, "pull,push"),), ok=(200, 201, 202),
            content=manifest.raw, headers={"Content-Type": manifest.media_type},
        )
        return manifest.digest

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """Delete by digest (distribution refuses deletion by tag). False when already gone."""
        try:
            await self._send("DELETE", self._path(repository, "manifests", digest),
                             scopes=(self._scope(repository, "delete"),), ok=(200, 202))
        except NotFoundError:
            return False
        return True

    # -- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: Digest) -> int | None:
        """The blob's size when the repository has it, else None."""
        try:
            response = await self._send("HEAD", self._path(repository, "blobs", digest),
                                        scopes=(self._scope(repository, "pull"),), ok=(200,))
        except NotFoundError:
            return None
        return int(response.headers.get("Content-Length", "0") or 0)

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest, offset: int = 0) -> AsyncIterator[BlobStream]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = await self._send("GET", self._path(repository, "blobs", digest),
                                    scopes=(self._scope(repository, "pull"),), ok=(200, 206),
                                    stream=True, headers=headers)
        async with _closing(response):
            length = response.headers.get("Content-Length")
            if response.status_code == 206:
                total = _content_range_total(response.headers.get("Content-Range", ""))
                yield BlobStream(response, total, 0)
            else:
                yield BlobStream(response, int(length) if length else None, offset)

    async def start_upload(self, repository: str, *, mount: Digest | None = None,
                           mount_from: str | None = None) -> str | None:
        """POST an upload. With ``mount``: None when the registry mounted the blob (201),
        else the upload location to use instead (202)."""
        scopes: tuple[str, ...] = (self._scope(repository, "pull,push"),)
        url = self._path(repository, "blobs", "uploads") + "/"
        if mount is not None and mount_from is not None:
            scopes = (*scopes, self._scope(mount_from, "pull"))
            # The query as httpx's params= would encode it, without a second parse of the URL.
            url += "?" + urlencode({"mount": str(mount), "from": self.remote_name(mount_from)})
        response = await self._send("POST", url, scopes=scopes, ok=(201, 202))
        if response.status_code == 201 and mount is not None:
            return None
        location = response.headers.get("Location")
        if not location:
            raise ContentError(f"{self.host} started an upload without a Location")
        return self._absolute(location)

    async def put_blob(self, repository: str, location: str, digest: Digest, size: int,
                       body: AsyncIterable[bytes] | bytes) -> None:
        """Monolithic upload: the whole blob in the closing PUT of an upload session."""
        await self._send("PUT", _with_digest(location, digest),
                         scopes=(self._scope(repository, "pull,push"),), ok=(201, 204),
                         content=body, headers={"Content-Type": "application/octet-stream",
                                                "Content-Length": str(size)})

    async def patch_chunk(self, repository: str, location: str, offset: int, length: int,
                          body: AsyncIterable[bytes] | bytes) -> str:
        """Append ``length`` bytes at ``offset``; returns the next upload location."""
        response = await self._send(
            "PATCH", location, scopes=(self._scope(repository, "pull,push"),), ok=(202,),
            content=body, headers={"Content-Type": "application/octet-stream",
                                   "Content-Range": f"{offset}-{offset + length - 1}",
                                   "Content-Length": str(length)},
        )
        return self._absolute(response.headers.get("Location", location))

    async def upload_status(self, repository: str, location: str) -> UploadStatus:
        """Where an interrupted upload stands (the registry's ``Range: 0-N``)."""
        response = await self._send("GET", location, scopes=(self._scope(repository, "pull,push"),),
                                    ok=(204,))
        last = response.headers.get("Range", "").rpartition("-")[2]
        # distribution answers "0-0" for an empty upload too; reading it as empty costs at most
        # one byte resent, reading it as one byte would corrupt the blob.
        offset = int(last) + 1 if last.isdigit() and int(last) > 0 else 0
        return UploadStatus(self._absolute(response.headers.get("Location", location)), offset)

    async def complete_upload(self, repository: str, location: str, digest: Digest) -> None:
        await self._send("PUT", _with_digest(location, digest),
                         scopes=(self._scope(repository, "pull,push"),), ok=(201, 204),
                         headers={"Content-Length": "0"})

    async def cancel_upload(self, repository: str, location: str) -> None:
        try:
            await self._send("DELETE", location, scopes=(self._scope(repository, "pull,push"),),
                             ok=(200, 202, 204))
        except RegistryError:
            pass  # best effort: the registry purges abandoned uploads itself


class _RegistryHttp(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose cookie jar is only consulted for answers that set cookies
    (registries rarely do): httpx runs every answer through ``http.cookiejar``, which builds a
    urllib request and an email message for it, ~100 µs each."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_cookies = _Cookies(kwargs.get("cookies"))

    @property
    def cookies(self) -> httpx.Cookies:
        return self._set_cookies

    @cookies.setter
    def cookies(self, cookies: _CookieTypes) -> None:
        self._set_cookies = _Cookies(cookies)


_CookieTypes = httpx.Cookies | CookieJar | dict[str, str] | list[tuple[str, str]] | None


class _Cookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        if "Set-Cookie" in response.headers or "Set-Cookie2" in response.headers:
            super().extract_cookies(response)


# -- transport -------------------------------------------------------------------------------


class PoolTransport(httpx.AsyncBaseTransport):
    """Registries over plain http get regflow's own HTTP/1.1 connections (``http1``, a third
    of the CPU httpcore takes per request). Registries over TLS get httpx's default transport
    (an httpcore connection pool, HTTP/2 when offered), built on the public httpcore API so that
    its connections are ``_Connection``s on asyncio instead of anyio's streams, and split into
    pools of at most POOL_SHARD_CONNECTIONS.

    Each time a request starts or ends, httpcore's pool checks every idle connection for a
    server-side close (through anyio: a dict of socket attributes and a getpeername() each) and
    counts all its connections once per idle one, quadratic in the pool's size. Both were about
    a fifth of the copy engine's CPU in the benchmark, where bursts of manifest requests keep 16
    connections open and most of them idle."""

    def __init__(self, verify: ssl.SSLContext, limits: httpx.Limits, *, http2: bool) -> None:
        total = limits.max_connections or POOL_SHARD_CONNECTIONS
        shards = -(-total // POOL_SHARD_CONNECTIONS)
        keepalive = limits.max_keepalive_connections
        self._pools = [
            httpcore.AsyncConnectionPool(
                ssl_context=verify,
                max_connections=-(-total // shards),
                max_keepalive_connections=None if keepalive is None else -(-keepalive // shards),
                keepalive_expiry=limits.keepalive_expiry,
                http1=True,
                http2=http2,
                network_backend=_AsyncioBackend(),
            )
            for _ in range(shards)
        ]
        self._busy = [0] * shards  # requests each pool holds a connection for
        self._plain = Http1Pool(total, keepalive, limits.keepalive_expiry)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return await self._plain.request(request)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        shard = self._busy.index(min(self._busy))  # the least busy pool, as one pool would
        self._busy[shard] += 1
        try:
            with _httpx_errors():
                response = await self._pools[shard].handle_async_request(core_request)
        except BaseException:
            self._busy[shard] -= 1
            raise
        assert isinstance(response.stream, AsyncIterable)
        stream = _ResponseStream(response.stream, lambda: self._release(shard))
        return httpx.Response(status_code=response.status, headers=response.headers, stream=stream,
                              extensions=response.extensions)

    def _release(self, shard: int) -> None:
        self._busy[shard] -= 1

    async def aclose(self) -> None:
        await self._plain.aclose()
        for pool in self._pools:
            await pool.aclose()


# httpcore compares every connection of a pool with all the others on each request's start and
# end; pools of this size keep that cheap, and enough of them make up max_connections.
POOL_SHARD_CONNECTIONS = 8


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        on_close, self._on_close = self._on_close, None
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if on_close is not None:
                on_close()


# httpcore's errors as httpx raises them (the client only knows httpx's); most specific first.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections straight on asyncio's transports. (The ``timeout`` parameters are
    httpcore's interface.) TCP only: registries are never reached through a Unix socket, and
    httpcore's own default refuses one."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        connection = await _Connection.open(host, port, timeout, local_address)
        return connection.ready(socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Connection(Wire, httpcore.AsyncNetworkStream):
    """One connection as httpcore reads and writes it (TLS registries), on asyncio's transport
    as plain-http ones use it, with httpcore's errors as anyio's backend raises them."""

    connect_error = httpcore.ConnectError
    connect_timeout = httpcore.ConnectTimeout
    read_error = httpcore.ReadError
    read_timeout = httpcore.ReadTimeout
    write_error = httpcore.WriteError
    write_timeout = httpcore.WriteTimeout

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        chunk = await self.receive(timeout)
        if len(chunk) > max_bytes:
            self.unread(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self.send(buffer, timeout)

    async def aclose(self) -> None:
        self.abort()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:  # noqa: ASYNC109
        assert self._transport is not None
        try:
            with self.connecting("no TLS handshake in time"):
                async with asyncio.timeout(timeout):
                    transport = await self._loop.start_tls(self._transport, self, ssl_context,
                                                           server_hostname=server_hostname)
        except BaseException:
            await self.aclose()
            raise
        if transport is None:  # the server closed the connection during the handshake
            raise httpcore.ConnectError("connection closed during the TLS handshake")
        self._attach(transport)
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "is_readable":
            # Idle in the pool: anything received (data, EOF, a reset) means the server closed it
            # or broke the protocol. The event loop has read it already; no system call.
            return not self.usable
        if transport is None:
            return None
        key = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername",
               "socket": "socket"}.get(info)
        return transport.get_extra_info(key) if key else None

    def ready(self, socket_options: Iterable[Any] | None) -> _Connection:
        sock = self.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return self


# -- helpers ---------------------------------------------------------------------------------


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def tls_verify(endpoint: Endpoint) -> ssl.SSLContext:
    """The registry's own CA bundle when it has one (it wins over ``insecure``, as in Harbor,
    and replaces the system's CAs), else the system's CAs unless ``insecure``.

    Contexts are shared by every client with the same trust: loading the CA store costs ~20 ms
    of CPU, and each httpx client would otherwise load its own."""
    if not endpoint.ca_certificate:
        # httpx's own choice of CAs, which follows SSL_CERT_FILE / SSL_CERT_DIR.
        return _default_context(not endpoint.insecure, os.environ.get("SSL_CERT_FILE"),
                                os.environ.get("SSL_CERT_DIR"))
    # Only the certificate blocks: bundles carry comments (often non-ASCII issuer names) that
    # OpenSSL's cadata refuses. A bundle it cannot use is the user's input to fix, not a crash.
    blocks = _PEM_CERTIFICATE.findall(endpoint.ca_certificate)
    if not blocks:
        raise ConfigError("holds no PEM certificate (-----BEGIN CERTIFICATE----- block)",
                          field="ca_certificate")
    try:
        return _bundle_context("\n".join(blocks) + "\n")
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"not a valid PEM CA bundle: {exc}"[:300], field="ca_certificate") from None


# Distinct trust settings in one process: a handful of registries, each bundle a few KB.
MAX_SHARED_SSL_CONTEXTS = 64


@functools.lru_cache(maxsize=MAX_SHARED_SSL_CONTEXTS)
def _default_context(verify: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The environment is part of the key (httpx reads it when it builds the context).
    del cert_file, cert_dir
    return httpx.create_ssl_context(verify=verify)


@functools.lru_cache(maxsize=MAX_SHARED_SSL_CONTEXTS)
def _bundle_context(cadata: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=cadata)


_tls_verify = tls_verify  # the name tests/integration/test_tls.py imports


def _with_digest(location: str, digest: Digest) -> str:
    # httpx's params= would replace the location's own query (distribution's upload state).
    return f"{location}{'&' if '?' in location else '?'}digest={quote(str(digest), safe='')}"


def _redact(url: str) -> str:
    # Upload locations carry opaque state in their query; it is noise in a message.
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}" if parts.netloc else parts.path


@contextmanager
def _transport_errors(method: str, url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:
        raise TransportError(f"{method} {_redact(url)}: {type(exc).__name__}: {exc}"[:400]) from None


@asynccontextmanager
async def _closing(response: httpx.Response) -> AsyncIterator[httpx.Response]:
    try:
        yield response
    finally:
        await response.aclose()


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """Read a streamed body, stopping once ``limit`` bytes are in hand."""
    buf = bytearray()
    async for chunk in response.aiter_raw():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


def _json_list(response: httpx.Response, key: str) -> list[str]:
    try:
        value = response.json().get(key) or []
    except (ValueError, AttributeError):
        raise ContentError(f"{_redact(str(response.url))}: expected JSON with {key!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ContentError(f"{_redact(str(response.url))}: {key!r} is not a list of names")
    return value


def _next_link(response: httpx.Response) -> str | None:
    nxt = response.links.get("next")
    if not nxt or not nxt.get("url"):
        return None
    target = urlsplit(nxt["url"])
    # Only ever follow pages on the same registry: a Link to elsewhere is ignored.
    if target.netloc and target.netloc != response.url.netloc.decode():
        return None
    return f"{target.path}?{target.query}" if target.query else target.path


def _content_range_total(value: str) -> int | None:
    total = value.rpartition("/")[2]
    return int(total) if total.isdigit() else None


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (delta-seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _error_from(response: httpx.Response) -> RegistryError:
    method = response.request.method
    url = _redact(str(response.request.url))
    try:
        # A HEAD's body is empty but read all the same: only a complete answer gives its
        # connection back to the pool (unread, every 404 of a HEAD cost a new connection).
        body = await _read_at_most(response, MAX_ERROR_BODY_BYTES)
    except httpx.HTTPError:
        body = b""
    codes, detail = _diagnostics(b"" if method == "HEAD" else body)
    status = response.status_code
    message = f"{method} {url}: {status}" + (f" {', '.join(codes)}" if codes else "") + (
        f": {detail}" if detail else "")
    # 408 and distribution's BLOB_UPLOAD_UNKNOWN after a restart can succeed on a new attempt.
    return error_for_status(message, status=status, method=method, url=url, codes=codes, detail=detail,
                            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                            transient="BLOB_UPLOAD_UNKNOWN" in codes)


def _diagnostics(body: bytes) -> tuple[tuple[str, ...], str]:
    """distribution's ``{"errors": [{"code", "message"}]}``, or a short printable excerpt."""
    if not body:
        return (), ""
    try:
        errors = json.loads(body).get("errors")
        if isinstance(errors, list):
            codes = tuple(str(e.get("code", ""))[:64] for e in errors if isinstance(e, dict))
            messages = "; ".join(str(e.get("message", ""))[:120] for e in errors if isinstance(e, dict))
            return codes, messages[:ERROR_DETAIL_CHARS]
    except (ValueError, AttributeError):
        pass
    text = body.decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() else " " for c in text).strip()
    return (), printable[:ERROR_DETAIL_CHARS]
