"""QuayAdapter against a fake of Quay's ``/api/v1`` (repositories by namespace paged by
``next_page``, ``POST /api/v1/repository``, the user and organisation lookups) and of its
registry's token realm, shaped after Quay's API reference and its endpoints' answers."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest
from pydantic import SecretStr

from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, PermissionDeniedError, RegistryError, ServerError
from adapters.quay import QuayAdapter, split_credentials
from tests.support.vendor_fakes import FakeTokenRegistry, Router, reply

QUAY = "quay.example"
ROBOT = "acme+mirror"
ROBOT_TOKEN = "robot-token-never-shown"
OAUTH = "oauth-app-token-never-shown"
NOT_FOUND = {"error_message": "Not Found", "status": 404}


class FakeQuay:
    """Quay's API: two repositories a page; creation needs the bearer and the Creator right."""

    def __init__(self, repositories: dict[str, list[str]], *, user: str = "alice",
                 orgs: tuple[str, ...] = ("acme",), creatable: frozenset[str] = frozenset({"alice", "acme"})
                 ) -> None:
        self.repositories = repositories
        self.user = user
        self.orgs = orgs
        self.creatable = creatable
        self.created: list[dict[str, object]] = []

    def install(self, router: Router) -> None:
        router.add("GET", QUAY, r"/api/v1/repository", self.list_repositories)
        router.add("POST", QUAY, r"/api/v1/repository", self.create)
        router.add("GET", QUAY, r"/api/v1/repository/(?P<ns>[^/]+)/(?P<name>.+)", self.get_repository)
        router.add("GET", QUAY, r"/api/v1/user/", self.me)
        router.add("GET", QUAY, r"/api/v1/organization/(?P<org>[^/]+)", self.organisation)
        router.add("GET", QUAY, r"/api/v1/users/(?P<u>[^/]+)", self.a_user)

    def bearer(self, request: httpx.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {OAUTH}"

    def list_repositories(self, request: httpx.Request) -> httpx.Response:
        namespace = request.url.params.get("namespace")
        if not namespace:
            return reply(400, body={"error_message": "namespace, starred or public are required"})
        names = self.repositories.get(namespace, [])
        start = int(request.url.params.get("next_page", "0") or 0)
        chunk = names[start:start + 2]
        body: dict[str, object] = {"repositories": [
            {"namespace": namespace, "name": n, "description": None, "is_public": False, "kind": "image"}
            for n in chunk]}
        if start + 2 < len(names):
            body["next_page"] = str(start + 2)  # opaque to clients
        return reply(body=body)

    def create(self, request: httpx.Request) -> httpx.Response:
        if not self.bearer(request):
            return reply(401, body={"error_message": "Requires authentication"})
        body = json.loads(request.content)
        namespace, name = body["namespace"], body["repository"]
        if namespace not in self.creatable:
            return reply(403, body={"error_message": "Unauthorized", "error_type": "insufficient_scope"})
        if name in self.repositories.get(namespace, []):
            return reply(400, body={"error_message": "Repository already exists",
                                    "error_type": "invalid_request", "status": 400})
        if "!" in name:
            return reply(400, body={"error_message": "Invalid repository name", "status": 400})
        self.created.append(body)
        self.repositories.setdefault(namespace, []).append(name)
        return reply(201, body={"namespace": namespace, "name": name, "kind": "image"})

    def get_repository(self, request: httpx.Request) -> httpx.Response:
        _, _, _, _, namespace, name = request.url.path.split("/", 5)
        if name in self.repositories.get(namespace, []):
            return reply(body={"namespace": namespace, "name": name, "can_write": True})
        return reply(404, body={"error_message": "Not Found"})

    def me(self, request: httpx.Request) -> httpx.Response:
        if not self.bearer(request):
            return reply(401, body={"error_message": "Requires authentication"})
        return reply(body={"username": self.user, "organizations": [{"name": o} for o in self.orgs]})

    def organisation(self, request: httpx.Request) -> httpx.Response:
        org = request.url.path.rsplit("/", 1)[1]
        return reply(body={"name": org}) if org in self.orgs else reply(404, body=NOT_FOUND)

    def a_user(self, request: httpx.Request) -> httpx.Response:
        user = request.url.path.rsplit("/", 1)[1]
        return reply(body={"username": user}) if user == self.user else reply(404, body=NOT_FOUND)


def oauth_adapter(router: Router, *, namespaces: list[str] | None = None,
                  visibility: Literal["private", "public"] = "private") -> QuayAdapter:
    endpoint = Endpoint(url=f"https://{QUAY}", username="$oauthtoken", password=SecretStr(OAUTH))
    return QuayAdapter(endpoint, transport=router.transport(), namespaces=namespaces, visibility=visibility)


def robot_adapter(router: Router) -> QuayAdapter:
    endpoint = Endpoint(url=f"https://{QUAY}", username=ROBOT, password=SecretStr(ROBOT_TOKEN))
    return QuayAdapter(endpoint, transport=router.transport())


# -- credentials -------------------------------------------------------------------------------


def test_a_robot_is_registry_only() -> None:
    endpoint = Endpoint(url=f"https://{QUAY}", username=ROBOT, password=SecretStr(ROBOT_TOKEN))
    registry, token = split_credentials(endpoint)
    assert registry == endpoint and token is None


def test_oauthtoken_user_gives_the_api_its_bearer() -> None:
    endpoint = Endpoint(url=f"https://{QUAY}", username="$oauthtoken", password=SecretStr(OAUTH))
    registry, token = split_credentials(endpoint)
    assert registry == endpoint and token is not None and token.get_secret_value() == OAUTH


def test_harbors_json_secret_carries_over() -> None:
    secret = json.dumps({"account_name": ROBOT, "docker_cli_password": ROBOT_TOKEN,
                         "oauth2_access_token": OAUTH})
    registry, token = split_credentials(Endpoint(url=f"https://{QUAY}", username="ignored",
                                                 password=SecretStr(secret)))
    assert registry.username == ROBOT
    assert registry.password is not None and registry.password.get_secret_value() == ROBOT_TOKEN
    assert token is not None and token.get_secret_value() == OAUTH
    assert OAUTH not in repr(registry) and ROBOT_TOKEN not in repr(registry)


def test_a_password_that_merely_starts_with_a_brace_is_a_password() -> None:
    endpoint = Endpoint(url=f"https://{QUAY}", username="u", password=SecretStr("{not json"))
    assert split_credentials(endpoint) == (endpoint, None)


def test_adapter_info() -> None:
    info = QuayAdapter.info
    assert info.type == "quay"
    assert info.min_path_components == 2
    assert info.triggers == ("manual", "scheduled")


# -- listing -----------------------------------------------------------------------------------


async def test_listing_follows_next_page_through_the_users_and_organisations_namespaces() -> None:
    router = Router()
    FakeQuay({"alice": ["a1", "a2", "a3"], "acme": ["web", "api"]}).install(router)
    adapter = oauth_adapter(router)
    try:
        names = [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert names == ["alice/a1", "alice/a2", "alice/a3", "acme/web", "acme/api"]
    listing = [(r.url.params.get("namespace"), r.url.params.get("next_page"))
               for r in router.requests if r.url.path == "/api/v1/repository"]
    assert listing == [("alice", None), ("alice", "2"), ("acme", None)]
    assert {r.headers.get("Authorization") for r in router.requests} == {f"Bearer {OAUTH}"}


async def test_a_robot_lists_its_own_organisation_without_an_api_token() -> None:
    router = Router()
    FakeQuay({"acme": ["web", "api", "db"]}).install(router)
    adapter = robot_adapter(router)
    try:
        names = [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert names == ["acme/web", "acme/api", "acme/db"]
    assert all("Authorization" not in r.headers for r in router.requests)


async def test_without_namespace_robot_or_token_listing_is_refused_clearly() -> None:
    router = Router()
    adapter = QuayAdapter(Endpoint(url=f"https://{QUAY}", username="bob", password=SecretStr("pw")),
                          transport=router.transport())
    try:
        with pytest.raises(ConfigError, match="robot account"):
            [n async for n in adapter.list_repositories()]
        assert [n async for n in adapter.list_repositories(["bob/app"])] == ["bob/app"]
    finally:
        await adapter.aclose()
    assert router.requests == []


async def test_api_server_errors_are_transient() -> None:
    router = Router()
    router.add("GET", QUAY, r"/api/v1/repository", lambda r: reply(502, content=b"Bad Gateway"))
    adapter = oauth_adapter(router, namespaces=["acme"])
    try:
        with pytest.raises(ServerError) as info:
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.transient and "Bad Gateway" in str(info.value)


# -- repository creation -----------------------------------------------------------------------


async def test_prepare_creates_missing_repositories_and_accepts_existing_ones() -> None:
    router = Router()
    quay = FakeQuay({"acme": ["web"]})
    quay.install(router)
    adapter = oauth_adapter(router)
    try:
        await adapter.prepare_for_push(["acme/web", "acme/new", "alice/tools/cli"])
    finally:
        await adapter.aclose()
    assert quay.created == [
        {"namespace": "acme", "repository": "new", "visibility": "private", "description": "",
         "repo_kind": "image"},
        {"namespace": "alice", "repository": "tools/cli", "visibility": "private", "description": "",
         "repo_kind": "image"},
    ]
    assert [r.method for r in router.requests] == ["POST", "POST", "POST"]


async def test_a_token_that_may_only_write_is_fine_for_an_existing_repository() -> None:
    router = Router()
    FakeQuay({"acme": ["web"]}, creatable=frozenset()).install(router)
    adapter = oauth_adapter(router)
    try:
        await adapter.prepare_for_push(["acme/web"])
    finally:
        await adapter.aclose()
    assert [(r.method, r.url.path) for r in router.requests] == [
        ("POST", "/api/v1/repository"), ("GET", "/api/v1/repository/acme/web")]


async def test_creation_without_the_right_is_refused_with_the_reason() -> None:
    router = Router()
    FakeQuay({}, creatable=frozenset()).install(router)
    adapter = oauth_adapter(router)
    try:
        with pytest.raises(PermissionDeniedError, match="right to create repositories in acme"):
            await adapter.prepare_for_push(["acme/new"])
    finally:
        await adapter.aclose()


async def test_a_namespace_quay_does_not_have_is_a_config_error() -> None:
    router = Router()
    FakeQuay({}, creatable=frozenset()).install(router)
    adapter = oauth_adapter(router)
    try:
        with pytest.raises(ConfigError, match="no organisation or user 'ghost'") as info:
            await adapter.prepare_for_push(["ghost/app"])
    finally:
        await adapter.aclose()
    assert info.value.field == "dest_namespace"


async def test_any_other_refusal_is_reported_with_quays_message() -> None:
    router = Router()
    FakeQuay({}).install(router)
    adapter = oauth_adapter(router)
    try:
        with pytest.raises(RegistryError, match="Invalid repository name") as info:
            await adapter.prepare_for_push(["acme/bad!name"])
    finally:
        await adapter.aclose()
    assert info.value.status == 400 and not info.value.transient


async def test_without_an_api_token_the_push_itself_creates() -> None:
    router = Router()
    adapter = robot_adapter(router)
    try:
        await adapter.prepare_for_push(["acme/new"])
    finally:
        await adapter.aclose()
    assert router.requests == []


async def test_public_visibility_is_an_option() -> None:
    router = Router()
    quay = FakeQuay({})
    quay.install(router)
    adapter = oauth_adapter(router, visibility="public")
    try:
        await adapter.prepare_for_push(["acme/open"])
    finally:
        await adapter.aclose()
    assert quay.created[0]["visibility"] == "public"


# -- registry token exchange -------------------------------------------------------------------


async def test_a_robot_name_with_plus_reaches_the_token_realm_intact() -> None:
    router = Router()
    registry = FakeTokenRegistry(QUAY, QUAY, {ROBOT: ROBOT_TOKEN}, service="quay.example",
                                 tags={"acme/web": ["1", "2"]})
    registry.install(router)
    adapter = robot_adapter(router)
    try:
        assert await adapter.list_tags("acme/web") == ["1", "2"]
    finally:
        await adapter.aclose()
    assert registry.token_requests == [(ROBOT, ("repository:acme/web:pull",))]


async def test_harbor_json_credentials_log_in_to_the_registry_as_the_robot() -> None:
    router = Router()
    registry = FakeTokenRegistry(QUAY, QUAY, {ROBOT: ROBOT_TOKEN}, tags={"acme/web": ["1"]})
    registry.install(router)
    secret = json.dumps({"account_name": ROBOT, "docker_cli_password": ROBOT_TOKEN,
                         "oauth2_access_token": OAUTH})
    adapter = QuayAdapter(Endpoint(url=f"https://{QUAY}", username="x", password=SecretStr(secret)),
                          transport=router.transport())
    try:
        assert await adapter.list_tags("acme/web") == ["1"]
    finally:
        await adapter.aclose()
    assert [user for user, _ in registry.token_requests] == [ROBOT]
    assert all(OAUTH not in r.headers.get("Authorization", "") for r in router.requests)
