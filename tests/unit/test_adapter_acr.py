"""adapters.acr against an in-memory Azure Container Registry shaped after ACR's published
authentication docs (Azure/acr docs/AAD-OAuth.md, Token-BasicAuth.md): a bearer registry whose
token service ``/oauth2/token`` takes Basic (GET) or an ACR refresh token (POST
grant_type=refresh_token), ``/oauth2/exchange`` trading an AAD access token for a refresh token,
``metadata_read`` wanted for tag lists, and a ``_catalog`` paged with Link."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr

from adapters.acr import REFRESH_TOKEN_USER, AcrAdapter
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError

HOST = "myreg.azurecr.io"
ADMIN_PASSWORD = "acr-admin-password-never-shown"
AAD_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.aad-access-token.never-shown"


def reply(status: int = 200, *, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


def fake_jwt(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeAcr:
    PAGE = 2

    def __init__(self, *, refresh_lifetime: float = 3 * 3600, repositories: list[str] | None = None) -> None:
        self.refresh_lifetime = refresh_lifetime
        self.refresh_tokens: set[str] = {fake_jwt({"sub": "given", "exp": time.time() + 3 * 3600})}
        self.repositories = sorted(repositories or ["hello-world", "team/a", "team/b", "team/c", "z"])
        self.granted: dict[str, set[str]] = {}
        # (method, grant_type or "basic", scopes) per token request; (form) per exchange
        self.token_requests: list[tuple[str, str, tuple[str, ...]]] = []
        self.exchanges: list[dict[str, str]] = []
        self.authorizations: list[str | None] = []  # Authorization of every request, as sent
        self.catalog_pages = 0

    @property
    def given_refresh_token(self) -> str:
        return next(iter(self.refresh_tokens))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.host == HOST, request.url
        self.authorizations.append(request.headers.get("Authorization"))
        if request.url.path == "/oauth2/token":
            return self._token(request)
        if request.url.path == "/oauth2/exchange":
            return self._exchange(request)
        return self._registry(request)

    def _token(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            form = dict(parse_qsl(request.content.decode()))
            scopes = tuple(form.get("scope", "").split())
            self.token_requests.append(("POST", form.get("grant_type", ""), scopes))
            ok = (form.get("grant_type") == "refresh_token" and form.get("service") == HOST
                  and form.get("refresh_token") in self.refresh_tokens)
        else:
            scopes = tuple(request.url.params.get_list("scope"))
            self.token_requests.append(("GET", "basic", scopes))
            expected = "Basic " + base64.b64encode(f"myreg:{ADMIN_PASSWORD}".encode()).decode()
            ok = request.headers.get("Authorization") == expected
        if not ok:
            return reply(401, body={"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
        token = f"acr-access-{len(self.token_requests)}"
        self.granted[token] = set(scopes)
        return reply(200, body={"access_token": token})

    def _exchange(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        self.exchanges.append(form)
        if form.get("grant_type") != "access_token" or form.get("access_token") != AAD_TOKEN:
            return reply(401, body={"errors": [{"code": "UNAUTHORIZED", "message": "invalid AAD token"}]})
        refresh = fake_jwt({"sub": "aad-user", "n": len(self.exchanges),
                            "exp": time.time() + self.refresh_lifetime})
        self.refresh_tokens.add(refresh)
        return reply(200, body={"refresh_token": refresh})

    def _registry(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/_catalog":
            scope = "registry:catalog:*"
        elif path.endswith("/tags/list"):
            scope = f"repository:{path[len('/v2/'):-len('/tags/list')]}:metadata_read"
        else:
            scope = ""
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in self.granted or (scope and scope not in self.granted[token]):
            challenge = f'Bearer realm="https://{HOST}/oauth2/token",service="{HOST}"'
            if scope:
                challenge += f',scope="{scope}"'
            return reply(401, headers={"WWW-Authenticate": challenge},
                         body={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
        if path == "/v2/_catalog":
            self.catalog_pages += 1
            last = request.url.params.get("last", "")
            names = [r for r in self.repositories if r > last][: self.PAGE]
            headers = {}
            if names and names[-1] != self.repositories[-1]:
                headers["Link"] = f'</v2/_catalog?last={names[-1]}&n={self.PAGE}&orderby=>; rel="next"'
            return reply(200, body={"repositories": names}, headers=headers)
        if path.endswith("/tags/list"):
            return reply(200, body={"name": "x", "tags": ["latest", "v1"]})
        return reply(200, body={})


def make(acr: FakeAcr, username: str, password: str) -> AcrAdapter:
    endpoint = Endpoint(url=f"https://{HOST}", username=username, password=SecretStr(password))
    return AcrAdapter(endpoint, transport=httpx.MockTransport(acr))


def test_info() -> None:
    info = AcrAdapter.info
    assert info.type == "azure-acr" and info.triggers == ("manual", "scheduled")
    assert info.filters == ("name", "tag") and info.min_path_components == 1 and info.supports_mount


async def test_admin_user_is_basic_at_the_token_service_and_metadata_read_is_asked_for() -> None:
    acr = FakeAcr()
    adapter = make(acr, "myreg", ADMIN_PASSWORD)
    try:
        assert await adapter.list_tags("team/a") == ["latest", "v1"]
        assert await adapter.list_tags("team/b") == ["latest", "v1"]
    finally:
        await adapter.aclose()
    # The first challenge names ACR's scope; once the realm is known, the pull token is asked for
    # up front (our guess) and ACR's 401 adds metadata_read.
    assert acr.token_requests == [
        ("GET", "basic", ("repository:team/a:pull", "repository:team/a:metadata_read")),
        ("GET", "basic", ("repository:team/b:pull",)),
        ("GET", "basic", ("repository:team/b:pull", "repository:team/b:metadata_read")),
    ]


async def test_refresh_token_is_exchanged_by_post_and_never_sent_as_a_password() -> None:
    acr = FakeAcr()
    adapter = make(acr, REFRESH_TOKEN_USER, acr.given_refresh_token)
    try:
        listed = [name async for name in adapter.list_repositories()]
        assert await adapter.list_tags("team/b") == ["latest", "v1"]
    finally:
        await adapter.aclose()

    assert listed == ["hello-world", "team/a", "team/b", "team/c", "z"]
    assert acr.catalog_pages == 3
    assert [(m, g) for m, g, _ in acr.token_requests] == [("POST", "refresh_token")] * len(acr.token_requests)
    assert acr.token_requests[0][2] == ("registry:catalog:*",)
    scopes = [s for _, _, s in acr.token_requests]
    assert ("repository:team/b:pull", "repository:team/b:metadata_read") in scopes
    assert not any(a and a.startswith("Basic") for a in acr.authorizations)
    assert acr.exchanges == []


async def test_aad_token_is_exchanged_once_for_a_refresh_token() -> None:
    acr = FakeAcr()
    adapter = make(acr, "aad:tenant-1234", AAD_TOKEN)
    try:
        assert await adapter.list_tags("team/a") == ["latest", "v1"]
        assert await adapter.list_tags("team/c") == ["latest", "v1"]
    finally:
        await adapter.aclose()

    assert acr.exchanges == [{"grant_type": "access_token", "service": HOST, "tenant": "tenant-1234",
                              "access_token": AAD_TOKEN}]
    assert len(acr.token_requests) == 3 and all(g == "refresh_token" for _, g, _ in acr.token_requests)
    assert not any(a and AAD_TOKEN in a for a in acr.authorizations)


async def test_refresh_token_near_expiry_is_exchanged_again() -> None:
    acr = FakeAcr(refresh_lifetime=60)  # inside the refresh margin
    adapter = make(acr, "aad", AAD_TOKEN)
    try:
        await adapter.list_tags("team/a")
        await adapter.list_tags("team/b")
    finally:
        await adapter.aclose()
    # Every token fetch (one for team/a, two for team/b) found the refresh token too old.
    assert len(acr.exchanges) == len(acr.token_requests) == 3 and "tenant" not in acr.exchanges[0]


async def test_unknown_refresh_token_is_an_authentication_error_without_the_token() -> None:
    acr = FakeAcr()
    bogus = fake_jwt({"sub": "nobody", "exp": time.time() + 3600})
    adapter = make(acr, REFRESH_TOKEN_USER, bogus)
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("team/a")
    finally:
        await adapter.aclose()
    for text in (str(info.value), repr(info.value), repr(vars(info.value))):
        assert bogus not in text


async def test_refused_aad_token_is_an_authentication_error_without_the_token() -> None:
    acr = FakeAcr()
    adapter = make(acr, "aad", "some-other-aad-token-never-shown")
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("team/a")
        health = await adapter.health()
    finally:
        await adapter.aclose()
    assert "ACR token exchange" in str(info.value) and info.value.codes == ("UNAUTHORIZED",)
    assert health.status == "unhealthy"
    for text in (str(info.value), repr(info.value), repr(vars(info.value)), health.reason):
        assert "never-shown" not in text
    assert acr.token_requests == []
