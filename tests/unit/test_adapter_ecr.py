"""adapters.ecr against an in-memory ECR API (tests/support/fake_ecr_api.py: SigV4 checked on every
call) and an in-memory ECR registry that takes Basic "AWS:<token password>" only."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from pydantic import SecretStr

import adapters
from adapters.base import AdapterInfo
from adapters.ecr import EcrAdapter
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    ConfigError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
)
from tests.support.fake_ecr_api import FakeEcrApi

ACCOUNT = "123456789012"
REGION = "us-west-2"
REGISTRY_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
API_HOST = f"api.ecr.{REGION}.amazonaws.com"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


def reply(status: int = 200, *, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """A streamed answer, as the distribution client reads registry bodies raw."""
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


class FakeEcrRegistry:
    """ECR's registry endpoint: Basic only, with the password of the API's latest token."""

    def __init__(self, api: FakeEcrApi) -> None:
        self.api = api
        self.log: list[tuple[str | None, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wanted = "Basic " + base64.b64encode(f"AWS:{self.api.registry_password}".encode()).decode()
        given = request.headers.get("Authorization")
        if given != wanted:
            response = reply(401, body={"errors": [{"code": "DENIED", "message": "Not Authorized"}]},
                             headers={"WWW-Authenticate":
                                      f'Basic realm="https://{REGISTRY_HOST}/",service="ecr.amazonaws.com"'})
        elif request.url.path.endswith("/tags/list"):
            response = reply(200, body={"name": "x", "tags": ["1.0", "2.0"]})
        else:
            response = reply(200, body={})
        self.log.append((given, response.status_code))
        return response


class World:
    def __init__(self, **api_options: object) -> None:
        self.api = FakeEcrApi(access_key_id=KEY_ID, secret_access_key=SECRET, region=REGION,
                              registry_id=ACCOUNT, **api_options)  # type: ignore[arg-type]
        self.registry = FakeEcrRegistry(self.api)
        self.foreign: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == API_HOST:
            return self.api(request)
        if request.url.host == REGISTRY_HOST:
            return self.registry(request)
        self.foreign.append(request)
        return httpx.Response(599)

    def adapter(self, secret: str = SECRET, **options: object) -> EcrAdapter:
        endpoint = Endpoint(url=f"https://{REGISTRY_HOST}", username=KEY_ID, password=SecretStr(secret))
        return EcrAdapter(endpoint, transport=httpx.MockTransport(self), **options)  # type: ignore[arg-type]


# -- configuration ----------------------------------------------------------------------------


def test_region_account_and_api_come_from_the_host() -> None:
    adapter = World().adapter()
    assert (adapter.region, adapter.registry_id, adapter.api_url) == (REGION, ACCOUNT, f"https://{API_HOST}")
    assert adapter.info.type == "aws-ecr"
    assert adapter.info.supports_mount is False
    assert adapter.info.triggers == ("manual", "scheduled")
    assert adapter.info.filters == ("name", "tag")


@pytest.mark.parametrize(("host", "api"), [
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "https://api.ecr.cn-north-1.amazonaws.com.cn"),
    ("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", "https://ecr-fips.us-east-1.amazonaws.com"),
])
def test_china_and_fips_hosts(host: str, api: str) -> None:
    endpoint = Endpoint(url=f"https://{host}", username=KEY_ID, password=SecretStr(SECRET))
    assert EcrAdapter(endpoint).api_url == api


def test_overrides_win_over_the_host_and_are_needed_off_ecr() -> None:
    endpoint = Endpoint(url="http://127.0.0.1:5000", username=KEY_ID, password=SecretStr(SECRET))
    with pytest.raises(ConfigError, match="not an ECR host"):
        EcrAdapter(endpoint)
    adapter = EcrAdapter(endpoint, region="eu-west-1", registry_id="000000000001",
                         api_url="http://127.0.0.1:9/")
    assert (adapter.region, adapter.registry_id, adapter.api_url) == ("eu-west-1", "000000000001",
                                                                        "http://127.0.0.1:9/")


def test_credentials_are_required_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="access key id"):
        EcrAdapter(Endpoint(url=f"https://{REGISTRY_HOST}"))
    adapter = World().adapter()
    for text in (repr(adapter), repr(adapter.client.auth), repr(adapter.endpoint)):
        assert SECRET not in text


def test_create_adapter_finds_it_by_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(adapters.ADAPTERS, "aws-ecr", EcrAdapter)
    endpoint = Endpoint(url=f"https://{REGISTRY_HOST}", username=KEY_ID, password=SecretStr(SECRET))
    assert isinstance(adapters.create_adapter("aws-ecr", endpoint), EcrAdapter)
    assert isinstance(adapters.adapter_info("aws-ecr"), AdapterInfo)


# -- the registry password from GetAuthorizationToken -----------------------------------------


async def test_token_is_fetched_once_and_sent_as_basic_to_the_registry_only() -> None:
    world = World()
    adapter = world.adapter()
    try:
        assert await adapter.list_tags("team/app") == ["1.0", "2.0"]
        assert await adapter.list_tags("team/other") == ["1.0", "2.0"]
    finally:
        await adapter.aclose()

    assert world.api.actions() == ["GetAuthorizationToken"]
    assert world.api.refused == []
    basic = "Basic " + base64.b64encode(b"AWS:ecr-registry-password").decode()
    assert world.registry.log == [(None, 401), (basic, 200), (basic, 200)]
    assert adapter.client.auth.credential_fetches == 1
    assert world.foreign == []


async def test_token_near_its_expiry_is_fetched_again() -> None:
    world = World(token_lifetime=60)  # inside the refresh margin: never reused
    adapter = world.adapter()
    try:
        await adapter.list_tags("team/app")
        world.api.registry_password = "rotated-password"
        assert await adapter.list_tags("team/app") == ["1.0", "2.0"]
    finally:
        await adapter.aclose()

    assert world.api.actions() == ["GetAuthorizationToken", "GetAuthorizationToken"]
    assert [status for _, status in world.registry.log] == [401, 200, 200]


async def test_a_refused_token_is_replaced_once() -> None:
    world = World()
    adapter = world.adapter()
    try:
        await adapter.list_tags("team/app")
        world.api.registry_password = "revoked-and-reissued"  # the old token no longer works
        assert await adapter.list_tags("team/app") == ["1.0", "2.0"]
    finally:
        await adapter.aclose()

    assert world.api.actions() == ["GetAuthorizationToken", "GetAuthorizationToken"]
    assert [status for _, status in world.registry.log] == [401, 200, 401, 200]


async def test_wrong_secret_is_an_authentication_error_without_the_secret() -> None:
    world = World()
    adapter = world.adapter(secret="not-the-secret-at-all")
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("team/app")
        health = await adapter.health()
    finally:
        await adapter.aclose()

    assert world.api.refused == ["signature mismatch", "signature mismatch"]
    assert "InvalidSignatureException" in info.value.codes
    assert health.status == "unhealthy" and "InvalidSignatureException" in health.reason
    for text in (str(info.value), repr(info.value), repr(vars(info.value)), health.reason):
        assert "not-the-secret-at-all" not in text and SECRET not in text


async def test_health_with_good_credentials() -> None:
    world = World()
    adapter = world.adapter()
    try:
        health = await adapter.health()
    finally:
        await adapter.aclose()
    assert health.status == "healthy", health.reason
    assert world.api.actions() == ["GetAuthorizationToken"]


# -- listing: DescribeRepositories ------------------------------------------------------------


async def test_listing_pages_through_describe_repositories() -> None:
    names = ["a/one", "a/two", "b/three", "c", "d/e/f"]
    world = World(repositories=list(names), page_size=2)
    adapter = world.adapter()
    try:
        listed = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()

    assert listed == sorted(names)
    assert [payload for _, payload in world.api.calls] == [
        {"registryId": ACCOUNT, "maxResults": 1000},
        {"registryId": ACCOUNT, "maxResults": 1000, "nextToken": "2"},
        {"registryId": ACCOUNT, "maxResults": 1000, "nextToken": "4"},
    ]
    assert world.registry.log == []  # no _catalog: ECR has none worth asking


async def test_named_repositories_are_not_listed() -> None:
    world = World(repositories=["a/one"])
    adapter = world.adapter()
    try:
        assert [n async for n in adapter.list_repositories(["x/y", "z"])] == ["x/y", "z"]
    finally:
        await adapter.aclose()
    assert world.api.calls == []


async def test_throttling_is_a_transient_rate_limit() -> None:
    world = World(failures={"DescribeRepositories": (400, "ThrottlingException")})
    adapter = world.adapter()
    try:
        with pytest.raises(RateLimitedError) as info:
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.transient and info.value.codes == ("ThrottlingException",)


async def test_server_exception_is_transient() -> None:
    world = World(failures={"DescribeRepositories": (500, "ServerException")})
    adapter = world.adapter()
    try:
        with pytest.raises(ServerError) as info:
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.transient


# -- prepare_for_push: CreateRepository -------------------------------------------------------


async def test_missing_repositories_are_created_and_existing_ones_left_alone() -> None:
    world = World(repositories=["team/app"])
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["team/app", "team/new", "other/deep/new", "team/new"])
        first = world.api.actions()
        world.api.calls.clear()
        await adapter.prepare_for_push(["team/app", "team/new", "other/deep/new"])
    finally:
        await adapter.aclose()

    assert sorted(world.api.repositories) == ["other/deep/new", "team/app", "team/new"]
    assert sorted(first) == ["CreateRepository"] * 2 + ["DescribeRepositories"] * 3
    created = sorted(p["repositoryName"] for a, p in world.api.calls if a == "CreateRepository")
    assert created == []  # second run: everything exists
    assert world.api.actions() == ["DescribeRepositories"] * 3


async def test_repository_created_meanwhile_is_fine() -> None:
    world = World(failures={"CreateRepository": (400, "RepositoryAlreadyExistsException")})
    adapter = world.adapter()
    try:
        await adapter.prepare_for_push(["team/raced"])
    finally:
        await adapter.aclose()
    assert world.api.actions() == ["DescribeRepositories", "CreateRepository"]


async def test_creation_refused_is_a_permission_error() -> None:
    world = World(failures={"CreateRepository": (400, "AccessDeniedException")})
    adapter = world.adapter()
    try:
        with pytest.raises(PermissionDeniedError) as info:
            await adapter.prepare_for_push(["team/forbidden"])
    finally:
        await adapter.aclose()
    assert "CreateRepository" in str(info.value) and not info.value.transient
    assert world.api.repositories == []
