"""adapters.dtr against an in-memory DTR API (tests/support/fake_swr_dtr_apis.py) and a registry
behind a bearer realm, on one host, both taking the same user with Basic."""

from __future__ import annotations

import base64
import re

import httpx
import pytest
from pydantic import SecretStr

import adapters
from adapters.dtr import DtrAdapter
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, ContentError, PermissionDeniedError
from tests.support.fake_swr_dtr_apis import FakeDtrApi
from tests.support.vendor_fakes import FakeTokenRegistry, Router, reply

HOST = "dtr.example.com"
USER, PASSWORD = "deployer", "dtr-access-token-0123456789"


class World:
    def __init__(self, namespaces: dict[str, list[str]] | None = None, *, admin: bool = True) -> None:
        self.api = FakeDtrApi(user=USER, password=PASSWORD, admin=admin, namespaces=namespaces or {})
        self.router = Router()
        for method in ("GET", "POST"):
            self.router.add(method, HOST, r"/(api|enzi)/v0/.*", self.api)
        self.registry = FakeTokenRegistry(host=HOST, realm_host=HOST, users={USER: PASSWORD},
                                          tags={"team/app": ["1.0"]}, realm_path="/auth/token")
        self.registry.install(self.router)

    def adapter(self, secret: str = PASSWORD, **options: str) -> DtrAdapter:
        endpoint = Endpoint(url=f"https://{HOST}", username=USER, password=SecretStr(secret))
        return DtrAdapter(endpoint, transport=self.router.transport(), **options)  # type: ignore[arg-type]


def test_registered_with_two_component_paths() -> None:
    assert adapters.ADAPTERS["dtr"] is DtrAdapter
    info = adapters.adapter_info("dtr")
    assert (info.min_path_components, info.max_path_components, info.options) == (2, 2, ("visibility",))


def test_bad_input_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="dtr needs access_key = a DTR user") as info:
        DtrAdapter(Endpoint(url=f"https://{HOST}"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="private or public"):
        World().adapter(visibility="internal")


async def test_listing_follows_next_page_start_with_basic_on_the_same_host_only() -> None:
    world = World({"apps": ["a", "b", "c"], "base": ["alpine"]})
    adapter = world.adapter()
    try:
        listed = [name async for name in adapter.list_repositories()]
        assert await adapter.list_tags("team/app") == ["1.0"]
    finally:
        await adapter.aclose()
    assert listed == ["apps/a", "apps/b", "apps/c", "base/alpine"]
    assert [path for _, path, _ in world.api.calls] == [
        "/api/v0/repositories?pageSize=100", "/api/v0/repositories?pageSize=100&pageStart=2"]
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert {auth for _, _, auth in world.api.calls} == {basic}
    assert all(r.url.host == HOST for r in world.router.requests)


async def test_a_page_link_is_built_on_the_apis_own_host() -> None:
    world = World({"apps": ["a", "b", "c"]})
    adapter = world.adapter()
    try:
        # A next-page start that tries to smuggle a host stays a query value on DTR's host.
        def smuggle(request: httpx.Request) -> httpx.Response:
            if "pageStart" in str(request.url):
                return reply(body={"repositories": []})
            return reply(body={"repositories": []}, headers={"X-Next-Page-Start": "https://evil.example/"})
        world.router.routes.insert(0, ("GET", HOST, re.compile("/api/v0/repositories"), smuggle))
        assert [name async for name in adapter.list_repositories()] == []
    finally:
        await adapter.aclose()
    assert world.router.to("evil.example") == []


async def test_prepare_creates_the_organisation_and_private_repositories_once() -> None:
    world = World({"apps": ["a"]})
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["apps/a", "apps/b", "new/x"])
        await adapter.prepare_for_push(["apps/a", "apps/b", "new/x"])
    finally:
        await adapter.aclose()
    posts = [path for method, path, _ in world.api.calls if method == "POST"]
    assert posts == ["/enzi/v0/accounts?", "/api/v0/repositories/apps?", "/api/v0/repositories/new?"]
    assert [c["visibility"] for c in world.api.created] == ["private", "private"]
    assert world.api.namespaces == {"apps": ["a", "b"], "new": ["x"]}


async def test_a_missing_organisation_without_admin_rights_is_explained() -> None:
    world = World(admin=False)
    adapter = world.adapter()
    try:
        with pytest.raises(PermissionDeniedError, match="only an admin may"):
            await adapter.prepare_for_push(["new/x"])
    finally:
        await adapter.aclose()


async def test_deeper_paths_are_refused_before_any_call() -> None:
    world = World()
    adapter = world.adapter()
    try:
        with pytest.raises(ConfigError, match="exactly two"):
            await adapter.prepare_for_push(["a/b/c"])
    finally:
        await adapter.aclose()
    assert world.api.calls == []


async def test_a_wrong_password_is_an_authentication_error() -> None:
    adapter = World({"apps": ["a"]}).adapter(secret="wrong")
    try:
        with pytest.raises(AuthenticationError):
            [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()


async def test_a_listing_of_another_shape_is_a_content_error() -> None:
    world = World()
    world.router.routes.insert(0, ("GET", HOST, re.compile("/api/v0/repositories"),
                                   lambda r: reply(body={"repositories": [{"id": 1}]})))
    adapter = world.adapter()
    try:
        with pytest.raises(ContentError, match="unexpected answer"):
            [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
