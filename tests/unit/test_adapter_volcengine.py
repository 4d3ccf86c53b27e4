"""adapters.volcengine against an in-memory Volcengine CR OpenAPI (tests/support/fake_cloud_cr_apis.py:
the HMAC-SHA256 signature checked on every call) and an in-memory registry behind a bearer realm
that knows only the temporary login."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

import adapters
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, NotFoundError
from adapters.volcengine import VolcengineAdapter
from tests.support.fake_cloud_cr_apis import FakeVolcengineApi
from tests.support.vendor_fakes import FakeTokenRegistry, Router

ACCESS_KEY = "AKLTexample0123"
SECRET_KEY = "volc-secret-key-0123456789abcdef"
REGISTRY_HOST = "myreg-cn-beijing.cr.volces.com"
API_HOST = "cr.cn-beijing.volcengineapi.com"


class World:
    def __init__(self, namespaces: dict[str, list[str]] | None = None) -> None:
        self.api = FakeVolcengineApi(access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                     namespaces=namespaces or {})
        self.router = Router()
        self.router.add("POST", API_HOST, r"/", self.api)
        self.registry = FakeTokenRegistry(host=REGISTRY_HOST, realm_host=REGISTRY_HOST,
                                          users={"temp-user": "temp-password"}, tags={"team/app": ["1.0"]})
        self.registry.install(self.router)

    def adapter(self, secret: str = SECRET_KEY, url: str = f"https://{REGISTRY_HOST}",
                **options: object) -> VolcengineAdapter:
        endpoint = Endpoint(url=url, username=ACCESS_KEY, password=SecretStr(secret))
        return VolcengineAdapter(endpoint, transport=self.router.transport(), **options)  # type: ignore[arg-type]


def test_registered_and_the_host_names_registry_and_region() -> None:
    assert adapters.ADAPTERS["volcengine-cr"] is VolcengineAdapter
    adapter = World().adapter()
    assert (adapter.registry_name, adapter.region, adapter.api_url) == ("myreg", "cn-beijing", f"https://{API_HOST}/")
    vpc = World().adapter(url="https://my-team-reg-cn-shanghai.cr.ivolces.com")
    assert (vpc.registry_name, vpc.region) == ("my-team-reg", "cn-shanghai")
    assert adapters.adapter_info("volcengine-cr").options == ("api_url", "region", "registry_name")


@pytest.mark.parametrize(("url", "user", "message"), [
    (f"https://{REGISTRY_HOST}", None, "needs access_key = an AccessKey id"),
    ("https://registry.example.com", ACCESS_KEY, "not a Volcengine CR host"),
])
def test_bad_input_is_one_clear_line(url: str, user: str | None, message: str) -> None:
    endpoint = Endpoint(url=url, username=user, password=SecretStr(SECRET_KEY) if user else None)
    with pytest.raises(ConfigError, match=message) as info:
        VolcengineAdapter(endpoint)
    assert "\n" not in str(info.value)


async def test_the_temporary_login_goes_to_the_realm_and_the_signature_to_the_api_only() -> None:
    world = World()
    adapter = world.adapter()
    try:
        assert await adapter.list_tags("team/app") == ["1.0"]
        assert await adapter.list_tags("team/app") == ["1.0"]
    finally:
        await adapter.aclose()
    assert world.api.actions() == ["GetAuthorizationToken"]
    assert world.api.calls[0][1] == {"Registry": "myreg"}
    assert world.api.refused == []
    assert [user for user, _ in world.registry.token_requests] == ["temp-user"]
    for request in world.router.requests:
        assert SECRET_KEY not in str(request.headers) and SECRET_KEY.encode() not in request.content
        signed = request.headers.get("Authorization", "").startswith("HMAC-SHA256")
        assert signed == (request.url.host == API_HOST)


async def test_listing_pages_through_namespaces_and_repositories() -> None:
    world = World({"apps": ["a", "b", "c"], "base": ["alpine"], "tools": []})
    adapter = world.adapter()
    try:
        listed = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert sorted(listed) == world.api.repositories()
    pages = [p["PageNumber"] for a, p in world.api.calls if a == "ListNamespaces"]
    assert pages == [1, 2]
    assert [p["PageNumber"] for a, p in world.api.calls if a == "ListRepositories"] == [1, 2, 1, 1]


async def test_prepare_creates_missing_namespaces_and_private_repositories_once() -> None:
    world = World({"apps": ["a"]})
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["apps/a", "apps/b", "new/x"])
        await adapter.prepare_for_push(["apps/a", "apps/b", "new/x"])
    finally:
        await adapter.aclose()
    creates = [(a, p.get("Namespace"), p["Name"]) for a, p in world.api.calls if a.startswith("Create")]
    assert creates == [("CreateNamespace", None, "new"), ("CreateRepository", "apps", "b"),
                       ("CreateRepository", "new", "x")]
    assert world.api.repositories() == ["apps/a", "apps/b", "new/x"]


async def test_a_wrong_secret_is_an_authentication_error_with_the_vendors_code() -> None:
    world = World()
    adapter = world.adapter(secret="wrong-secret")
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("team/app")
    finally:
        await adapter.aclose()
    assert info.value.codes == ("SignatureDoesNotMatch",) and not info.value.transient
    assert "wrong-secret" not in str(info.value)


async def test_a_wrong_registry_name_is_named() -> None:
    world = World()
    adapter = world.adapter(registry_name="other")
    try:
        with pytest.raises(NotFoundError, match=r"NotFound\.Registry"):
            [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()


@pytest.mark.parametrize(("lifetime", "fetches"), [(60, 2), (3600, 1)])
async def test_the_temporary_login_is_renewed_only_near_its_expiry(lifetime: int, fetches: int) -> None:
    # ExpireTime is RFC 3339: misread, a one-minute login would look good for much longer.
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
