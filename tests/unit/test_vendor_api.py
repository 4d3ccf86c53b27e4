"""adapters.vendor_api: credentials only to the API's host, no redirects, capped answers, and
vendors' error bodies mapped onto the error tree."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from adapters import vendor_api
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    ContentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RegistryError,
    ServerError,
    TransportError,
)
from adapters.vendor_api import HeaderAuth, VendorApi, vendor_message
from tests.support.vendor_fakes import Router, reply

HOST = "api.example"
SECRET = "s3cret-header-value"


def make(router: Router) -> VendorApi:
    return VendorApi(f"https://{HOST}/v1", Endpoint(url="https://registry.example"),
                     auth=lambda host: HeaderAuth(host, lambda: {"PRIVATE-TOKEN": SECRET}),
                     transport=router.transport())


async def test_host_bound_auth_adds_nothing_for_another_host() -> None:
    auth = HeaderAuth(HOST, lambda: {"PRIVATE-TOKEN": SECRET})
    for url, expected in ((f"https://{HOST}/v1/x", SECRET), ("https://storage.example/blob", None)):
        flow = auth.async_auth_flow(httpx.Request("GET", url))
        request = await flow.__anext__()
        assert request.headers.get("PRIVATE-TOKEN") == expected
        with pytest.raises(StopAsyncIteration):
            await flow.asend(httpx.Response(200))


async def test_a_redirect_is_an_error_and_is_not_followed() -> None:
    router = Router()
    router.add("GET", HOST, r"/v1/moved", lambda r: reply(302, headers={"Location": "https://elsewhere.example/x"}))
    api = make(router)
    try:
        with pytest.raises(RegistryError) as info:
            await api.get("/moved")
    finally:
        await api.aclose()
    assert info.value.status == 302
    assert router.to("elsewhere.example") == []


async def test_answers_over_the_cap_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vendor_api, "MAX_API_RESPONSE_BYTES", 1000)
    router = Router()
    undeclared = b"[" + b"1," * 800 + b"1]"  # no Content-Length: the cap applies while reading
    router.add("GET", HOST, r"/v1/big", lambda r: httpx.Response(200, stream=httpx.ByteStream(undeclared)))
    router.add("GET", HOST, r"/v1/declared", lambda r: reply(200, content=b"x" * 2000))
    api = make(router)
    try:
        for path in ("/big", "/declared"):
            with pytest.raises(ContentError, match="over 1000"):
                await api.get(path)
    finally:
        await api.aclose()


async def test_compressed_answers_are_decoded_and_capped_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    page = json.dumps([{"name": f"repo-{i}"} for i in range(50)]).encode()
    bomb = gzip.compress(b" " * 5000 + b"[]")  # 40-odd bytes on the wire

    def gzipped(body: bytes) -> httpx.Response:
        packed = gzip.compress(body) if body is page else body
        return httpx.Response(200, headers={"Content-Encoding": "gzip", "Content-Length": str(len(packed))},
                              stream=httpx.ByteStream(packed))

    monkeypatch.setattr(vendor_api, "MAX_API_RESPONSE_BYTES", 4000)
    router = Router()
    router.add("GET", HOST, r"/v1/page", lambda r: gzipped(page))
    router.add("GET", HOST, r"/v1/bomb", lambda r: gzipped(bomb))
    api = make(router)
    try:
        assert (await api.get("/page")).data[49] == {"name": "repo-49"}
        with pytest.raises(ContentError, match="over 4000"):
            await api.get("/bomb")
    finally:
        await api.aclose()


@pytest.mark.parametrize(("status", "headers", "error", "transient"), [
    (401, {}, AuthenticationError, False),
    (403, {}, PermissionDeniedError, False),
    (403, {"X-RateLimit-Remaining": "0"}, RateLimitedError, True),
    (404, {}, NotFoundError, False),
    (429, {"Retry-After": "3"}, RateLimitedError, True),
    (500, {}, ServerError, True),
    (422, {}, RegistryError, False),
])
async def test_statuses_map_onto_the_error_tree(status: int, headers: dict[str, str],
                                                error: type[RegistryError], transient: bool) -> None:
    router = Router()
    router.add("GET", HOST, r"/v1/x",
               lambda r: reply(status, body={"message": "vendor says no"}, headers=headers))
    api = make(router)
    try:
        with pytest.raises(RegistryError) as info:
            await api.get("/x")
    finally:
        await api.aclose()
    assert type(info.value) is error
    assert info.value.transient is transient
    assert "vendor says no" in str(info.value) and SECRET not in str(info.value)


async def test_connection_failures_are_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api = VendorApi(f"https://{HOST}", Endpoint(url="https://registry.example"),
                    transport=httpx.MockTransport(refuse))
    try:
        with pytest.raises(TransportError) as info:
            await api.get("/x")
    finally:
        await api.aclose()
    assert info.value.transient


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error_message": "Repository already exists"}', "Repository already exists"),  # Quay
    (b'{"detail": "Incorrect authentication credentials"}', "Incorrect authentication credentials"),  # Hub
    (b'{"message": "Not Found", "documentation_url": "x"}', "Not Found"),  # GitHub
    (b'{"message": {"name": ["has already been taken"]}}', '{"name": ["has already been taken"]}'),  # GitLab
    (b'{"errors": [{"code": "X", "message": "m1"}, {"message": "m2"}]}', "m1; m2"),
    (b"<html>\x00bad gateway</html>", "<html> bad gateway</html>"),
])
def test_each_vendors_error_message_is_found(body: bytes, message: str) -> None:
    assert vendor_message(body) == message


@pytest.mark.parametrize(("type_", "url"), [
    ("docker-hub", "https://hub.docker.com"), ("github-ghcr", "https://ghcr.io"),
    ("quay", "https://quay.io"), ("gitlab", "https://registry.gitlab.com"),
])
async def test_each_hosted_adapter_is_built_from_an_endpoint_alone(monkeypatch: pytest.MonkeyPatch,
                                                                   type_: str, url: str) -> None:
    import adapters
    from adapters.dockerhub import DockerHubAdapter
    from adapters.ghcr import GhcrAdapter
    from adapters.gitlab import GitLabAdapter
    from adapters.quay import QuayAdapter

    factory = {"docker-hub": DockerHubAdapter, "github-ghcr": GhcrAdapter, "quay": QuayAdapter,
               "gitlab": GitLabAdapter}[type_]
    monkeypatch.setitem(adapters.ADAPTERS, type_, factory)
    adapter = adapters.create_adapter(type_, Endpoint(url=url))  # no request is made here
    try:
        assert adapters.adapter_info(type_).type == type_
        assert type(adapter) is factory
    finally:
        await adapter.aclose()
