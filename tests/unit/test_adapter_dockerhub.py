"""DockerHubAdapter against a fake of hub.docker.com's API and registry-1.docker.io, shaped after
Docker's public API reference (``POST /v2/auth/token``, ``/v2/repositories/{namespace}/``
paged by ``next``, ``RateLimit-*`` headers on manifest answers)."""

from __future__ import annotations

import base64
import json
import re
import time

import httpx
import pytest
from pydantic import SecretStr

from adapters.dockerhub import (
    HUB_REGISTRY_URL,
    DockerHubAdapter,
    PullRateLimit,
    parse_quota,
    registry_endpoint,
)
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, ContentError, RateLimitedError, ServerError
from adapters.oci import OCI_MANIFEST, Digest
from tests.support.vendor_fakes import FakeTokenRegistry, Router, basic_user, reply

API = "hub.docker.com"
REGISTRY = "registry-1.docker.io"
AUTH = "auth.docker.io"
USER = "alice"
PAT = "dckr_pat_never-shown-0123"


def jwt(exp: float) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256'})}.{part({'sub': USER, 'exp': int(exp)})}.c2ln"


class FakeHub:
    """hub.docker.com: login, namespaces, repositories by namespace (two per page)."""

    def __init__(self, repositories: dict[str, list[str]], *, namespaces: list[str] | None = None,
                 token_lifetime: float = 600) -> None:
        self.repositories = repositories
        self.namespaces = namespaces
        self.token_lifetime = token_lifetime
        self.tokens: list[str] = []
        self.revoked: set[str] = set()

    def install(self, router: Router) -> None:
        router.add("POST", API, r"/v2/auth/token", self.login)
        router.add("GET", API, r"/v2/repositories/namespaces/", self.list_namespaces)
        router.add("GET", API, r"/v2/repositories/(?P<ns>[^/]+)/", self.list_repositories)

    def login(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body != {"identifier": USER, "secret": PAT}:
            return reply(401, body={"detail": "Incorrect authentication credentials",
                                    "message": "Incorrect authentication credentials"})
        token = jwt(time.time() + self.token_lifetime) + f".{len(self.tokens)}"
        self.tokens.append(token)
        return reply(200, body={"access_token": token})

    def authorised(self, request: httpx.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens and header[7:] not in self.revoked

    def list_namespaces(self, request: httpx.Request) -> httpx.Response:
        if not self.authorised(request):
            return reply(401, body={"detail": "authentication required"})
        if self.namespaces is None:
            return reply(404, body={"detail": "Not found."})
        return reply(body={"namespaces": self.namespaces})

    def list_repositories(self, request: httpx.Request) -> httpx.Response:
        if "Authorization" in request.headers and not self.authorised(request):
            return reply(401, body={"detail": "Token is invalid or expired"})  # public needs none
        namespace = request.url.path.split("/")[3]
        names = self.repositories.get(namespace)
        if names is None:
            return reply(404, body={"message": "object not found", "errinfo": {}})
        size = 2  # smaller than the asked page_size, as if Hub capped it: forces paging
        page = int(request.url.params.get("page", "1"))
        chunk = names[(page - 1) * size:page * size]
        more = page * size < len(names)
        nxt = f"https://{API}/v2/repositories/{namespace}/?page={page + 1}&page_size=100" if more else None
        return reply(body={"count": len(names), "next": nxt, "previous": None,
                           "results": [{"name": n, "namespace": namespace, "repository_type": "image"}
                                       for n in chunk]})


def hub_endpoint(*, credentials: bool = True) -> Endpoint:
    return Endpoint(url="https://hub.docker.com", username=USER if credentials else None,
                    password=SecretStr(PAT) if credentials else None)


def make_adapter(router: Router, *, credentials: bool = True, namespaces: list[str] | None = None,
                 hold: float = 60.0) -> DockerHubAdapter:
    return DockerHubAdapter(hub_endpoint(credentials=credentials), transport=router.transport(),
                            namespaces=namespaces, rate_limit_hold_seconds=hold)


# -- registry URL and names --------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://hub.docker.com", "https://docker.io", "https://index.docker.io",
                                 "https://registry-1.docker.io"])
def test_every_name_of_docker_hub_means_registry_1(url: str) -> None:
    assert registry_endpoint(Endpoint(url=url)).url == HUB_REGISTRY_URL


def test_another_url_is_a_mirror_and_kept() -> None:
    assert registry_endpoint(Endpoint(url="http://127.0.0.1:5000")).url == "http://127.0.0.1:5000"


def test_adapter_info_is_docker_hubs() -> None:
    info = DockerHubAdapter.info
    assert info.type == "docker-hub"
    assert (info.min_path_components, info.max_path_components) == (2, 2)
    assert "event_based" in info.triggers
    assert info.filters == ("name", "tag")


@pytest.mark.parametrize(("value", "parsed"), [
    ("100;w=21600", (100, 21600)), ("0;w=21600", (0, 21600)), ("76", (76, None)),
    (" 5 ; w=60 ", (5, 60)), ("", None), (None, None), ("many;w=1", None),
])
def test_rate_limit_header_format(value: str | None, parsed: tuple[int, int | None] | None) -> None:
    assert parse_quota(value) == parsed


async def test_official_images_are_library_on_the_wire_and_the_registry_token_uses_the_pat() -> None:
    router = Router()
    registry = FakeTokenRegistry(REGISTRY, AUTH, {USER: PAT}, service="registry.docker.io",
                                 tags={"library/nginx": ["1.27", "latest"], "alice/app": ["v1"]})
    registry.install(router)
    adapter = make_adapter(router)
    try:
        assert await adapter.list_tags("nginx") == ["1.27", "latest"]
        assert await adapter.list_tags("alice/app") == ["v1"]
    finally:
        await adapter.aclose()

    paths = [r.url.path for r in router.to(REGISTRY)]
    assert "/v2/library/nginx/tags/list" in paths
    assert "/v2/nginx/tags/list" not in paths
    assert registry.token_requests == [
        (USER, ("repository:library/nginx:pull",)), (USER, ("repository:alice/app:pull",))]
    # The PAT went to the realm as Basic, never to the registry itself.
    assert all(basic_user(r) is None for r in router.to(REGISTRY))
    assert router.to(API) == []  # tags come from the registry: no Hub API call


# -- listing and login -------------------------------------------------------------------------


async def test_listing_logs_in_once_and_pages_through_every_namespace_of_the_account() -> None:
    router = Router()
    hub = FakeHub({"alice": ["a1", "a2", "a3"], "acme": ["web", "api", "db", "cache", "q"]},
                  namespaces=["alice", "acme"])
    hub.install(router)
    adapter = make_adapter(router)
    try:
        names = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()

    assert names == ["alice/a1", "alice/a2", "alice/a3",
                     "acme/web", "acme/api", "acme/db", "acme/cache", "acme/q"]
    logins = [r for r in router.requests if r.url.path == "/v2/auth/token"]
    assert len(logins) == 1
    assert "Authorization" not in logins[0].headers  # the login carries the PAT in its body only
    listing = [r for r in router.requests if r.url.path.startswith("/v2/repositories/")]
    assert len(listing) == 1 + 2 + 3  # namespaces, alice's 2 pages, acme's 3 pages
    assert {r.headers["Authorization"] for r in listing} == {f"Bearer {hub.tokens[0]}"}
    assert listing[1].url.params["page_size"] == "100"


async def test_literal_names_need_no_api_call() -> None:
    router = Router()
    adapter = make_adapter(router)
    try:
        names = [n async for n in adapter.list_repositories(["nginx", "alice/app"])]
    finally:
        await adapter.aclose()
    assert names == ["nginx", "alice/app"]
    assert router.requests == []


async def test_given_namespaces_are_listed_without_asking_for_the_accounts() -> None:
    router = Router()
    FakeHub({"bitnami": ["redis"]}).install(router)
    adapter = make_adapter(router, credentials=False, namespaces=["bitnami"])
    try:
        names = [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert names == ["bitnami/redis"]
    assert [r.url.path for r in router.requests] == ["/v2/repositories/bitnami/"]
    assert "Authorization" not in router.requests[0].headers


async def test_a_revoked_token_is_renewed_once_and_the_request_repeated() -> None:
    router = Router()
    hub = FakeHub({"alice": ["a1"]})
    hub.install(router)
    adapter = make_adapter(router, namespaces=["alice"])
    try:
        assert [n async for n in adapter.list_repositories()] == ["alice/a1"]
        hub.revoked.add(hub.tokens[0])
        assert [n async for n in adapter.list_repositories()] == ["alice/a1"]
    finally:
        await adapter.aclose()
    assert len(hub.tokens) == 2
    statuses = [(path, authorization[-2:]) for _, path, authorization in router.sent]
    assert statuses == [("/v2/auth/token", ""), ("/v2/repositories/alice/", ".0"),
                        ("/v2/repositories/alice/", ".0"), ("/v2/auth/token", ""),
                        ("/v2/repositories/alice/", ".1")]


async def test_refused_login_is_an_authentication_error_without_the_secret() -> None:
    router = Router()
    FakeHub({}, namespaces=[]).install(router)
    adapter = DockerHubAdapter(Endpoint(url="https://hub.docker.com", username=USER,
                                        password=SecretStr("wrong-" + PAT)),
                               transport=router.transport())
    try:
        with pytest.raises(AuthenticationError) as info:
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.status == 401
    assert "Incorrect authentication credentials" in str(info.value)
    assert PAT not in str(info.value)
    assert not info.value.transient


async def test_anonymous_listing_without_namespaces_is_refused_clearly() -> None:
    router = Router()
    adapter = make_adapter(router, credentials=False)
    try:
        with pytest.raises(ConfigError, match="name the repositories"):
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert router.requests == []


async def test_a_next_link_to_another_host_is_not_followed() -> None:
    router = Router()
    hub = FakeHub({}, namespaces=["alice"])
    hub.install(router)
    router.routes.insert(0, ("GET", API, re.compile(r"/v2/repositories/alice/"), lambda r: reply(body={
        "next": "https://evil.example/v2/repositories/alice/?page=2", "results": [{"name": "a1"}]})))
    adapter = make_adapter(router)
    try:
        with pytest.raises(ContentError, match=r"evil\.example"):
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert router.to("evil.example") == []


async def test_server_errors_of_the_api_are_transient() -> None:
    router = Router()
    hub = FakeHub({}, namespaces=["alice"])
    hub.install(router)
    router.routes.insert(0, ("GET", API, re.compile(r"/v2/repositories/alice/"),
                             lambda r: reply(503, content=b"<html>upstream unavailable</html>")))
    adapter = make_adapter(router)
    try:
        with pytest.raises(ServerError) as info:
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.transient
    assert "upstream unavailable" in str(info.value)


# -- namespaces for push ------------------------------------------------------------------------


async def test_push_into_the_accounts_own_namespaces_is_prepared() -> None:
    router = Router()
    FakeHub({}, namespaces=["alice", "acme"]).install(router)
    adapter = make_adapter(router)
    try:
        await adapter.prepare_for_push(["alice/app", "acme/web", "ACME/api"])
    finally:
        await adapter.aclose()
    assert [r.url.path for r in router.requests] == ["/v2/auth/token", "/v2/repositories/namespaces/"]


async def test_push_into_a_foreign_namespace_is_refused_because_hub_cannot_create_one() -> None:
    router = Router()
    FakeHub({}, namespaces=["alice", "acme"]).install(router)
    adapter = make_adapter(router)
    try:
        with pytest.raises(ConfigError) as info:
            await adapter.prepare_for_push(["alice/app", "someone-else/app"])
    finally:
        await adapter.aclose()
    message = str(info.value)
    assert "someone-else" in message and "never namespaces" in message
    assert info.value.field == "dest_namespace"
    assert all(r.method != "POST" or r.url.path == "/v2/auth/token" for r in router.requests)


async def test_without_the_namespaces_api_the_user_name_is_the_only_namespace() -> None:
    router = Router()
    FakeHub({}, namespaces=None).install(router)
    adapter = make_adapter(router)
    try:
        await adapter.prepare_for_push(["alice/app"])
        with pytest.raises(ConfigError, match="acme"):
            await adapter.prepare_for_push(["acme/app"])
    finally:
        await adapter.aclose()


async def test_anonymous_push_is_refused_before_any_request() -> None:
    router = Router()
    adapter = make_adapter(router, credentials=False)
    try:
        with pytest.raises(ConfigError, match="credentials"):
            await adapter.prepare_for_push(["alice/app"])
    finally:
        await adapter.aclose()
    assert router.requests == []


# -- pull rate limit ---------------------------------------------------------------------------


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": Digest.of(b"{}"), "size": 2},
                       "layers": []}).encode()


class MeteredRegistry:
    """Anonymous registry-1 whose manifest GETs count down a pull allowance."""

    def __init__(self, allowance: int, limit: int = 100) -> None:
        self.remaining = allowance
        self.limit = limit

    def install(self, router: Router) -> None:
        router.add("GET", REGISTRY, r"/v2/.+/manifests/.+", self.manifest)
        router.add("HEAD", REGISTRY, r"/v2/.+/blobs/.+",
                   lambda r: reply(200, headers={"Content-Length": "2"}))

    def manifest(self, request: httpx.Request) -> httpx.Response:
        quota = {"RateLimit-Limit": f"{self.limit};w=21600", "docker-ratelimit-source": "127.0.0.1"}
        if self.remaining <= 0:
            return reply(429, body={"errors": [{"code": "TOOMANYREQUESTS", "message":
                                    "You have reached your pull rate limit."}]},
                         headers={**quota, "RateLimit-Remaining": "0;w=21600"})
        self.remaining -= 1
        return reply(200, content=MANIFEST, headers={
            **quota, "RateLimit-Remaining": f"{self.remaining};w=21600", "Content-Type": OCI_MANIFEST,
            "Docker-Content-Digest": Digest.of(MANIFEST)})


async def test_pulls_stop_and_every_request_holds_once_the_allowance_reaches_zero() -> None:
    router = Router()
    registry = MeteredRegistry(allowance=2)
    registry.install(router)
    adapter = make_adapter(router, credentials=False, hold=0.4)
    try:
        await adapter.client.get_manifest("alice/app", "1")
        assert adapter.rate_limit.describe() == "1 of 100 pulls per 21600 s left"
        await adapter.client.get_manifest("alice/app", "2")  # the last pull: remaining is now 0
        sent = len(router.requests)

        with pytest.raises(RateLimitedError) as info:
            await adapter.client.get_manifest("alice/app", "3")
        assert len(router.requests) == sent  # refused here: no request spent on a sure 429
        assert info.value.transient
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 0.4
        assert "Docker Hub pull rate limit reached (0 of 100 pulls per 21600 s left)" in str(info.value)

        started = time.monotonic()
        await adapter.client.blob_exists("alice/app", Digest.of(b"{}"))  # not metered, but held
        assert time.monotonic() - started >= 0.3

        registry.remaining = 5  # pulls came back into the rolling window
        manifest = await adapter.client.get_manifest("alice/app", "3")
        assert manifest.digest == Digest.of(MANIFEST)
        assert adapter.rate_limit.remaining == 4
    finally:
        await adapter.aclose()


async def test_hubs_own_429_holds_too_and_is_transient() -> None:
    router = Router()
    MeteredRegistry(allowance=0).install(router)
    adapter = make_adapter(router, credentials=False, hold=0.3)
    try:
        with pytest.raises(RateLimitedError) as first:
            await adapter.client.get_manifest("alice/app", "1")
        assert "TOOMANYREQUESTS" in str(first.value)
        with pytest.raises(RateLimitedError, match="pull rate limit reached"):
            await adapter.client.get_manifest("alice/app", "1")
    finally:
        await adapter.aclose()
    assert len(router.requests) == 1


def test_remaining_above_zero_clears_the_hold() -> None:
    now = [100.0]
    limit = PullRateLimit(hold_seconds=60, clock=lambda: now[0])
    spent = httpx.Response(200, headers={"RateLimit-Remaining": "0;w=21600",
                                         "RateLimit-Limit": "100;w=21600"})
    assert limit.observe(spent) == 60
    with pytest.raises(RateLimitedError):
        limit.check("a/b:1")
    now[0] += 61
    limit.check("a/b:1")  # the hold is over: one request may re-read the count
    assert limit.observe(httpx.Response(200, headers={"RateLimit-Remaining": "3;w=21600"})) is None
    limit.check("a/b:1")
    assert limit.observe(httpx.Response(200)) is None  # blob answers carry no headers
