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
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import httpx

from adapters.bounded import (
    NON_BLOB_DEADLINE_SECONDS,
    cap_bodies_httpx_reads,
    read_capped,
    read_capped_until,
    within,
)
from adapters.distribution.auth import SCOPES_EXTENSION, RegistryAuth, finished
from adapters.distribution.trace import RequestTrace
from adapters.endpoint import Endpoint
from adapters.errors import (
    AnswerTooLargeError,
    ConfigError,
    ContentError,
    DigestMismatchError,
    ManifestTooLargeError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
    ReplicationError,
    TransportError,
    error_for_status,
)
from adapters.oci import (
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    Digest,
    Manifest,
    parse_manifest,
)

# Connections kept open to one registry: as many as blobs move at once (BLOB_CONCURRENCY).
# httpcore's pool looks at every connection on each request and answer, so a bigger pool costs
# client CPU without moving bytes faster (docs/decisions.md). Over HTTP/2 one connection
# carries every stream.
MAX_CONNECTIONS_PER_HOST = 8
# Connections for blob bodies (opened only when used): as many as blobs may move at once to a
# far registry, where the copier widens its blob slots with the round trip (tasks/blobs.py).
MAX_BULK_CONNECTIONS = 32
# An idle connection is closed after this long: it spans the pauses between a run's phases
# (planning, then blobs, then manifests) and stays under the idle timeouts of the proxies and
# load balancers in front of registries (nginx 75 s, AWS ALB 60 s), so a request never goes
# out on a connection the far end is closing.
KEEPALIVE_SECONDS = 30.0
# Per-read, not whole-request, timeouts: a 30 GB blob may take hours but must never stall.
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
# distribution rejects n > 1000; 100 is its own default page.
CATALOG_PAGE_SIZE = 100
MAX_PAGES = 100_000  # a Link loop on a broken registry must end
# One page of a catalog or tag list. distribution answers a tag list without ``n`` in one
# page: 16 MiB is ~500,000 tags, far past any real repository; more is not a list of names.
MAX_LISTING_PAGE_BYTES = 16 * 1024 * 1024
# Error bodies are read up to this size and shown up to ERROR_DETAIL_CHARS: enough for
# distribution's JSON errors, never a whole HTML page or a blob.
MAX_ERROR_BODY_BYTES = 16 * 1024
# Answers whose body nobody uses (HEAD, PUT, POST, PATCH, DELETE, /v2/) are read to their end
# up to this, so their connection serves the next request; a longer one is cut off with it.
MAX_DRAINED_BODY_BYTES = 64 * 1024
ERROR_DETAIL_CHARS = 300
# Blob bytes are moved in pieces of this size: memory per stream stays flat.
STREAM_CHUNK_BYTES = 1024 * 1024
# A 429's Retry-After holds every request to the registry, not only the refused one (the other
# streams would be refused too), for at most this long.
MAX_HOLD_SECONDS = 120.0

USER_AGENT = "regflow/0.1"
# Blobs are read raw and hashed: a proxy that compressed them would break the hash. (Other
# answers are decoded if compressed all the same, and capped as decoded.)
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
    copy each: httpx's own ``aiter_raw(size)`` copies every byte three times to cut exact sizes,
    which doubles the CPU a blob costs with its hashing; unjoined, every step downstream
    (hashing, bandwidth, the upload's writes) would run per 64 KiB instead of per chunk."""
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
# Below this many repositories a prefetch saves nothing: the first request learns the realm
# with its 401, and one token each is as many fetches.
PREFETCH_TOKENS_FROM = 2

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
                              max_keepalive_connections=max_connections,
                              keepalive_expiry=KEEPALIVE_SECONDS)
        self._token_http = httpx.AsyncClient(verify=verify, timeout=timeout, transport=transport,
                                             headers={"User-Agent": USER_AGENT})
        self.auth = RegistryAuth(endpoint.url, endpoint.username, endpoint.password,
                                 token_client=self._token_http)
        self._origin = f"{urlsplit(endpoint.url).scheme}://{endpoint.host}"
        # httpx builds its own transport from these (an AsyncHTTPTransport: HTTP/2 where a TLS
        # registry offers it by ALPN, else HTTP/1.1; no retries of its own, ours follow the
        # error tree's ``transient``), and one like it for each proxy in the environment. A
        # transport passed in would switch those proxies off (httpx reads them only without).
        # The hook caps the bodies httpx reads by itself: redirects it follows, 401s it retries.
        self._http = self._client(verify, timeout, limits, transport, http2=True)
        # Blob bodies go over HTTP/1.1 connections of their own, one stream each: the spec moves
        # one blob per request, and behind a far registry each TCP connection has its own
        # bandwidth limit, which one HTTP/2 connection carrying every blob would share
        # (docs/decisions.md, issue 21). Manifests, HEADs and lists stay multiplexed.
        self._bulk = self._client(verify, timeout, httpx.Limits(
            max_connections=max(max_connections, MAX_BULK_CONNECTIONS),
            max_keepalive_connections=max(max_connections, MAX_BULK_CONNECTIONS),
            keepalive_expiry=KEEPALIVE_SECONDS), transport, http2=False)
        self._realm_probe: asyncio.Task[None] | None = None  # the one GET /v2/ learn_realm sends
        self.requests_made = 0
        # The quickest answer (request sent to headers back) of a request without a blob body:
        # about one round trip to the registry, which sizes how much is kept in flight.
        self.fastest_answer: float | None = None
        # Answers by status ("error": none came), and holds started: an execution's traffic.
        self.responses: Counter[str] = Counter()
        self.holds = 0
        self._hold_until = 0.0  # time.monotonic() before which no request goes out (Retry-After)
        self.trace = RequestTrace.from_environment(endpoint.host)  # REGFLOW_TRACE_DIR: benchmarks
        self.auth.trace = self.trace

    def _client(self, verify: ssl.SSLContext, timeout: httpx.Timeout, limits: httpx.Limits,
                transport: httpx.AsyncBaseTransport | None, *, http2: bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._origin, verify=verify, timeout=timeout, limits=limits, http2=http2,
            transport=transport, follow_redirects=True, auth=self.auth, headers=DEFAULT_HEADERS,
            event_hooks={"response": [cap_bodies_httpx_reads]},
        )

    def __repr__(self) -> str:
        return f"DistributionClient({self.endpoint.url!r})"

    @property
    def host(self) -> str:
        return self.endpoint.host

    async def aclose(self) -> None:
        if self._realm_probe is not None:
            self._realm_probe.cancel()
            await asyncio.gather(self._realm_probe, return_exceptions=True)
        await self.auth.aclose()
        await self._http.aclose()
        await self._bulk.aclose()
        await self._token_http.aclose()
        if self.trace is not None:
            self.trace.write()

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

    def _full(self, url: str) -> str:
        # For messages: a path with the registry's host in front.
        return url if "://" in url else f"//{self.host}{url}"

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
        timed: bool = True,
        bulk: bool = False,
        **kw: Any,
    ) -> httpx.Response:
        """One request whose answer's body the caller does not need, or (``stream``) reads
        itself. Unless streamed, the body is drained up to MAX_DRAINED_BODY_BYTES and the whole
        exchange ends within NON_BLOB_DEADLINE_SECONDS, unless not ``timed`` (requests that
        carry a blob: per-read timeouts only)."""
        if stream:
            await self._hold()
            return await self._open(method, url, scopes=scopes, ok=ok, bulk=bulk, **kw)
        response, _ = await self._exchange(method, url, scopes=scopes, ok=ok, limit=MAX_DRAINED_BODY_BYTES,
                                           truncate=True, timed=timed, bulk=bulk, **kw)
        return response

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        ok: tuple[int, ...],
        limit: int,
        truncate: bool = False,
        timed: bool = True,
        bulk: bool = False,
        **kw: Any,
    ) -> tuple[httpx.Response, bytes]:
        """One request and its body read up to ``limit`` (over it: ``AnswerTooLargeError``,
        or with ``truncate`` the first ``limit`` bytes), from sending to the last byte within
        NON_BLOB_DEADLINE_SECONDS when ``timed``. A Retry-After hold is waited out first: it
        does not count against the deadline."""
        await self._hold()
        full = self._full(url)
        async with within(NON_BLOB_DEADLINE_SECONDS if timed else None, what=f"{method} {_redact(full)}"):
            response = await self._open(method, url, scopes=scopes, ok=ok, bulk=bulk, **kw)
            async with _closing(response):
                with _transport_errors(method, full):
                    body = await read_capped(response, limit, what=f"{method} {_redact(full)}",
                                             truncate=truncate)
        return response, body

    async def _open(self, method: str, url: str, *, scopes: tuple[str, ...], ok: tuple[int, ...],
                    bulk: bool = False, **kw: Any) -> httpx.Response:
        """Send a request and return its streamed answer; a status outside ``ok`` raises.
        ``bulk``: it carries a blob's bytes, on the HTTP/1.1 connections."""
        # One parse of the whole URL: a relative one would be parsed, then merged with the base URL
        # and parsed again (httpx validates every character each time; digests make URLs long).
        target = httpx.URL(url if "://" in url else f"{self._origin}/{url.lstrip('/')}")
        http = self._bulk if bulk else self._http
        request = http.build_request(method, target, extensions={SCOPES_EXTENSION: scopes}, **kw)
        self.requests_made += 1
        with _transport_errors(method, self._full(url)):
            # Always streamed, so that no body is read before its cap applies.
            started, sent = time.monotonic(), time.time()
            try:
                response = await http.send(request, stream=True)
            except httpx.TransportError as exc:
                self.responses["error"] += 1
                if self.trace is not None:
                    self.trace.add(sent, method, target.path, type(exc).__name__, bulk=bulk)
                raise
            if not bulk:
                self._answered(time.monotonic() - started)
            if self.trace is not None:
                self.trace.add(sent, method, target.path, str(response.status_code), bulk=bulk)
            self.responses[str(response.status_code)] += 1
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
        return response

    def _answered(self, seconds: float) -> None:
        self.fastest_answer = seconds if self.fastest_answer is None else min(self.fastest_answer, seconds)

    def hold_for(self, seconds: float | None) -> None:
        """Send nothing more to this registry for ``seconds`` (at most MAX_HOLD_SECONDS)."""
        if seconds:
            self.holds += 1
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
        async with within(NON_BLOB_DEADLINE_SECONDS, what=f"GET {_redact(url)}"):
            with _transport_errors("GET", url):
                started = time.monotonic()
                # On the client the registry's requests use (auth=None: no credentials to a
                # health check), so its connection and handshake are ready for them.
                response = await self._http.send(self._http.build_request("GET", url), stream=True,
                                                 auth=None, follow_redirects=False)
                self._answered(time.monotonic() - started)
                async with _closing(response):
                    if response.status_code not in (200, 401, 403):
                        raise await _error_from(response)
                    await read_capped(response, MAX_DRAINED_BODY_BYTES, what=f"GET {_redact(url)}",
                                      truncate=True)
        self.auth.learn_challenge(response)
        return response.status_code

    async def prefetch_tokens(self, repositories: Iterable[str], actions: str) -> None:
        """Bearer tokens for every repository a run will touch, a few fetches for all of them
        (RegistryAuth.start_prefetch), before the requests that need them. Best effort: whatever it
        could not get, each request fetches for itself as before."""
        await (await self.start_prefetch_tokens(repositories, actions))

    async def start_prefetch_tokens(self, repositories: Iterable[str], actions: str) -> asyncio.Future[None]:
        """``prefetch_tokens``, returning once the fetches are under way (after learning the
        realm, if need be): the requests that need a token meanwhile wait for their own batch.
        The future is done when every batch has ended; it never fails."""
        names = list(dict.fromkeys(repositories))
        if len(names) >= PREFETCH_TOKENS_FROM:
            await self.learn_realm()
            if self.auth.knows_realm:
                return self.auth.start_prefetch([self._scope(name, actions) for name in names])
        return finished()

    async def learn_realm(self) -> None:
        """Once per client, when no answer named it yet: a registry's 401 to an anonymous
        GET /v2/ names its token service (and the request opens the connection the run's
        requests will use). Best effort: a failure is met again by the requests themselves."""
        if self.auth.knows_realm:
            return
        if self._realm_probe is None:
            self._realm_probe = asyncio.ensure_future(self._probe_realm())
        # Shielded: one caller's cancellation leaves the probe to the others waiting on it.
        await asyncio.shield(self._realm_probe)

    async def _probe_realm(self) -> None:
        try:
            await self.ping()
        except ReplicationError:
            return

    async def check_credentials(self) -> None:
        """GET /v2/ through the auth flow: raises AuthenticationError when refused."""
        await self._send("GET", f"{self.endpoint.prefix}/v2/", scopes=(), ok=(200,))

    async def catalog(self, page_size: int = CATALOG_PAGE_SIZE) -> AsyncIterator[str]:
        url: str | None = f"{self.endpoint.prefix}/v2/_catalog?n={page_size}"
        for _ in range(MAX_PAGES):
            if url is None:
                return
            response, body = await self._exchange("GET", url, scopes=(CATALOG_SCOPE,), ok=(200,),
                                                  limit=MAX_LISTING_PAGE_BYTES)
            for name in _json_list(response, body, "repositories"):
                yield name
            url = _next_link(response)
        raise ContentError(f"catalog of {self.host} did not end after {MAX_PAGES} pages")

    async def list_tags(self, repository: str) -> list[str]:
        tags: list[str] = []
        url: str | None = self._path(repository, "tags", "list")
        for _ in range(MAX_PAGES):
            if url is None:
                return tags
            response, body = await self._exchange("GET", url, scopes=(self._scope(repository, "pull"),),
                                                  ok=(200,), limit=MAX_LISTING_PAGE_BYTES)
            tags.extend(_json_list(response, body, "tags"))
            url = _next_link(response)
        raise ContentError(f"tag list of {repository} did not end after {MAX_PAGES} pages")

    async def has_tags(self, repository: str) -> bool:
        """Whether the repository holds any tag, from a page of at most one (a registry that
        ignores ``n`` sends the whole list, which answers as well)."""
        try:
            response, body = await self._exchange(
                "GET", self._path(repository, "tags", "list") + "?n=1",
                scopes=(self._scope(repository, "pull"),), ok=(200,), limit=MAX_LISTING_PAGE_BYTES)
        except NotFoundError:
            return False
        return bool(_json_list(response, body, "tags"))

    # -- referrers (OCI distribution 1.1) ----------------------------------------------------

    # Whether the registry serves the referrers API: None until asked, then remembered for the
    # client's life, so a run asks a registry without it once, not once per manifest. Class
    # defaults, so a subclass that skips __init__ has them; the OCI layout client says False.
    referrers_api: bool | None = None
    _referrers_probe: asyncio.Lock | None = None

    async def referrers(self, repository: str, digest: Digest,
                        artifact_type: str | None = None) -> list[Descriptor] | None:
        """The descriptors of the manifests whose ``subject`` is ``digest`` (every page), only
        those of ``artifact_type`` when given; None when the registry has no referrers API.

        The spec forbids a registry with the API to answer 404 here, so a 404 means it lacks
        it (distribution 2.8 answers its router's plain-text ``404 page not found``)."""
        if self.referrers_api is False:
            return None
        if self.referrers_api is None:
            if self._referrers_probe is None:
                self._referrers_probe = asyncio.Lock()
            async with self._referrers_probe:  # the first answer decides for all that wait
                if self.referrers_api is None:
                    return await self._referrers(repository, digest, artifact_type)
            if self.referrers_api is False:
                return None
        return await self._referrers(repository, digest, artifact_type)

    async def _referrers(self, repository: str, digest: Digest,
                         artifact_type: str | None) -> list[Descriptor] | None:
        found: list[Descriptor] = []
        url: str | None = self._path(repository, "referrers", digest)
        if artifact_type is not None:
            url = f"{url}?{urlencode({'artifactType': artifact_type})}"
        for _ in range(MAX_PAGES):
            if url is None:
                return found
            try:
                response, body = await self._exchange(
                    "GET", url, scopes=(self._scope(repository, "pull"),), ok=(200,),
                    limit=MAX_MANIFEST_BYTES, headers={"Accept": OCI_INDEX})
            except NotFoundError:
                if self.referrers_api is None:
                    self.referrers_api = False
                    return None
                raise
            self.referrers_api = True
            index = parse_manifest(body, response.headers.get("Content-Type"))
            if not index.is_index:
                raise ContentError(f"referrers of {repository}@{digest}: {index.media_type} is not an index")
            filtered = "artifacttype" in response.headers.get("OCI-Filters-Applied", "").lower()
            found.extend(c for c in index.children
                         if artifact_type is None or filtered or c.artifact_type == artifact_type)
            url = _next_link(response)
        raise ContentError(f"referrers of {repository}@{digest} did not end after {MAX_PAGES} pages")

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
        try:
            response, raw = await self._exchange(
                "GET", self._path(repository, "manifests", ref),
                scopes=(self._scope(repository, "pull"),), ok=(200,), limit=MAX_MANIFEST_BYTES,
                headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
            )
        except AnswerTooLargeError:
            raise ManifestTooLargeError(
                f"manifest {repository}@{ref} is over {MAX_MANIFEST_BYTES} bytes") from None
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
                                    stream=True, bulk=True, headers=headers)
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
                         timed=False, bulk=True, content=body,
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    async def patch_chunk(self, repository: str, location: str, offset: int, length: int,
                          body: AsyncIterable[bytes] | bytes) -> str:
        """Append ``length`` bytes at ``offset``; returns the next upload location."""
        response = await self._send(
            "PATCH", location, scopes=(self._scope(repository, "pull,push"),), ok=(202,),
            timed=False, bulk=True, content=body, headers={"Content-Type": "application/octet-stream",
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


def _json_list(response: httpx.Response, body: bytes, key: str) -> list[str]:
    try:
        value = json.loads(body).get(key) or []
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
        body = await read_capped_until(response, MAX_ERROR_BODY_BYTES, what=f"{method} {url}",
                                       deadline=NON_BLOB_DEADLINE_SECONDS, truncate=True)
    except (httpx.HTTPError, TransportError):
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
