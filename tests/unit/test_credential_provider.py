"""The credential-provider hook of adapters.distribution.auth, driven through DistributionClient
over httpx.MockTransport: credentials asked for lazily and once, renewed near expiry or once
after a refusal, and OAuth2 refresh tokens exchanged by POST, never sent as a password."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import SecretStr

from adapters.distribution.auth import RegistryCredentials
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError

REALM = "http://auth.example/token"


def reply(status: int = 200, *, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Provider:
    """Hands out user/pw-1, user/pw-2, ...: each call a new password."""

    def __init__(self, *, lifetime: float | None = 3600, refresh_token: bool = False) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.refresh_token = refresh_token

    async def __call__(self) -> RegistryCredentials:
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers pile up on the lock
        expires = time.time() + self.lifetime if self.lifetime is not None else None
        return RegistryCredentials(username="user", password=SecretStr(f"pw-{self.calls}"),
                                   expires_at=expires, refresh_token=self.refresh_token)


class BearerRegistry:
    """reg.example wants a token; auth.example grants one to Basic user:<accepted> (GET) or to
    a refresh token equal to <accepted> (POST)."""

    def __init__(self, accepted: str) -> None:
        self.accepted = accepted
        self.token_requests: list[httpx.Request] = []
        self.tokens: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            self.token_requests.append(request)
            if request.method == "POST":
                form = dict(parse_qsl(request.content.decode()))
                ok = form.get("grant_type") == "refresh_token" and form.get("refresh_token") == self.accepted
            else:
                ok = request.headers.get("Authorization") == basic("user", self.accepted)
            if not ok:
                return reply(401, body={"errors": [{"code": "UNAUTHORIZED"}]})
            token = f"tok-{len(self.token_requests)}"
            self.tokens.add(token)
            return reply(200, body={"access_token": token, "expires_in": 300})
        if request.headers.get("Authorization", "").removeprefix("Bearer ") in self.tokens:
            return reply(200, body={"name": "a", "tags": ["v1"]})
        return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})


def client(handler: BearerRegistry, provider: Provider) -> DistributionClient:
    c = DistributionClient(Endpoint(url="http://reg.example"), transport=httpx.MockTransport(handler))
    c.auth.use_credential_provider(provider)
    return c


async def test_provider_is_asked_once_for_many_concurrent_requests() -> None:
    provider, registry = Provider(), BearerRegistry("pw-1")
    async with client(registry, provider) as c:
        await c.list_tags("a/0")  # learn the realm
        results = await asyncio.gather(*(c.list_tags(f"a/{i}") for i in range(1, 9)))
    assert results == [["v1"]] * 8
    assert provider.calls == 1
    assert all(r.headers["Authorization"] == basic("user", "pw-1") for r in registry.token_requests)


async def test_credentials_near_expiry_are_asked_for_again() -> None:
    provider, registry = Provider(lifetime=30), BearerRegistry("pw-2")
    registry.accepted = "pw-1"
    async with client(registry, provider) as c:
        await c.list_tags("a/1")
        registry.accepted = "pw-2"
        await c.list_tags("a/2")
    assert provider.calls == 2


async def test_refused_provider_credentials_are_replaced_once_then_given_up() -> None:
    provider, registry = Provider(), BearerRegistry("pw-2")  # the first password is refused
    async with client(registry, provider) as c:
        assert await c.list_tags("a/1") == ["v1"]
    assert provider.calls == 2

    provider, registry = Provider(), BearerRegistry("never")
    async with client(registry, provider) as c:
        with pytest.raises(AuthenticationError):
            await c.list_tags("a/1")
    assert provider.calls == 2  # one renewal, not a loop


async def test_refresh_token_is_posted_with_the_oauth2_form() -> None:
    provider, registry = Provider(lifetime=None, refresh_token=True), BearerRegistry("pw-1")
    async with client(registry, provider) as c:
        await c.list_tags("a/1")
        await c.list_tags("b/2")  # a second scope: asked up front
    [first, second] = registry.token_requests
    assert first.method == second.method == "POST"
    assert "Authorization" not in first.headers
    assert dict(parse_qsl(first.content.decode())) == {
        "grant_type": "refresh_token", "client_id": "regflow", "refresh_token": "pw-1",
        "service": "reg", "scope": "repository:a/1:pull"}
    assert dict(parse_qsl(second.content.decode()))["scope"] == "repository:b/2:pull"
    assert provider.calls == 1


def test_credentials_repr_hides_the_password() -> None:
    creds = RegistryCredentials(username="user", password=SecretStr("s3cret-value"))
    assert "s3cret-value" not in repr(creds) and "s3cret-value" not in str(creds)
    assert creds.usable()
    soon = RegistryCredentials(username="u", password=SecretStr("p"), expires_at=time.time() + 10)
    assert not soon.usable()
