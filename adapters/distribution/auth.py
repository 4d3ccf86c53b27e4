"""Registry authentication as an ``httpx.Auth``: anonymous, basic, and the bearer challenge.

The client tags each request with the scopes it needs (``request.extensions["regflow.scopes"]``);
this flow then

1. sends nothing secret to any host but the registry's own (a blob GET that redirects to
   object storage reaches it without ``Authorization``);
2. adds a cached token for exactly those scopes, or fetches one up front once the registry has
   told us its realm, so each new repository costs one token fetch and no extra 401;
3. on a 401, reads the ``WWW-Authenticate`` challenge, gets a token (or switches to basic) and
   sends the request once more.

Requests with a body that cannot be replayed (streamed blob uploads) only work if the scope was
authorised beforehand, which the client arranges by starting every upload with a POST.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from datetime import datetime

import httpx
from pydantic import SecretStr

from adapters.errors import AuthenticationError, TransportError

SCOPES_EXTENSION = "regflow.scopes"

# Tokens are refreshed this long before they expire, so a request never races the expiry.
TOKEN_EXPIRY_MARGIN_SECONDS = 10.0
# The distribution token spec's default lifetime when the server omits expires_in.
DEFAULT_TOKEN_LIFETIME_SECONDS = 60.0
# A token service answer larger than this is not a token.
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

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


@dataclass
class _Token:
    value: str
    expires_at: float

    def fresh(self) -> bool:
        return time.monotonic() < self.expires_at


class RegistryAuth(httpx.Auth):
    """Auth for one registry host. Shared by every request of one client; coroutine-safe."""

    def __init__(
        self,
        registry_host: str,
        username: str | None = None,
        password: SecretStr | None = None,
        *,
        token_client: httpx.AsyncClient,
    ) -> None:
        self._host = registry_host
        self._username = username
        self._password = password
        self._token_client = token_client
        self._bearer: Challenge | None = None  # realm/service, learned from the first challenge
        self._basic_only = False
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self.token_fetches = 0  # for tests and benchmarks: how often we asked the realm

    def __repr__(self) -> str:
        return f"RegistryAuth(host={self._host!r}, user={self._username!r})"

    @property
    def has_credentials(self) -> bool:
        return self._username is not None and self._password is not None

    def _basic_header(self) -> str:
        assert self._username is not None and self._password is not None
        raw = f"{self._username}:{self._password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("RegistryAuth is used with httpx.AsyncClient only")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if request.url.netloc.decode() != self._host:
            # A redirect to storage or any other host: nothing of ours travels with it.
            request.headers.pop("Authorization", None)
            yield request
            return

        scopes = tuple(request.extensions.get(SCOPES_EXTENSION, ()))
        await self._authorize(request, scopes, fetch=self._bearer is not None)
        response = yield request
        if response.status_code != 401:
            return

        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return
        if challenge.scheme == "basic":
            if not self.has_credentials or "Authorization" in request.headers:
                return  # nothing new to offer; the caller turns the 401 into an error
            self._basic_only = True
        elif challenge.scheme == "bearer" and "realm" in challenge.params:
            self._bearer = challenge
            # The registry may ask for a different scope than we guessed: ask for both.
            wanted = challenge.params.get("scope")
            if wanted and normalize_scope(wanted) not in {normalize_scope(s) for s in scopes}:
                scopes = (*scopes, wanted)
            self._tokens.pop(scopes, None)
        else:
            return
        await self._authorize(request, scopes, fetch=True)
        yield request

    async def _authorize(self, request: httpx.Request, scopes: tuple[str, ...], *, fetch: bool) -> None:
        if self._basic_only and self.has_credentials:
            request.headers["Authorization"] = self._basic_header()
            return
        if self._bearer is None:
            return
        token = self._tokens.get(scopes)
        if token is not None and not token.fresh():
            token = None
        if token is None and fetch:
            # A token just issued is used even when its lifetime is within the refresh margin
            # (or issued_at looks old through clock skew); the next request fetches a new one.
            token = await self._token_for(scopes)
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"

    async def _token_for(self, scopes: tuple[str, ...]) -> _Token:
        lock = self._locks.setdefault(scopes, asyncio.Lock())
        async with lock:
            token = self._tokens.get(scopes)
            if token is not None and token.fresh():
                return token  # another coroutine fetched it while we waited
            token = await self._fetch_token(scopes)
            self._tokens[scopes] = token
            return token

    async def _fetch_token(self, scopes: tuple[str, ...]) -> _Token:
        assert self._bearer is not None
        realm = self._bearer.params["realm"]
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in self._bearer.params:
            params.append(("service", self._bearer.params["service"]))
        params.extend(("scope", s) for s in scopes)
        headers = {"Authorization": self._basic_header()} if self.has_credentials else {}
        self.token_fetches += 1
        try:
            response = await self._token_client.get(realm, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise TransportError(f"token service {httpx.URL(realm).host} unreachable: "
                                 f"{type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"token service refused the credentials for {self._host}",
                status=response.status_code, method="GET", url=realm,
            )
        if response.status_code != 200 or len(response.content) > MAX_TOKEN_RESPONSE_BYTES:
            raise AuthenticationError(
                f"token service answered {response.status_code} for {self._host}",
                status=response.status_code, method="GET", url=realm,
                transient=response.status_code >= 500,
            )
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"token service for {self._host} sent no token",
                                      status=response.status_code, method="GET", url=realm)
        return _Token(value=value, expires_at=_expiry(body))


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
