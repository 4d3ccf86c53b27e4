"""adapters.gcr against an in-memory Google OAuth2 token endpoint (tests/support/fake_google_oauth.py:
the JWT's claims and RS256 signature checked with the account's public key) and an in-memory
GCR / Artifact Registry (bearer flow, token service taking ``_json_key`` or
``oauth2accesstoken`` Basic credentials, ``_catalog`` paged with Link)."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest
from pydantic import SecretStr

from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError
from adapters.gcr import GcrAdapter, parse_key
from tests.support.fake_google_oauth import FakeGoogleOAuth, ServiceAccount, new_rsa_key

TOKEN_URI = "https://oauth2.googleapis.com/token"


def reply(status: int = 200, *, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


class FakeGoogleRegistry:
    """GCR or Artifact Registry on ``host``: bearer challenges, a token service at
    ``/v2/token`` taking Basic ``user:password`` from ``accepted``, a paged catalog."""

    PAGE = 2

    def __init__(self, host: str, accepted: dict[str, str], repositories: list[str]) -> None:
        self.host = host
        self.accepted = accepted
        self.repositories = sorted(repositories)
        self.token_users: list[str] = []  # who asked for each token
        self.issued: set[str] = set()
        self.catalog_pages = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/token":
            return self._token(request)
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.issued:
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="https://{self.host}/v2/token",'
                                                           f'service="{self.host}"'})
        if request.url.path == "/v2/_catalog":
            self.catalog_pages += 1
            last = request.url.params.get("last", "")
            names = [r for r in self.repositories if r > last][: self.PAGE]
            headers = {}
            if names and names[-1] != self.repositories[-1]:
                headers["Link"] = f'</v2/_catalog?last={names[-1]}&n={self.PAGE}>; rel="next"'
            return reply(200, body={"repositories": names}, headers=headers)
        if request.url.path.endswith("/tags/list"):
            return reply(200, body={"name": "x", "tags": ["v1"]})
        return reply(200, body={})

    def _token(self, request: httpx.Request) -> httpx.Response:
        raw = request.headers.get("Authorization", "").removeprefix("Basic ")
        user, _, password = base64.b64decode(raw).decode().partition(":") if raw else ("", "", "")
        if self.accepted.get(user) != password:
            return reply(401, body={"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
        self.token_users.append(user)
        token = f"gtok-{len(self.token_users)}"
        self.issued.add(token)
        return reply(200, body={"token": token, "expires_in": 3600})


class World:
    def __init__(self, host: str = "gcr.io", *, expires_in: int = 3599, repositories: list[str] | None = None,
                 wrong_key: bool = False) -> None:
        self.account = ServiceAccount(token_uri=TOKEN_URI)
        # The token endpoint knows the account's real key; a stolen email with another key fails.
        checked = ServiceAccount(token_uri=TOKEN_URI, private_key_id=self.account.private_key_id,
                                 key=new_rsa_key()) if wrong_key else self.account
        self.google = FakeGoogleOAuth(checked, expires_in=expires_in)
        self.registry = FakeGoogleRegistry(
            host, {"_json_key": self.account.json_key, "oauth2accesstoken": self.google.access_token},
            repositories or ["proj/a", "proj/b", "proj/c", "proj/d/e", "proj/f"])
        self.host = host

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "oauth2.googleapis.com":
            return self.google(request)
        assert request.url.host == self.host, request.url
        return self.registry(request)

    def adapter(self, username: str | None, password: str) -> GcrAdapter:
        endpoint = Endpoint(url=f"https://{self.host}", username=username, password=SecretStr(password))
        return GcrAdapter(endpoint, transport=httpx.MockTransport(self))


# -- the plain _json_key login ----------------------------------------------------------------


async def test_json_key_user_goes_straight_to_the_registry_token_service() -> None:
    world = World()
    adapter = world.adapter("_json_key", world.account.json_key)
    try:
        assert await adapter.list_tags("proj/a") == ["v1"]
    finally:
        await adapter.aclose()
    assert world.registry.token_users == ["_json_key"]
    assert world.google.assertions == [] and world.google.refused == []


# -- OAuth2: JWT -> access token -> registry ---------------------------------------------------


@pytest.mark.parametrize("username", ["oauth2accesstoken", None], ids=["oauth2accesstoken", "type-oauth"])
async def test_json_key_is_traded_for_an_access_token(username: str | None) -> None:
    world = World()
    adapter = world.adapter(username, world.account.json_key)
    try:
        listed = [name async for name in adapter.list_repositories()]
        assert await adapter.list_tags("proj/a") == ["v1"]
    finally:
        await adapter.aclose()

    assert listed == ["proj/a", "proj/b", "proj/c", "proj/d/e", "proj/f"]
    assert world.registry.catalog_pages == 3
    assert world.google.refused == []
    [(header, claims)] = world.google.assertions  # one access token served both scopes
    assert header == {"alg": "RS256", "typ": "JWT", "kid": world.account.private_key_id}
    assert claims["iss"] == world.account.client_email
    assert claims["aud"] == TOKEN_URI
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["exp"] - claims["iat"] == 3600
    assert world.registry.token_users == ["oauth2accesstoken", "oauth2accesstoken"]
    assert adapter.endpoint.username == "oauth2accesstoken"


async def test_base64_json_key_works_too() -> None:
    world = World()
    encoded = base64.b64encode(world.account.json_key.encode()).decode()
    adapter = world.adapter("oauth2accesstoken", encoded)
    try:
        await adapter.list_tags("proj/a")
    finally:
        await adapter.aclose()
    assert len(world.google.assertions) == 1


async def test_access_token_is_renewed_before_it_expires() -> None:
    world = World(expires_in=120)  # inside the refresh margin: every use asks again
    adapter = world.adapter("oauth2accesstoken", world.account.json_key)
    try:
        await adapter.list_tags("proj/a")
        await adapter.list_tags("proj/b")
    finally:
        await adapter.aclose()
    assert len(world.google.assertions) == 2
    assert adapter.client.auth.credential_fetches == 2


async def test_ready_made_access_token_is_used_as_it_is() -> None:
    world = World()
    adapter = world.adapter("oauth2accesstoken", world.google.access_token)
    try:
        assert await adapter.list_tags("proj/a") == ["v1"]
    finally:
        await adapter.aclose()
    assert world.google.assertions == [] and world.registry.token_users == ["oauth2accesstoken"]


async def test_refused_assertion_is_an_authentication_error_without_the_key() -> None:
    world = World(wrong_key=True)
    adapter = world.adapter("oauth2accesstoken", world.account.json_key)
    try:
        with pytest.raises(AuthenticationError) as info:
            await adapter.list_tags("proj/a")
    finally:
        await adapter.aclose()

    assert world.google.refused and world.google.refused[0].startswith("Invalid JWT")
    assert info.value.codes == ("invalid_grant",)
    private = json.loads(world.account.json_key)["private_key"]
    body_line = private.splitlines()[1]
    for text in (str(info.value), repr(info.value), repr(vars(info.value)), repr(adapter.client.auth)):
        assert body_line not in text and "PRIVATE KEY" not in text
    assert world.registry.token_users == []


# -- key files ---------------------------------------------------------------------------------


def test_key_parsing_never_echoes_the_key() -> None:
    account = ServiceAccount(token_uri=TOKEN_URI)
    key = json.loads(account.json_key)
    assert parse_key("ya29.not-json") is None
    with pytest.raises(ConfigError) as info:
        parse_key(json.dumps({**key, "type": "authorized_user"}))
    assert "type" in str(info.value) and key["private_key"][40:80] not in str(info.value)
    with pytest.raises(ConfigError, match="token_uri"):
        parse_key(json.dumps({**key, "token_uri": "http://oauth.example/token"}))
    assert parse_key(json.dumps({**key, "token_uri": "http://127.0.0.1:8080/token"})) is not None
    with pytest.raises(ConfigError, match="JSON key"):
        GcrAdapter(Endpoint(url="https://gcr.io", password=SecretStr("not a key")))


# -- Artifact Registry paths -------------------------------------------------------------------


async def test_artifact_registry_needs_three_components() -> None:
    assert GcrAdapter.info.min_path_components == 2
    world = World(host="europe-west1-docker.pkg.dev",
                  repositories=["proj/repo/a", "proj/repo/b", "proj/repo/c"])
    adapter = world.adapter("_json_key", world.account.json_key)
    try:
        assert adapter.info.min_path_components == 3 and adapter.info.type == "google-gcr"
        with pytest.raises(ConfigError, match=re.escape("proj/img")):
            await adapter.prepare_for_push(["proj/repo/img", "proj/img"])
        await adapter.prepare_for_push(["proj/repo/img"])
        assert [n async for n in adapter.list_repositories()] == ["proj/repo/a", "proj/repo/b", "proj/repo/c"]
    finally:
        await adapter.aclose()
    assert world.registry.catalog_pages == 2
