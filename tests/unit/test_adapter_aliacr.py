"""adapters.aliacr, both editions, against an in-memory Alibaba Cloud CR API
(tests/support/fake_cloud_cr_apis.py: ACS3-HMAC-SHA256 checked on every call, nonces never
reused) and an in-memory registry behind a bearer realm that knows only the temporary login."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

import adapters
from adapters.aliacr import AliAcrAdapter
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError
from tests.support.fake_cloud_cr_apis import FakeAliAcrApi
from tests.support.vendor_fakes import FakeTokenRegistry, Router

ACCESS_KEY = "LTAIexample0123"
SECRET = "ali-secret-0123456789abcdef"
PERSONAL_HOST = "registry.cn-hangzhou.aliyuncs.com"
ENTERPRISE_HOST = "myinst-registry.cn-hangzhou.cr.aliyuncs.com"
API_HOST = "cr.cn-hangzhou.aliyuncs.com"
INSTANCE = "cri-abc123"


class World:
    def __init__(self, namespaces: dict[str, list[str]] | None = None, *, enterprise: bool = False) -> None:
        self.host = ENTERPRISE_HOST if enterprise else PERSONAL_HOST
        self.api = FakeAliAcrApi(access_key=ACCESS_KEY, secret_key=SECRET, namespaces=namespaces or {},
                                 instance_id=INSTANCE if enterprise else None)
        self.router = Router()
        for method in ("GET", "POST", "PUT"):
            self.router.add(method, API_HOST, r"/.*", self.api)
        self.registry = FakeTokenRegistry(host=self.host, realm_host="dockerauth.cn-hangzhou.aliyuncs.com",
                                          users={"temp-user": "temp-password"}, tags={"team/app": ["1.0"]},
                                          realm_path="/auth")
        self.registry.install(self.router)

    def adapter(self, secret: str = SECRET, **options: object) -> AliAcrAdapter:
        if self.api.instance_id:
            options.setdefault("instance_id", INSTANCE)
        endpoint = Endpoint(url=f"https://{self.host}", username=ACCESS_KEY, password=SecretStr(secret))
        return AliAcrAdapter(endpoint, transport=self.router.transport(), **options)  # type: ignore[arg-type]


def test_registered_with_the_region_from_the_host() -> None:
    assert adapters.ADAPTERS["ali-acr"] is AliAcrAdapter
    assert World().adapter().region == "cn-hangzhou"
    info = adapters.adapter_info("ali-acr")
    assert (info.min_path_components, info.max_path_components) == (2, 2)
    assert info.options == ("api_url", "region", "instance_id")


@pytest.mark.parametrize(("host", "user", "options", "message"), [
    (PERSONAL_HOST, None, {}, "needs access_key = an AccessKey id"),
    ("registry.example.com", ACCESS_KEY, {}, "not an ACR host"),
])
def test_bad_input_is_one_clear_line(host: str, user: str | None, options: dict[str, str],
                                    message: str) -> None:
    endpoint = Endpoint(url=f"https://{host}", username=user, password=SecretStr(SECRET) if user else None)
    with pytest.raises(ConfigError, match=message) as info:
        AliAcrAdapter(endpoint, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("enterprise", [False, True], ids=["personal", "enterprise"])
async def test_temporary_login_from_get_authorization_token(enterprise: bool) -> None:
    world = World(enterprise=enterprise)
    adapter = world.adapter()
    try:
        assert await adapter.list_tags("team/app") == ["1.0"]
        assert await adapter.list_tags("team/app") == ["1.0"]
    finally:
        await adapter.aclose()
    assert world.api.actions() == ["GetAuthorizationToken"]
    assert world.api.refused == []
    assert [user for user, _ in world.registry.token_requests] == ["temp-user"]
    for request in world.router.requests:
        assert SECRET not in str(request.headers) and SECRET.encode() not in request.content
        assert request.headers.get("Authorization", "").startswith("ACS3") == (request.url.host == API_HOST)


@pytest.mark.parametrize("enterprise", [False, True], ids=["personal", "enterprise"])
async def test_listing_pages_through_each_namespace(enterprise: bool) -> None:
    world = World({"apps": ["a", "b", "c"], "base": ["alpine"]}, enterprise=enterprise)
    adapter = world.adapter()
    try:
        listed = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert listed == world.api.repositories() == ["apps/a", "apps/b", "apps/c", "base/alpine"]
    page_key = "PageNo" if enterprise else "Page"
    repo_action = "ListRepository" if enterprise else "GetRepoListByNamespace"
    assert [p[page_key] for a, p in world.api.calls if a == repo_action] == ["1", "2", "1"]


@pytest.mark.parametrize("enterprise", [False, True], ids=["personal", "enterprise"])
async def test_prepare_creates_each_missing_namespace_once(enterprise: bool) -> None:
    world = World({"apps": ["a"]}, enterprise=enterprise)
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["apps/a", "apps/b", "new/x", "new/y"])
    finally:
        await adapter.aclose()
    assert world.api.actions().count("CreateNamespace") == 1
    assert sorted(world.api.namespaces) == ["apps", "new"]
    if enterprise:  # the push then creates the repositories
        assert world.api.auto_create == {"new": True}


async def test_paths_must_have_exactly_two_components() -> None:
    adapter = World().adapter()
    try:
        with pytest.raises(ConfigError, match="exactly two"):
            await adapter.prepare_for_push(["a/b/c"])
    finally:
        await adapter.aclose()


async def test_a_wrong_secret_is_an_authentication_error() -> None:
    world = World()
    adapter = world.adapter(secret="wrong-secret")
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("team/app")
    finally:
        await adapter.aclose()
    assert info.value.codes == ("SignatureDoesNotMatch",)
    assert "wrong-secret" not in str(info.value)


async def test_the_enterprise_instance_is_read_from_the_registrys_challenge() -> None:
    world = World({"apps": ["a"]}, enterprise=True)
    world.registry.service = f"registry.aliyuncs.com:cn-hangzhou:china:{INSTANCE}"
    endpoint = Endpoint(url=f"https://{ENTERPRISE_HOST}", username=ACCESS_KEY, password=SecretStr(SECRET))
    adapter = AliAcrAdapter(endpoint, transport=world.router.transport())
    try:
        assert [name async for name in adapter.list_repositories()] == ["apps/a"]
    finally:
        await adapter.aclose()
    assert adapter.instance_id == INSTANCE
    # The challenge was read without credentials; the instance id then went to the API.
    v2 = [r for r in world.router.requests if r.url.path == "/v2/"]
    assert len(v2) == 1 and "Authorization" not in v2[0].headers
    assert {p["InstanceId"] for _, p in world.api.calls} == {INSTANCE}


async def test_an_enterprise_host_that_names_no_instance_asks_for_the_option() -> None:
    world = World(enterprise=True)
    endpoint = Endpoint(url=f"https://{ENTERPRISE_HOST}", username=ACCESS_KEY, password=SecretStr(SECRET))
    adapter = AliAcrAdapter(endpoint, transport=world.router.transport())
    try:
        with pytest.raises(ConfigError, match="give its id as the instance_id option") as info:
            [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert "\n" not in str(info.value) and world.api.calls == []


@pytest.mark.parametrize(("lifetime", "fetches"), [(60, 2), (3600, 1)])
async def test_the_temporary_login_is_renewed_only_near_its_expiry(lifetime: int, fetches: int) -> None:
    # expireDate is in milliseconds: misread, a one-minute login would look good for much longer.
    world = World()
    world.api.token_lifetime = lifetime
    world.registry.tags["team/other"] = ["2.0"]
    adapter = world.adapter()
    try:
        await adapter.list_tags("team/app")
        assert await adapter.list_tags("team/other") == ["2.0"]  # a new scope: a new realm token
    finally:
        await adapter.aclose()
    assert world.api.actions().count("GetAuthorizationToken") == fetches
