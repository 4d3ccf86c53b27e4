"""Registry authentication as an ``httpx.Auth``: anonymous, basic, and the bearer challenge.

The client tags each request with the scopes it needs (``request.extensions["regflow.scopes"]``);
this flow then

1. sends nothing secret to any origin but the registry's own (scheme, host and port): a blob
   GET that redirects to object storage, or an upload whose ``Location`` names another host,
   reaches it without ``Authorization``;
2. adds a cached token for exactly those scopes, or fetches one up front once the registry has
   told us its realm, so each new repository costs one token fetch and no extra 401;
3. on a 401 from the registry itself, reads the ``WWW-Authenticate`` challenge, gets a token
   (or switches to basic) and sends the request once more.

Only the registry speaks for the registry: a 401 that comes from elsewhere (the host a blob
was redirected to) is handed back as it is, its challenge never read, so no stranger can name
a realm that would receive our credentials. The realm the registry names may be on another
host (Docker Hub's is), but it is never reached over plain http from an https registry.

Credentials are a static user and password, or come from a *credential provider*: an async
callable returning fresh ``RegistryCredentials`` and until when they hold. Vendor adapters use
it for credentials that expire (ECR's 12-hour passwords, Google OAuth2 access tokens, ACR
refresh tokens); the flow asks again shortly before the expiry, or once when the registry
refuses what it was given. A credential marked ``refresh_token`` is an OAuth2 refresh token
(Docker's "identity token"): it is exchanged with ``POST grant_type=refresh_token`` as the
distribution token spec's OAuth2 flow says, never sent as a password.

Requests with a body that cannot be replayed (streamed blob uploads) only work if the scope was
authorised beforehand, which the client arranges by starting every upload with a POST.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from adapters.bounded import read_capped, within
from adapters.distribution.trace import RequestTrace
from adapters.errors import AuthenticationError, TransportError

SCOPES_EXTENSION = "regflow.scopes"

# Tokens are refreshed this long before they expire, so a request never races the expiry.
TOKEN_EXPIRY_MARGIN_SECONDS = 10.0
# The distribution token spec's default lifetime when the server omits expires_in.
DEFAULT_TOKEN_LIFETIME_SECONDS = 60.0
# A token service answer larger than this is not a token.
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
# A provider's credentials are renewed this long before they expire: long enough for a token
# fetch and the start of an upload made with them to finish inside their lifetime.
CREDENTIAL_REFRESH_MARGIN_SECONDS = 300.0
# The OAuth2 client_id sent with refresh-token grants (the spec requires one; any name will do).
OAUTH_CLIENT_ID = "regflow"
# Scopes asked for in one token fetch by ``prefetch``: one token then serves that many
# repositories. The token lists each grant and rides in every request's Authorization header:
# over HTTP/2 that header must stay in HPACK's 4 KiB table among the paths, or it is
# Huffman-coded again for every request (a 3.4 KiB token of 32 grants cost ~2.5 ms of CPU per
# request; ~1.2 KiB for 8 costs what a one-repository token does).
TOKEN_SCOPES_PER_FETCH = 8

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value such as ``Bearer realm="...",service="..."``."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    # A quoted value may hold quoted-pairs (RFC 9110 5.6.4): backslash-escaped characters.
    params = {m.group(1).lower(): re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None
              else m.group(3)
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return Challenge(scheme=scheme.lower(), params=params)


def normalize_scope(scope: str) -> str:
    """``repository:a:push,pull`` and ``repository:a:pull,push`` are one scope: registries list
    actions in no fixed order."""
    head, _, actions = scope.rpartition(":")
    return f"{head}:{','.join(sorted(actions.split(',')))}" if head else scope


class RegistryCredentials(BaseModel):
    """What a credential provider hands the auth flow. ``expires_at`` is a ``time.time()``
    instant (None: valid until the registry refuses it)."""

    model_config = ConfigDict(frozen=True)

    username: str
    password: SecretStr
    expires_at: float | None = None
    # The password is an OAuth2 refresh token, exchanged by POST instead of sent as Basic.
    refresh_token: bool = False

    def usable(self) -> bool:
        return self.expires_at is None or time.time() < self.expires_at - CREDENTIAL_REFRESH_MARGIN_SECONDS

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(raw).decode()


CredentialProvider = Callable[[], Awaitable[RegistryCredentials]]


@dataclass
class _Token:
    value: str
    expires_at: float

    def fresh(self) -> bool:
        return time.monotonic() < self.expires_at


@dataclass(frozen=True)
class Origin:
    """Where the registry lives: the only origin that gets credentials or whose challenge is
    believed. ``scheme`` is None when only ``host[:port]`` is known; then host and port alone
    decide, and the scheme of the registry's own answer stands in for it."""

    scheme: str | None
    netloc: str  # as httpx writes it: lower case, default port dropped

    @classmethod
    def of(cls, registry: str) -> Origin:
        """``registry`` is the registry's URL, or a bare ``host[:port]``."""
        if "://" not in registry:
            return cls(None, registry)
        url = httpx.URL(registry)
        return cls(url.scheme, url.netloc.decode())

    def holds(self, url: httpx.URL) -> bool:
        # httpx drops a default port from netloc, so "https://h" and "https://h:443" match, and
        # "http://h" (port 80) does not match "https://h" because the schemes differ.
        return url.netloc.decode() == self.netloc and self.scheme in (None, url.scheme)


def realm_refusal(realm: str, registry_scheme: str) -> str | None:
    """Why a token realm the registry named must not be used, or None when it may."""
    try:
        url = httpx.URL(realm)
    except httpx.InvalidURL:
        return "names a token realm that is not a URL"
    if url.scheme not in ("http", "https") or not url.host:
        return "names a token realm that is not an http(s) URL"
    if url.userinfo:
        return "names a token realm that carries credentials in its URL"
    if registry_scheme == "https" and url.scheme == "http":
        return (f"is https but names a token realm over plain http ({url.netloc.decode()}): "
                "refusing to send credentials in cleartext")
    return None


class RegistryAuth(httpx.Auth):
    """Auth for one registry. Shared by every request of one client; coroutine-safe.

    ``registry`` is the registry's URL (its origin is what counts). A bare ``host[:port]`` is
    accepted too, but then an http answer on the same host and default port passes for an
    https registry's own: callers should pass the URL."""

    def __init__(
        self,
        registry: str,
        username: str | None = None,
        password: SecretStr | None = None,
        *,
        token_client: httpx.AsyncClient,
    ) -> None:
        self._home = Origin.of(registry)
        self._host = self._home.netloc
        self._username = username  # for the repr; the password lives only in _static
        self._static = (RegistryCredentials(username=username, password=password)
                        if username is not None and password is not None else None)
        self._provider: CredentialProvider | None = None
        self._provided: RegistryCredentials | None = None
        self._provider_lock = asyncio.Lock()
        self._token_client = token_client
        self._bearer: Challenge | None = None  # realm/service, learned from the first challenge
        self._basic_only = False
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        # resource ("repository:a/b") -> a prefetched token asked for it, and with which actions
        self._shared: dict[str, tuple[frozenset[str], _Token]] = {}
        # resource -> a prefetch under way that asked for it: a request for it waits for that
        # fetch instead of starting one of its own (the tokens arrive batch by batch).
        self._pending: dict[str, tuple[frozenset[str], asyncio.Task[_Token]]] = {}
        self._under_way: set[asyncio.Future[Any]] = set()  # held here: the loop keeps weak references
        self.token_fetches = 0  # for tests and benchmarks: how often we asked the realm
        self.trace: RequestTrace | None = None  # the client's request trace, when benchmarks ask
        self.credential_fetches = 0  # how often the credential provider was asked

    def __repr__(self) -> str:
        return f"RegistryAuth(host={self._host!r}, user={self._username!r})"

    def use_credential_provider(self, provider: CredentialProvider) -> None:
        """From now on take credentials from ``provider`` instead of the static user and
        password; tokens obtained with the old credentials are forgotten."""
        self._provider = provider
        self._provided = None
        self._tokens.clear()
        self._forget_prefetched()

    def learn_challenge(self, response: httpx.Response) -> None:
        """The registry's own 401 to an anonymous request names its token service: remember it,
        so that tokens can be fetched before the first request that needs one. A realm that
        would get credentials in cleartext is not learnt (the request flow refuses it)."""
        if response.status_code != 401 or self._bearer is not None or not self._home.holds(response.url):
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if (challenge is not None and challenge.scheme == "bearer" and "realm" in challenge.params
                and realm_refusal(challenge.params["realm"], response.url.scheme) is None):
            self._bearer = challenge

    @property
    def knows_realm(self) -> bool:
        """A registry that asked for a bearer token: prefetch can do something."""
        return self._bearer is not None and not self._basic_only

    def start_prefetch(self, scopes: Sequence[str]) -> asyncio.Future[None]:
        """Tokens for many scopes in few fetches, ahead of the requests that need them: one
        fetch per TOKEN_SCOPES_PER_FETCH repositories instead of one per repository (a round
        trip each, on the path of that repository's first request). Returns as soon as the
        fetches are under way: a request that needs one of these scopes meanwhile waits for its
        batch's token, not for every batch. A request whose scopes one such token was asked for
        uses it; a registry that refuses it (the token service granted less than asked) gets a
        token of its own, as without prefetch. The future is done when every batch is (a failed
        batch leaves its scopes to the requests)."""
        if not self.knows_realm:
            return finished()
        wanted = [s for s in dict.fromkeys(normalize_scope(s) for s in scopes)
                  if self._covering((s,)) is None and self._pending_for((s,)) is None
                  and not self._fresh_exact((s,))]
        batches = [tuple(wanted[i:i + TOKEN_SCOPES_PER_FETCH])
                   for i in range(0, len(wanted), TOKEN_SCOPES_PER_FETCH)]
        if not batches:
            return finished()
        fetches = []
        for batch in batches:
            fetch = asyncio.ensure_future(self._token_for(batch))
            grants = {resource: frozenset(actions.split(","))
                      for resource, _, actions in (scope.rpartition(":") for scope in batch)}
            for resource, actions in grants.items():
                self._pending[resource] = (actions, fetch)
            fetch.add_done_callback(partial(self._prefetched, grants))
            fetches.append(fetch)
        settled = asyncio.ensure_future(_settled(fetches))
        for future in (*fetches, settled):
            self._under_way.add(future)
            future.add_done_callback(self._under_way.discard)
        return settled

    async def aclose(self) -> None:
        """End the prefetches still under way (their client is closing)."""
        for future in list(self._under_way):
            future.cancel()
        await asyncio.gather(*self._under_way, return_exceptions=True)

    def _prefetched(self, grants: dict[str, frozenset[str]], fetch: asyncio.Task[_Token]) -> None:
        for resource, actions in grants.items():
            if self._pending.get(resource, (None, None))[1] is not fetch:
                continue  # forgotten meanwhile (new credentials, another token service)
            del self._pending[resource]
            if not fetch.cancelled() and fetch.exception() is None:
                self._shared[resource] = (actions, fetch.result())

    def _pending_for(self, scopes: tuple[str, ...]) -> asyncio.Task[_Token] | None:
        """The one prefetch under way that asked for every scope of a request, if any."""
        found: asyncio.Task[_Token] | None = None
        for scope in scopes:
            resource, _, actions = scope.rpartition(":")
            entry = self._pending.get(resource)
            if entry is None or not set(actions.split(",")) <= entry[0]:
                return None
            if found is not None and entry[1] is not found:
                return None
            found = entry[1]
        return found

    def _forget_prefetched(self) -> None:
        self._shared.clear()
        self._pending.clear()  # their fetches still end, but nothing waits for them any more

    def _fresh_exact(self, scopes: tuple[str, ...]) -> bool:
        token = self._tokens.get(scopes)
        return token is not None and token.fresh()

    def _covering(self, scopes: tuple[str, ...]) -> _Token | None:
        """The one prefetched token asked for every scope of a request, if any."""
        found: _Token | None = None
        for scope in scopes:
            resource, _, actions = scope.rpartition(":")
            entry = self._shared.get(resource)
            if entry is None or not set(actions.split(",")) <= entry[0] or not entry[1].fresh():
                return None
            if found is not None and entry[1] is not found:
                return None
            found = entry[1]
        return found

    def _drop_shared(self, scopes: tuple[str, ...]) -> None:
        """A registry refused a prefetched token for these scopes: ask for them alone next."""
        for scope in scopes:
            self._shared.pop(scope.rpartition(":")[0], None)

    @property
    def has_credentials(self) -> bool:
        return self._provider is not None or self._static is not None

    async def _credentials(self) -> RegistryCredentials | None:
        """The static credentials, or the provider's current ones (asked again near expiry)."""
        if self._provider is None:
            return self._static
        async with self._provider_lock:
            current = self._provided
            if current is None or not current.usable():
                self.credential_fetches += 1
                current = await self._provider()
                self._provided = current
            return current

    def _forget(self, refused: RegistryCredentials | None) -> bool:
        """Drop provider credentials the registry refused, so the next use asks for new ones.
        False when there is nothing new to hope for (static, or already replaced)."""
        if self._provider is None or refused is None or self._provided is not refused:
            return False
        self._provided = None
        return True

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("RegistryAuth is used with httpx.AsyncClient only")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not self._home.holds(request.url):
            # An upload location on another host, or any other origin: nothing of ours goes there.
            request.headers.pop("Authorization", None)
            yield request
            return

        scopes = tuple(request.extensions.get(SCOPES_EXTENSION, ()))
        sent = await self._authorize(request, scopes, fetch=self._bearer is not None)
        response = yield request
        # httpx follows redirects inside this step, so the answer may come from another host
        # (object storage): its 401 is that host's business, returned to the caller untouched.
        if response.status_code != 401 or not self._home.holds(response.url):
            return

        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return
        if challenge.scheme == "basic":
            if not self.has_credentials:
                return
            # Refused Basic credentials: only a provider's (revoked or expired early) may be
            # worth replacing; otherwise the caller turns the 401 into an error.
            if "Authorization" in request.headers and not self._forget(sent):
                return
            self._basic_only = True
        elif challenge.scheme == "bearer" and "realm" in challenge.params:
            refusal = realm_refusal(challenge.params["realm"], response.url.scheme)
            if refusal is not None:
                raise AuthenticationError(f"registry {self._host} {refusal}", status=401,
                                          method=request.method,
                                          url=str(response.url.copy_with(query=None)))
            if self._bearer is not None and _realm_of(self._bearer) != _realm_of(challenge):
                self._tokens.clear()  # tokens of another token service are not for this one
                self._forget_prefetched()
            self._bearer = challenge
            # The registry may ask for a different scope than we guessed: ask for both.
            wanted = challenge.params.get("scope")
            if wanted and normalize_scope(wanted) not in {normalize_scope(s) for s in scopes}:
                scopes = (*scopes, wanted)
            self._tokens.pop(scopes, None)
            self._drop_shared(scopes)
        else:
            return
        await self._authorize(request, scopes, fetch=True)
        yield request

    async def _authorize(self, request: httpx.Request, scopes: tuple[str, ...], *,
                         fetch: bool) -> RegistryCredentials | None:
        """Set the request's Authorization; returns the Basic credentials sent, if any."""
        if self._basic_only:
            credentials = await self._credentials()
            if credentials is not None and not credentials.refresh_token:
                request.headers["Authorization"] = credentials.basic_header()
                return credentials
            return None
        if self._bearer is None:
            return None
        token = self._tokens.get(scopes)
        if token is not None and not token.fresh():
            token = None
        if token is None and scopes:
            token = self._covering(scopes)
        if token is None and fetch and scopes and (under_way := self._pending_for(scopes)) is not None:
            # Its batch is being fetched: wait for that answer rather than ask again. The shield
            # keeps this request's cancellation from cancelling the batch the others wait for.
            try:
                token = await asyncio.shield(under_way)
            except Exception:
                token = None  # that batch failed: this request asks for itself, as without prefetch
        if token is None and fetch:
            # A token just issued is used even when its lifetime is within the refresh margin
            # (or issued_at looks old through clock skew); the next request fetches a new one.
            token = await self._token_for(scopes)
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"
        return None

    async def _token_for(self, scopes: tuple[str, ...]) -> _Token:
        lock = self._locks.setdefault(scopes, asyncio.Lock())
        async with lock:
            token = self._tokens.get(scopes)
            if token is not None and token.fresh():
                return token  # another coroutine fetched it while we waited
            credentials = await self._credentials()
            try:
                token = await self._fetch_token(scopes, credentials)
            except AuthenticationError as exc:
                # A provider's credentials refused by the token service: ask for new ones once.
                if exc.status != 401 or not self._forget(credentials):
                    raise
                token = await self._fetch_token(scopes, await self._credentials())
            self._tokens[scopes] = token
            return token

    async def _fetch_token(self, scopes: tuple[str, ...], credentials: RegistryCredentials | None) -> _Token:
        assert self._bearer is not None
        realm = self._bearer.params["realm"]
        service = self._bearer.params.get("service")
        self.token_fetches += 1
        if credentials is not None and credentials.refresh_token:
            # distribution's OAuth2 token flow: scopes space-separated in one form field.
            form = {"grant_type": "refresh_token", "client_id": OAUTH_CLIENT_ID,
                    "refresh_token": credentials.password.get_secret_value()}
            if service is not None:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            request = self._token_client.build_request("POST", realm, data=form)
        else:
            params: list[tuple[str, str | int | float | bool | None]] = []
            if service is not None:
                params.append(("service", service))
            params.extend(("scope", s) for s in scopes)
            headers = {"Authorization": credentials.basic_header()} if credentials is not None else {}
            request = self._token_client.build_request("GET", realm, params=params, headers=headers)
        token_host = request.url.netloc.decode()
        sent, answered = time.time(), "error"
        try:
            async with within(what=f"token service {token_host}"):
                try:
                    response = await self._token_client.send(request, stream=True)
                    answered = str(response.status_code)
                finally:
                    if self.trace is not None:
                        self.trace.add(sent, request.method, "", answered, bulk=False, kind="token")
                try:
                    self._check_token_status(response, realm)
                    raw = await read_capped(response, MAX_TOKEN_RESPONSE_BYTES,
                                            what=f"token service {token_host}")
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:
            raise TransportError(f"token service {token_host} unreachable: "
                                 f"{type(exc).__name__}") from None
        try:
            body = json.loads(raw)
            value = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"token service for {self._host} sent no token",
                                      status=response.status_code, method=request.method, url=realm)
        return _Token(value=value, expires_at=_expiry(body))

    def _check_token_status(self, response: httpx.Response, realm: str) -> None:
        method = response.request.method
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"token service refused the credentials for {self._host}",
                status=response.status_code, method=method, url=realm,
            )
        if response.status_code != 200:
            raise AuthenticationError(
                f"token service answered {response.status_code} for {self._host}",
                status=response.status_code, method=method, url=realm,
                transient=response.status_code >= 500,
            )


def finished() -> asyncio.Future[None]:
    """A prefetch with nothing to fetch: already done."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def _settled(fetches: list[asyncio.Task[_Token]]) -> None:
    """Every batch ended; a failure is left to the requests that needed it, which fetch for
    themselves (prefetch is best effort)."""
    await asyncio.gather(*fetches, return_exceptions=True)


def _realm_of(challenge: Challenge) -> tuple[str | None, str | None]:
    return challenge.params.get("realm"), challenge.params.get("service")


def _expiry(body: dict[str, object]) -> float:
    """Monotonic deadline from ``issued_at`` + ``expires_in`` (spec default 60 s)."""
    raw = body.get("expires_in")
    lifetime = float(raw) if isinstance(raw, int | float) and raw > 0 else DEFAULT_TOKEN_LIFETIME_SECONDS
    issued = body.get("issued_at")
    age = 0.0
    if isinstance(issued, str):
        try:
            age = max(0.0, time.time() - datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp())
        except ValueError:
            age = 0.0
    return time.monotonic() + lifetime - age - TOKEN_EXPIRY_MARGIN_SECONDS
