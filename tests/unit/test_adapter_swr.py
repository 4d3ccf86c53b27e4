"""adapters.swr against an in-memory SWR: ``/dockyard/v2`` (tests/support/fake_swr_dtr_apis.py)
and a registry behind a bearer realm, both on SWR's host and both taking the long-term login."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import SecretStr

import adapters
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError
from adapters.swr import SwrAdapter, login_key
from tests.support.fake_swr_dtr_apis import FakeSwrApi
from tests.support.vendor_fakes import FakeTokenRegistry, Router

AK = "HPUAEXAMPLE0123"
SK = "swr-secret-key-0123456789abcdef"
REGION = "cn-north-4"
HOST = f"swr.{REGION}.myhuaweicloud.com"
LOGIN_USER = f"{REGION}@{AK}"
LOGIN_KEY = hmac.new(SK.encode(), AK.encode(), hashlib.sha256).hexdigest()


class World:
    def __init__(self, namespaces: dict[str, list[str]] | None = None) -> None:
        self.api = FakeSwrApi(user=LOGIN_USER, password=LOGIN_KEY, namespaces=namespaces or {})
        self.router = Router()
        for method in ("GET", "POST"):
            self.router.add(method, HOST, r"/dockyard/.*", self.api)
        self.registry = FakeTokenRegistry(host=HOST, realm_host=HOST, users={LOGIN_USER: LOGIN_KEY},
                                          tags={"team/app": ["1.0"]},
                                          realm_path="/swr/auth/v2/registry/auth/")
        self.registry.install(self.router)

    def adapter(self, user: str = AK, secret: str = SK, url: str = f"https://{HOST}",
                **options: str) -> SwrAdapter:
        endpoint = Endpoint(url=url, username=user, password=SecretStr(secret))
        return SwrAdapter(endpoint, transport=self.router.transport(), **options)


def test_the_login_key_is_hex_hmac_sha256_of_the_ak_under_the_sk() -> None:
    assert login_key(AK, SecretStr(SK)).get_secret_value() == LOGIN_KEY
    assert len(LOGIN_KEY) == 64


def test_registered_and_the_login_is_derived_from_the_access_key_pair() -> None:
    assert adapters.ADAPTERS["huawei-SWR"] is SwrAdapter
    adapter = World().adapter()
    assert adapter.endpoint.username == LOGIN_USER
    assert adapter.endpoint.password is not None and adapter.endpoint.password.get_secret_value() == LOGIN_KEY
    # Harbor's form (the login as swr gives it) is taken as it is.
    given = World().adapter(user=LOGIN_USER, secret=LOGIN_KEY)
    assert given.endpoint.username == LOGIN_USER
    assert adapters.adapter_info("huawei-SWR").options == ("region",)


@pytest.mark.parametrize(("url", "user", "options", "message"), [
    (f"https://{HOST}", None, {}, "needs access_key = <region>@<AK>"),
    ("https://registry.example.com", AK, {}, "not an SWR host"),
])
def test_bad_input_is_one_clear_line(url: str, user: str | None, options: dict[str, str],
                                    message: str) -> None:
    endpoint = Endpoint(url=url, username=user, password=SecretStr(SK) if user else None)
    with pytest.raises(ConfigError, match=message) as info:
        SwrAdapter(endpoint, **options)
    assert "\n" not in str(info.value) and SK not in str(info.value)


def test_a_region_option_serves_any_host() -> None:
    adapter = World().adapter(url="https://swr.internal.example", region="ap-southeast-1")
    assert adapter.endpoint.username == f"ap-southeast-1@{AK}"


async def test_the_login_goes_to_the_realm_and_dockyard_and_the_sk_nowhere() -> None:
    world = World({"team": ["app"]})
    adapter = world.adapter()
    try:
        assert await adapter.list_tags("team/app") == ["1.0"]
        assert [name async for name in adapter.list_repositories()] == ["team/app"]
    finally:
        await adapter.aclose()
    assert [user for user, _ in world.registry.token_requests if user] == [LOGIN_USER]
    basic = "Basic " + base64.b64encode(f"{LOGIN_USER}:{LOGIN_KEY}".encode()).decode()
    assert {auth for _, _, auth in world.api.calls} == {basic}
    for request in world.router.requests:
        assert request.url.host == HOST
        assert SK not in str(request.headers) and SK.encode() not in request.content


async def test_listing_pages_by_offset() -> None:
    world = World({"apps": ["a", "b", "c"], "base": ["alpine"]})
    adapter = world.adapter()
    try:
        listed = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert listed == ["apps/a", "apps/b", "apps/c", "base/alpine"]
    # SWR answers at most 2 per page here: the next page starts where this one ended, until
    # Content-Range's total is reached.
    filters = [path.split("filter=")[1] for method, path, _ in world.api.calls if "repositories" in path]
    assert [f.split("offset%3A%3A")[1].split("%7C")[0] for f in filters] == ["0", "2"]


async def test_prepare_creates_each_missing_organisation_once() -> None:
    world = World({"apps": ["a"]})
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["apps/a", "new/x", "new/y"])
        await adapter.prepare_for_push(["apps/a", "new/x", "new/y"])
    finally:
        await adapter.aclose()
    posts = [path for method, path, _ in world.api.calls if method == "POST"]
    assert posts == ["/dockyard/v2/namespaces?"]
    assert sorted(world.api.namespaces) == ["apps", "new"]


async def test_a_wrong_secret_is_an_authentication_error() -> None:
    world = World()
    adapter = world.adapter(secret="wrong-secret")
    try:
        with pytest.raises(AuthenticationError):
            [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
