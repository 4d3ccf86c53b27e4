"""Docker Hub: the bytes through registry-1.docker.io (plain distribution, token auth at
auth.docker.io), everything the spec lacks through hub.docker.com's API.

* Listing: ``/v2/repositories/{namespace}/`` page by page (``next``), for the namespaces the
  adapter was given, else those the account can see (``/v2/repositories/namespaces/``).
  Literal names are used as they are, with no API call.
* Names: a single-component name is an official image, ``nginx`` = ``library/nginx`` on the
  wire; the rest of regflow keeps the name the user wrote.
* Targets: exactly ``namespace/name``. Hub creates the repository on first push but never the
  namespace, and its API cannot create organisations: ``prepare_for_push`` checks that each
  namespace is one the account can push to, and says so clearly when it is not.
* Pull rate limit: manifest answers carry ``RateLimit-Remaining: 76;w=21600``. At 0, every
  request to Hub holds for ``RATE_LIMIT_HOLD_SECONDS`` and manifest GETs (the metered
  request) are refused meanwhile with a transient RateLimitedError that names the limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from adapters.base import AdapterInfo
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, ContentError, RateLimitedError
from adapters.native import NativeAdapter
from adapters.oci import Manifest
from adapters.vendor_api import ApiResponse, HostBoundAuth, VendorApi

logger = logging.getLogger(__name__)

HUB_REGISTRY_URL = "https://registry-1.docker.io"
HUB_API_URL = "https://hub.docker.com"
# Every name users give Docker Hub: all of them mean the registry above and the API above.
HUB_HOSTS = frozenset({"docker.io", "hub.docker.com", "index.docker.io", "registry-1.docker.io",
                       "registry.hub.docker.com"})
# Hub's own maximum page size: fewest requests per namespace.
HUB_PAGE_SIZE = 100
# Hub access tokens live a few minutes; when one does not say (no readable ``exp``), renew
# after this long. A 401 renews earlier anyway.
HUB_TOKEN_FALLBACK_LIFETIME_SECONDS = 5 * 60.0
# Renew this long before the token's own expiry, so that no request races it.
HUB_TOKEN_MARGIN_SECONDS = 30.0
# Hub's window is six rolling hours, so a pull comes back now and then, never all at once:
# hold for a minute (within the client's MAX_HOLD_SECONDS), then let the next answer re-read
# the count, rather than spend refused requests or stall a run for hours.
RATE_LIMIT_HOLD_SECONDS = 60.0
OFFICIAL_NAMESPACE = "library"


class HubRepository(BaseModel):
    name: str
    namespace: str | None = None


class HubRepositoryPage(BaseModel):
    next: str | None = None
    results: list[HubRepository] = []


class HubNamespaces(BaseModel):
    namespaces: list[str] = []


class HubLoginAnswer(BaseModel):
    access_token: str | None = None  # /v2/auth/token
    token: str | None = None  # the older /v2/users/login, still served by Hub mirrors of it


def registry_endpoint(endpoint: Endpoint) -> Endpoint:
    """Where the bytes are: any of Hub's names means registry-1.docker.io; any other URL (a
    mirror of Hub, a test double) is used as it is."""
    if httpx.URL(endpoint.url).host in HUB_HOSTS:
        return endpoint.model_copy(update={"url": HUB_REGISTRY_URL})
    return endpoint


def parse_quota(value: str | None) -> tuple[int, int | None] | None:
    """``100;w=21600`` -> (100, 21600); None when absent or unreadable."""
    if not value:
        return None
    count, *params = (part.strip() for part in value.split(";"))
    if not count.isdigit():
        return None
    window = next((int(p[2:]) for p in params if p.startswith("w=") and p[2:].isdigit()), None)
    return int(count), window


class PullRateLimit:
    """Docker Hub's pull allowance as its answers report it, and the hold once it is spent."""

    def __init__(self, *, hold_seconds: float = RATE_LIMIT_HOLD_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_seconds = hold_seconds
        self._clock = clock
        self.limit: int | None = None
        self.remaining: int | None = None
        self.window: int | None = None
        self._spent_until = 0.0

    def __repr__(self) -> str:
        return f"PullRateLimit({self.describe()})"

    def describe(self) -> str:
        if self.limit is None:
            return "limit unknown"
        per = f" per {self.window} s" if self.window else ""
        return f"{self.remaining if self.remaining is not None else '?'} of {self.limit} pulls{per} left"

    def observe(self, response: httpx.Response) -> float | None:
        """The client's response observer: read the headers; at 0 (or a 429), hold."""
        limit = parse_quota(response.headers.get("RateLimit-Limit"))
        remaining = parse_quota(response.headers.get("RateLimit-Remaining"))
        if limit is not None:
            self.limit, self.window = limit[0], limit[1] or self.window
        if remaining is not None:
            self.remaining = remaining[0]
            self.window = remaining[1] or self.window
        spent = response.status_code == 429 or (remaining is not None and remaining[0] <= 0)
        if not spent:
            if remaining is not None:
                self._spent_until = 0.0
            return None
        if self._clock() >= self._spent_until:
            logger.warning("Docker Hub pull rate limit reached (%s): holding requests for %.0f s",
                           self.describe(), self.hold_seconds)
        self._spent_until = self._clock() + self.hold_seconds
        return self.hold_seconds

    def check(self, what: str) -> None:
        """Refuse a metered request (a manifest GET) while the allowance is spent."""
        left = self._spent_until - self._clock()
        if left > 0:
            raise RateLimitedError(
                f"Docker Hub pull rate limit reached ({self.describe()}): not pulling {what} for "
                f"another {left:.0f} s; authenticate, or use an account with a higher limit",
                method="GET", url=what, retry_after=left,
            )


class HubRegistryClient(DistributionClient):
    """The distribution client with Hub's two quirks: official names and the pull limit."""

    def __init__(self, endpoint: Endpoint, *, rate_limit: PullRateLimit,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(endpoint, transport=transport, response_observer=rate_limit.observe)
        self.rate_limit = rate_limit

    def remote_name(self, repository: str) -> str:
        return repository if "/" in repository else f"{OFFICIAL_NAMESPACE}/{repository}"

    async def get_manifest(self, repository: str, ref: str) -> Manifest:
        self.rate_limit.check(f"{repository}:{ref}" if ":" not in ref else f"{repository}@{ref}")
        return await super().get_manifest(repository, ref)


class HubLogin(HostBoundAuth):
    """A Hub API access token from ``POST /v2/auth/token`` (user name and password or personal
    access token), reused until shortly before it expires, renewed on a 401."""

    def __init__(self, host: str, login: Callable[[], Awaitable[str]], *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(host)
        self._login = login
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.logins = 0

    def __repr__(self) -> str:
        return f"HubLogin(host={self.host!r})"

    async def authorize(self, request: httpx.Request) -> None:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                await self._fetch()
        assert self._token is not None
        request.headers["Authorization"] = f"Bearer {self._token}"

    async def renew(self) -> bool:
        async with self._lock:
            await self._fetch()
        return True

    async def _fetch(self) -> None:
        token = await self._login()
        self.logins += 1
        self._token = token
        self._expires_at = _jwt_expiry(token, self._clock()) - HUB_TOKEN_MARGIN_SECONDS


def _jwt_expiry(token: str, now: float) -> float:
    """The ``exp`` claim of a JWT, read without verifying it (only to know when to renew)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError, binascii.Error):
        exp = None
    if isinstance(exp, int | float) and exp > now:
        return float(exp)
    return now + HUB_TOKEN_FALLBACK_LIFETIME_SECONDS


class DockerHubAdapter(NativeAdapter):
    info = AdapterInfo(
        type="docker-hub",
        options=("api_url", "namespaces"),
        description="Docker Hub (registry-1.docker.io; listing and namespaces through the "
                    "hub.docker.com API; pull rate limit respected)",
        # Hub's repository webhooks are one of the receiver's three formats.
        triggers=("manual", "scheduled", "event_based"),
        min_path_components=2,
        max_path_components=2,
        # Hub's registry refuses manifest DELETE; its API deletes tags, which regflow does not
        # drive (yet).
        supports_tag_deletion=False,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_url: str = HUB_API_URL,
        namespaces: Sequence[str] | None = None,
        rate_limit_hold_seconds: float = RATE_LIMIT_HOLD_SECONDS,
    ) -> None:
        # NativeAdapter.__init__ is not called: the client here is Hub's, on Hub's registry URL.
        self.endpoint = registry_endpoint(endpoint)
        self.rate_limit = PullRateLimit(hold_seconds=rate_limit_hold_seconds)
        self.client = HubRegistryClient(self.endpoint, rate_limit=self.rate_limit, transport=transport)
        self._credentials = endpoint.username is not None and endpoint.password is not None
        self.api = VendorApi(api_url, endpoint, transport=transport,
                             auth=(lambda host: HubLogin(host, self._login)) if self._credentials else None)
        self._namespaces = tuple(namespaces) if namespaces else None
        self._pushable: list[str] | None = None

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.api.aclose()

    async def _login(self) -> str:
        assert self.endpoint.username is not None and self.endpoint.password is not None
        answer = await self.api.request(
            "POST", "/v2/auth/token", ok=(200, 201), authenticate=False,
            json_body={"identifier": self.endpoint.username,
                       "secret": self.endpoint.password.get_secret_value()},
        )
        login = answer.parse(HubLoginAnswer)
        token = login.access_token or login.token
        if not token:
            raise ContentError(f"{self.api.host} login answered without an access token")
        return token

    async def walk_repositories(self) -> AsyncIterator[str]:
        for namespace in self._namespaces or await self._account_namespaces():
            async for page in self.api.pages(f"/v2/repositories/{quote(namespace, safe='')}/",
                                             _next_repositories, params={"page_size": HUB_PAGE_SIZE}):
                for repository in page.parse(HubRepositoryPage).results:
                    yield f"{repository.namespace or namespace}/{repository.name}"

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Hub makes the repository on first push, never the namespace: check each is ours."""
        wanted = sorted({name.split("/")[0] for name in repositories})
        if not wanted:
            return
        if not self._credentials:
            raise ConfigError("pushing to Docker Hub needs credentials: a user name and a "
                              "personal access token", field="credential")
        pushable = await self._account_namespaces()
        foreign = [ns for ns in wanted if ns.lower() not in {p.lower() for p in pushable}]
        if foreign:
            raise ConfigError(
                f"Docker Hub namespace(s) {', '.join(foreign)} are not among those "
                f"{self.endpoint.username!r} can push to ({', '.join(pushable)}). Docker Hub "
                "creates repositories on push but never namespaces, and regflow cannot create "
                "organisations: create it on hub.docker.com, or change dest_namespace",
                field="dest_namespace",
            )

    async def _account_namespaces(self) -> list[str]:
        """The account's own name and the organisations it belongs to, asked once."""
        if self._pushable is not None:
            return self._pushable
        if not self._credentials:
            raise ConfigError("Docker Hub lists repositories only for an account: give "
                              "credentials, or name the repositories in the policy's name filter",
                              field="credential")
        assert self.endpoint.username is not None
        answer = await self.api.get("/v2/repositories/namespaces/", ok=(200, 404))
        listed = answer.parse(HubNamespaces).namespaces if answer.status == 200 else []
        self._pushable = list(dict.fromkeys([self.endpoint.username.lower(), *listed]))
        return self._pushable


def _next_repositories(page: ApiResponse) -> str | None:
    return page.parse(HubRepositoryPage).next
