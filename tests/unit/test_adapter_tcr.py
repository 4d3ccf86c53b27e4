"""adapters.tcr against an in-memory TCR API (tests/support/fake_cloud_cr_apis.py: TC3 checked on
every call) and an in-memory TCR registry behind a bearer realm that knows only the temporary
instance token."""

from __future__ import annotations

import re

import httpx
import pytest
from pydantic import SecretStr

import adapters
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, RateLimitedError, RegistryError
from adapters.tcr import TcrAdapter
from tests.support.fake_cloud_cr_apis import FakeTcrApi
from tests.support.vendor_fakes import FakeTokenRegistry, Router

SECRET_ID = "AKIDexample0123456789"
SECRET_KEY = "tcr-secret-key-0123456789abcdef"
REGISTRY_HOST = "myinstance.tencentcloudcr.com"
API_HOST = "tcr.tencentcloudapi.com"


class World:
    def __init__(self, namespaces: dict[str, list[str]] | None = None) -> None:
        self.api = FakeTcrApi(access_key=SECRET_ID, secret_key=SECRET_KEY, namespaces=namespaces or {})
        self.router = Router()
        self.router.add("POST", API_HOST, r"/", self.api)
        self.registry = FakeTokenRegistry(host=REGISTRY_HOST, realm_host=REGISTRY_HOST,
                                          users={"temp-user": "temp-password"},
                                          tags={"team/app": ["1.0"]}, realm_path="/service/token")
        self.registry.install(self.router)

    def adapter(self, secret: str = SECRET_KEY, user: str = SECRET_ID, **options: object) -> TcrAdapter:
        endpoint = Endpoint(url=f"https://{REGISTRY_HOST}", username=user, password=SecretStr(secret))
        return TcrAdapter(endpoint, transport=self.router.transport(), **options)  # type: ignore[arg-type]

    def secret_sent(self) -> bool:
        return any(SECRET_KEY in str(r.headers) or SECRET_KEY.encode() in r.content
                   for r in self.router.requests)


def test_registered_under_harbors_type_with_its_options() -> None:
    assert adapters.ADAPTERS["tencent-tcr"] is TcrAdapter
    info = adapters.adapter_info("tencent-tcr")
    assert info.options == ("api_url", "region", "registry_id")
    assert info.triggers == ("manual", "scheduled") and info.min_path_components == 2


@pytest.mark.parametrize(("url", "user", "secret", "message"), [
    (f"https://{REGISTRY_HOST}", None, None, "needs access_key = a SecretId"),
    (f"https://{REGISTRY_HOST}", "100012345678", "docker-password", "not a docker login user"),
    ("https://127.0.0.1:5000", SECRET_ID, SECRET_KEY, "not a TCR host"),
])
def test_bad_input_is_one_clear_line(url: str, user: str | None, secret: str | None, message: str) -> None:
    endpoint = Endpoint(url=url, username=user, password=SecretStr(secret) if secret else None)
    with pytest.raises(ConfigError, match=message) as info:
        TcrAdapter(endpoint)
    assert "\n" not in str(info.value) and SECRET_KEY not in str(info.value)


async def test_instance_is_found_by_name_and_its_token_goes_to_the_realm_only() -> None:
    world = World()
    adapter = world.adapter()
    try:
        assert await adapter.list_tags("team/app") == ["1.0"]
        assert await adapter.list_tags("team/app") == ["1.0"]
    finally:
        await adapter.aclose()

    assert world.api.actions() == ["DescribeInstances", "CreateInstanceToken"]
    assert world.api.calls[0][1]["Filters"] == [{"Name": "RegistryName", "Values": ["myinstance"]}]
    assert world.api.calls[0][1]["AllRegion"] is True
    assert (adapter.registry_id, adapter.region) == ("tcr-abc123", "ap-shanghai")
    assert world.api.regions_seen == ["ap-guangzhou", "ap-shanghai"]
    assert world.api.refused == []
    # The temporary login reached the realm; the SecretKey went nowhere; the TC3 signature only to the API.
    assert [user for user, _ in world.registry.token_requests] == ["temp-user"]
    assert not world.secret_sent()
    for request in world.router.requests:
        signed = request.headers.get("Authorization", "").startswith("TC3-HMAC-SHA256")
        assert signed == (request.url.host == API_HOST), request.url


async def test_options_skip_the_instance_lookup() -> None:
    world = World()
    adapter = world.adapter(registry_id="tcr-abc123", region="ap-shanghai")
    try:
        await adapter.list_tags("team/app")
    finally:
        await adapter.aclose()
    assert world.api.actions() == ["CreateInstanceToken"]


async def test_listing_pages_through_namespaces_and_repositories() -> None:
    world = World({"apps": ["a", "b", "c"], "base": ["alpine"], "empty": []})
    adapter = world.adapter()
    try:
        listed = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert sorted(listed) == world.api.repositories() == ["apps/a", "apps/b", "apps/c", "base/alpine"]
    # page size 2: namespaces over two pages, apps' repositories over two pages
    assert world.api.actions().count("DescribeNamespaces") == 2
    offsets = [c[1]["Offset"] for c in world.api.calls if c[0] == "DescribeRepositories"]
    assert offsets == [1, 2, 1, 1]


async def test_prepare_creates_a_private_namespace_and_the_repositories_once() -> None:
    world = World({"apps": ["a"]})
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["apps/a", "apps/new", "fresh/one/two"])
        await adapter.prepare_for_push(["apps/a", "apps/new", "fresh/one/two"])
    finally:
        await adapter.aclose()
    assert world.api.repositories() == ["apps/a", "apps/new", "fresh/one/two"]
    creates = [(a, p.get("NamespaceName"), p.get("RepositoryName")) for a, p in world.api.calls
               if a.startswith("Create")]
    assert creates == [("CreateNamespace", "fresh", None), ("CreateRepository", "apps", "new"),
                       ("CreateRepository", "fresh", "one/two")]


async def test_a_repository_without_namespace_is_refused() -> None:
    adapter = World().adapter(registry_id="tcr-abc123", region="ap-shanghai")
    try:
        with pytest.raises(ConfigError, match="<namespace>/<name>"):
            await adapter.prepare_for_push(["flat"])
    finally:
        await adapter.aclose()


async def test_a_wrong_secret_key_is_an_authentication_error_without_the_secret() -> None:
    world = World()
    adapter = world.adapter(secret="not-the-secret-key")
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("team/app")
    finally:
        await adapter.aclose()
    assert world.api.refused == ["signature mismatch"]
    assert info.value.codes == ("AuthFailure.SignatureFailure",)
    assert "not-the-secret-key" not in str(info.value) + repr(vars(info.value))


async def test_throttling_is_transient() -> None:
    world = World({"apps": ["a"]})
    world.api.failures["DescribeNamespaces"] = "RequestLimitExceeded"
    adapter = world.adapter(registry_id="tcr-abc123", region="ap-shanghai")
    try:
        with pytest.raises(RateLimitedError) as info:
            [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.transient


async def test_no_credential_follows_a_redirect_off_the_api_host() -> None:
    world = World()
    world.router.routes.insert(0, ("POST", API_HOST, re.compile("/"),
                                   lambda r: httpx.Response(302, headers={"Location": "https://evil.example/"})))
    adapter = world.adapter()
    try:
        with pytest.raises(RegistryError, match="302"):
            await adapter.list_tags("team/app")
    finally:
        await adapter.aclose()
    assert world.router.to("evil.example") == []


@pytest.mark.parametrize(("lifetime", "fetches"), [(60, 2), (3600, 1)])
async def test_the_token_is_renewed_only_near_its_exptime(lifetime: int, fetches: int) -> None:
    # ExpTime is in milliseconds: read as seconds, a one-minute token would look good for years.
    world = World()
    world.api.token_lifetime = lifetime
    world.registry.tags["team/other"] = ["2.0"]
    adapter = world.adapter(registry_id="tcr-abc123", region="ap-shanghai")
    try:
        await adapter.list_tags("team/app")
        assert await adapter.list_tags("team/other") == ["2.0"]  # a new scope: a new realm token
    finally:
        await adapter.aclose()
    assert world.api.actions().count("CreateInstanceToken") == fetches
