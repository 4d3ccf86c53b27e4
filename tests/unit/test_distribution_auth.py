"""Unit tests of adapters.distribution.auth: challenge parsing and the bearer/basic flow, driven
through DistributionClient over an in-process httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import SimpleNamespace

import httpx
import pytest
from pydantic import SecretStr

from adapters import bounded
from adapters.bounded import AnswerTooLargeError
from adapters.distribution import auth as auth_module
from adapters.distribution.auth import TOKEN_EXPIRY_MARGIN_SECONDS, Challenge, parse_challenge
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ReplicationError, TransportError
from adapters.oci import Digest

REGISTRY = "http://reg.example"
REALM = "http://auth.example/token"
USER = "alice"
PASSWORD = "pa55-w0rd-never-shown"
BASIC_CREDENTIALS = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
BLOB = Digest.of(b"blob")

Handler = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, *, content: bytes = b"", body: object = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still a stream, as from a real transport (``content=`` would be
    read into memory at construction, and the client reads bodies raw)."""
    if body is not None:
        content = json.dumps(body).encode()
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


class AsyncByteStream(httpx.AsyncByteStream):
    """A response body produced as it is read, so a test sees how much was pulled."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces:
            yield piece


def make_client(handler: Handler, *, url: str = REGISTRY, credentials: bool = True) -> DistributionClient:
    endpoint = Endpoint(
        url=url,
        username=USER if credentials else None,
        password=SecretStr(PASSWORD) if credentials else None,
    )
    return DistributionClient(endpoint, transport=httpx.MockTransport(handler))


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert BASIC_CREDENTIALS.split()[1] not in text


_REPO_PATH = re.compile(r"^/v2/(?P<repo>.+?)/(?:tags|manifests|blobs)/")


class BearerRegistry:
    """A registry on reg.example that wants a bearer token per scope, plus its token service on
    auth.example and an object store on storage.example. Records everything it is sent."""

    def __init__(self, *, token_key: str = "token", expires_in: int = 300, token_status: int = 200) -> None:
        self.token_key = token_key
        self.expires_in = expires_in
        self.token_status = token_status
        self.token_requests: list[httpx.Request] = []
        # (Authorization header as sent, status answered): the auth flow re-sends the same
        # Request object, so headers are copied when each request arrives.
        self.registry_log: list[tuple[str | None, int]] = []
        self.storage_requests: list[httpx.Request] = []
        self.granted: dict[str, set[str]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return self._token(request)
        if request.url.host == "storage.example":
            self.storage_requests.append(request)
            if request.url.path.startswith("/upload/"):
                return reply(204, headers={"Range": "0-9"})
            return reply(200, content=b"blob")
        response = self._registry(request)
        self.registry_log.append((request.headers.get("Authorization"), response.status_code))
        return response

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if self.token_status != 200:
            return reply(self.token_status, body={"details": "bad credentials"})
        value = f"tok-{len(self.token_requests)}"
        self.granted[value] = set(request.url.params.get_list("scope"))
        return reply(200, body={self.token_key: value, "expires_in": self.expires_in})

    def _registry(self, request: httpx.Request) -> httpx.Response:
        match = _REPO_PATH.match(request.url.path)
        assert match, request.url
        action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
        scope = f"repository:{match['repo']}:{action}"
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if scope not in self.granted.get(token, set()):
            challenge = f'Bearer realm="{REALM}",service="reg",scope="{scope}"'
            return reply(401, headers={"WWW-Authenticate": challenge},
                         body={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
        if request.url.path.endswith("/tags/list"):
            return reply(200, body={"name": match["repo"], "tags": ["v1"]})
        if request.method == "POST":
            return reply(202, headers={"Location": "http://storage.example/upload/1?_state=s"})
        if "/blobs/" in request.url.path:
            return reply(307, headers={"Location": "http://storage.example/blob/1"})
        return reply(404)


# -- parse_challenge --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push"',
            Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg.example",
                                 "scope": "repository:a/b:pull,push"}),
        ),
        (
            # Several scopes in one quoted value, separated by spaces and commas.
            'Bearer realm="https://a/t", scope="repository:a:pull,push repository:b:pull"',
            Challenge("bearer", {"realm": "https://a/t",
                                 "scope": "repository:a:pull,push repository:b:pull"}),
        ),
        (
            "Bearer realm=https://auth.example/token,service=reg",
            Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg"}),
        ),
        ('BEARER Realm="https://a/t"', Challenge("bearer", {"realm": "https://a/t"})),
        ('bAsIc realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
        ("Basic", Challenge("basic", {})),
        (
            'Bearer realm="https://a/t",error="insufficient_scope"',
            Challenge("bearer", {"realm": "https://a/t", "error": "insufficient_scope"}),
        ),
        (r'Basic realm="say \"hi\""', Challenge("basic", {"realm": 'say "hi"'})),
    ],
)
def test_parse_challenge(header: str, expected: Challenge) -> None:
    assert parse_challenge(header) == expected


@pytest.mark.parametrize("header", ["", "   "])
def test_parse_challenge_empty(header: str) -> None:
    assert parse_challenge(header) is None


# -- bearer flow ------------------------------------------------------------------------------


async def test_bearer_challenge_fetches_one_token_and_retries() -> None:
    reg = BearerRegistry()
    async with make_client(reg) as client:
        assert await client.list_tags("a/b") == ["v1"]
        assert client.auth.token_fetches == 1

    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 200)]
    [token_request] = reg.token_requests
    assert token_request.method == "GET"
    assert token_request.url.copy_with(query=None) == httpx.URL(REALM)
    assert token_request.url.params.get_list("service") == ["reg"]
    assert token_request.url.params.get_list("scope") == ["repository:a/b:pull"]
    assert token_request.headers["Authorization"] == BASIC_CREDENTIALS


async def test_same_scope_reuses_the_token_without_a_401() -> None:
    reg = BearerRegistry()
    async with make_client(reg) as client:
        await client.list_tags("a/b")
        await client.list_tags("a/b")

    assert len(reg.token_requests) == 1
    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 200), ("Bearer tok-1", 200)]


async def test_new_scope_fetches_a_token_up_front() -> None:
    reg = BearerRegistry()
    async with make_client(reg) as client:
        await client.list_tags("a/b")
        assert await client.list_tags("c/d") == ["v1"]

    assert [r.url.params.get_list("scope") for r in reg.token_requests] == [
        ["repository:a/b:pull"],
        ["repository:c/d:pull"],
    ]
    # The realm is known after the first challenge: c/d costs a token fetch but no 401.
    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 200), ("Bearer tok-2", 200)]


async def test_access_token_is_accepted_in_place_of_token() -> None:
    reg = BearerRegistry(token_key="access_token")
    async with make_client(reg) as client:
        assert await client.list_tags("a/b") == ["v1"]

    assert reg.registry_log[-1] == ("Bearer tok-1", 200)


async def test_token_shorter_than_the_margin_is_used_once_then_refreshed() -> None:
    reg = BearerRegistry(expires_in=int(TOKEN_EXPIRY_MARGIN_SECONDS) // 2)
    async with make_client(reg) as client:
        assert await client.list_tags("a/b") == ["v1"]
        assert await client.list_tags("a/b") == ["v1"]

    assert len(reg.token_requests) == 2
    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 200), ("Bearer tok-2", 200)]


async def test_token_is_refreshed_once_it_nears_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    # Replace the module's view of `time` only: the event loop keeps the real clock.
    monkeypatch.setattr(auth_module, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    reg = BearerRegistry(expires_in=300)
    async with make_client(reg) as client:
        await client.list_tags("a/b")
        now[0] += 300 - TOKEN_EXPIRY_MARGIN_SECONDS - 1
        await client.list_tags("a/b")  # still fresh
        assert len(reg.token_requests) == 1
        now[0] += 2
        await client.list_tags("a/b")  # inside the margin: refreshed up front

    assert len(reg.token_requests) == 2
    assert reg.registry_log == [
        (None, 401), ("Bearer tok-1", 200), ("Bearer tok-1", 200), ("Bearer tok-2", 200),
    ]


async def test_token_service_401_is_an_authentication_error_without_the_password() -> None:
    reg = BearerRegistry(token_status=401)
    async with make_client(reg) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_tags("a/b")

    assert info.value.status == 401
    assert not info.value.transient
    assert "reg.example" in str(info.value)
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))
    assert len(reg.token_requests) == 1


async def test_anonymous_token_fetch_sends_no_authorization() -> None:
    reg = BearerRegistry()
    async with make_client(reg, credentials=False) as client:
        assert await client.list_tags("a/b") == ["v1"]

    [token_request] = reg.token_requests
    assert "Authorization" not in token_request.headers
    assert token_request.url.params.get_list("scope") == ["repository:a/b:pull"]
    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 200)]


async def test_registry_url_with_default_port_and_upper_case_still_gets_credentials() -> None:
    reg = BearerRegistry()
    async with make_client(reg, url="http://Reg.Example:80") as client:
        assert await client.list_tags("a/b") == ["v1"]

    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 200)]
    assert reg.token_requests[0].headers["Authorization"] == BASIC_CREDENTIALS


# -- basic ------------------------------------------------------------------------------------


class BasicRegistry:
    def __init__(self, password: str = PASSWORD) -> None:
        self.expected = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()
        self.log: list[tuple[str | None, int]] = []
        self.storage_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.example":
            self.storage_requests.append(request)
            return reply(200, content=b"blob")
        given = request.headers.get("Authorization")
        if given != self.expected:
            response = reply(401, headers={"WWW-Authenticate": 'Basic realm="Registry Realm"'})
        elif "/blobs/" in request.url.path:
            response = reply(307, headers={"Location": "http://storage.example/blob/1"})
        else:
            response = reply(200, body={"name": "a/b", "tags": ["v1"]})
        self.log.append((given, response.status_code))
        return response


async def test_basic_challenge_switches_to_basic_and_then_sends_it_up_front() -> None:
    reg = BasicRegistry()
    async with make_client(reg) as client:
        assert await client.list_tags("a/b") == ["v1"]
        assert await client.list_tags("c/d") == ["v1"]
        assert client.auth.token_fetches == 0

    assert reg.log == [(None, 401), (BASIC_CREDENTIALS, 200), (BASIC_CREDENTIALS, 200)]


async def test_refused_basic_credentials_raise_without_the_password() -> None:
    reg = BasicRegistry(password="something-else")
    async with make_client(reg) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.list_tags("a/b")

    assert info.value.status == 401
    assert reg.log == [(None, 401), (BASIC_CREDENTIALS, 401)]  # tried once, then gave up
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))


# -- credentials stay on the registry host ----------------------------------------------------


async def test_absolute_url_to_another_host_carries_no_authorization() -> None:
    reg = BearerRegistry()
    async with make_client(reg) as client:
        location = await client.start_upload("a/b")
        assert location == "http://storage.example/upload/1?_state=s"
        status = await client.upload_status("a/b", location)

    assert status.offset == 10
    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 202)]
    [storage_request] = reg.storage_requests
    assert "Authorization" not in storage_request.headers


async def test_bearer_redirect_to_another_host_carries_no_authorization() -> None:
    reg = BearerRegistry()
    async with make_client(reg) as client:
        async with client.open_blob("a/b", BLOB) as stream:
            body = b"".join([chunk async for chunk in stream.chunks()])

    assert body == b"blob"
    assert reg.registry_log == [(None, 401), ("Bearer tok-1", 307)]
    assert len(reg.storage_requests) == 1
    assert "Authorization" not in reg.storage_requests[0].headers


async def test_basic_redirect_to_another_host_carries_no_authorization() -> None:
    reg = BasicRegistry()
    async with make_client(reg) as client:
        await client.list_tags("a/b")  # learn that the registry wants basic
        async with client.open_blob("a/b", BLOB) as stream:
            body = b"".join([chunk async for chunk in stream.chunks()])

    assert body == b"blob"
    assert reg.log[-1] == (BASIC_CREDENTIALS, 307)
    assert len(reg.storage_requests) == 1
    assert "Authorization" not in reg.storage_requests[0].headers


# -- the password never shows -----------------------------------------------------------------


async def test_password_not_in_reprs() -> None:
    async with make_client(BearerRegistry()) as client:
        for text in (repr(client), repr(client.auth), repr(client.endpoint), str(client.endpoint),
                     repr(client.endpoint.model_dump())):
            assert_no_secret(text)
        assert client.endpoint.password is not None
        assert client.endpoint.password.get_secret_value() == PASSWORD


async def test_password_not_in_any_raised_error() -> None:
    def unreachable_token_service(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            raise httpx.ConnectError("connection refused", request=request)
        return BearerRegistry()(request)

    errors: list[ReplicationError] = []
    for handler in (BearerRegistry(token_status=401), BearerRegistry(token_status=500),
                    BasicRegistry(password="other"), unreachable_token_service):
        async with make_client(handler) as client:
            with pytest.raises(ReplicationError) as info:
                await client.list_tags("a/b")
            errors.append(info.value)

    assert [type(e) for e in errors] == [AuthenticationError, AuthenticationError,
                                         AuthenticationError, TransportError]
    assert [e.transient for e in errors] == [False, True, False, True]
    for error in errors:
        assert_no_secret(str(error))
        assert_no_secret(repr(error))
        assert_no_secret(repr(vars(error)))


# -- only the registry's own challenge counts -------------------------------------------------


class Hosts:
    """Several hosts behind one MockTransport, each answering through its own handler; every
    request is recorded as (host, method, path, Authorization) when it arrives."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = {host.replace("_", "."): h for host, h in handlers.items()}
        self.log: list[tuple[str, str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        self.log.append((host, request.method, request.url.path, request.headers.get("Authorization")))
        return self.handlers[host](request)

    def seen_by(self, host: str) -> list[tuple[str, str, str | None]]:
        return [(m, p, a) for h, m, p, a in self.log if h == host]


def bearer_registry(realm: str, *, redirect_to: str = "", upload_to: str = "") -> Handler:
    """A registry wanting ``Bearer tok`` from ``realm``; blob GETs redirect to ``redirect_to``,
    upload POSTs answer with a Location on ``upload_to``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer tok":
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
        if request.method == "POST":
            return reply(202, headers={"Location": f"{upload_to}/upload/1?_state=s"})
        if "/blobs/" in request.url.path:
            return reply(307, headers={"Location": f"{redirect_to}/blob/1"})
        return reply(200, body={"name": "a/b", "tags": ["v1"]})

    return handle


def token_service(request: httpx.Request) -> httpx.Response:
    return reply(200, body={"token": "tok", "expires_in": 300})


def stranger_asking_for(realm: str, scheme: str = "Bearer") -> Handler:
    """Object storage (or anyone a registry redirects to) that answers 401 naming ``realm``."""
    challenge = f'{scheme} realm="{realm}",service="evil"' if scheme == "Bearer" else 'Basic realm="evil"'
    return lambda request: reply(401, headers={"WWW-Authenticate": challenge},
                                 body={"errors": [{"code": "UNAUTHORIZED", "message": "who are you"}]})


async def test_a_401_from_the_host_a_blob_was_redirected_to_is_not_answered() -> None:
    # The registry redirects a blob to storage.example, whose 401 names a realm on evil.example:
    # evil.example must receive nothing, and the realm must not be adopted.
    hosts = Hosts(reg_example=bearer_registry(REALM, redirect_to="http://storage.example"),
                  auth_example=token_service,
                  storage_example=stranger_asking_for("http://evil.example/token"),
                  evil_example=token_service)
    async with make_client(hosts) as client:
        await client.list_tags("a/b")  # the registry's realm is known, the pull token cached
        with pytest.raises(AuthenticationError) as info:
            async with client.open_blob("a/b", BLOB):
                pass
        assert client.auth.token_fetches == 1
        assert await client.list_tags("c/d") == ["v1"]  # later fetches still go to the registry's realm

    assert info.value.status == 401
    assert "storage.example" in str(info.value)
    assert_no_secret(str(info.value))
    assert hosts.seen_by("evil.example") == []
    assert [auth for _, _, auth in hosts.seen_by("storage.example")] == [None]
    assert [auth for _, _, auth in hosts.seen_by("auth.example")] == [BASIC_CREDENTIALS, BASIC_CREDENTIALS]
    assert [auth for _, _, auth in hosts.seen_by("reg.example")] == [None, "Bearer tok", "Bearer tok",
                                                                     "Bearer tok"]


async def test_a_basic_challenge_from_a_redirect_target_does_not_switch_to_basic() -> None:
    # Blobs are public (redirected without asking), tags need a token: storage's Basic
    # challenge, met before the registry ever asked for anything, must not turn Basic on.
    tokens = bearer_registry(REALM)

    def registry(request: httpx.Request) -> httpx.Response:
        if "/blobs/" in request.url.path:
            return reply(307, headers={"Location": "http://storage.example/blob/1"})
        return tokens(request)

    hosts = Hosts(reg_example=registry, auth_example=token_service,
                  storage_example=stranger_asking_for("", "Basic"))
    async with make_client(hosts) as client:
        with pytest.raises(AuthenticationError):
            async with client.open_blob("a/b", BLOB):
                pass
        assert await client.list_tags("a/b") == ["v1"]

    # Basic never went anywhere but to the token service the registry named.
    assert [h for h, _, _, auth in hosts.log if auth == BASIC_CREDENTIALS] == ["auth.example"]
    assert [auth for _, _, auth in hosts.seen_by("storage.example")] == [None]
    assert [auth for _, _, auth in hosts.seen_by("reg.example")] == [None, None, "Bearer tok"]


async def test_a_redirect_target_cannot_replace_an_adopted_realm() -> None:
    hosts = Hosts(reg_example=bearer_registry(REALM, redirect_to="http://storage.example"),
                  auth_example=token_service,
                  storage_example=stranger_asking_for("http://evil.example/token"),
                  evil_example=token_service)
    async with make_client(hosts) as client:
        await client.list_tags("a/b")  # adopts auth.example
        with pytest.raises(AuthenticationError):
            async with client.open_blob("c/d", BLOB):
                pass
        await client.list_tags("e/f")

    assert hosts.seen_by("evil.example") == []
    assert len(hosts.seen_by("auth.example")) == 3  # a/b, c/d (up front), e/f


async def test_https_registry_naming_an_http_realm_is_refused_before_any_credential_is_sent() -> None:
    hosts = Hosts(reg_example=bearer_registry("http://auth.example/token"), auth_example=token_service)
    for credentials in (True, False):
        async with make_client(hosts, url="https://reg.example", credentials=credentials) as client:
            with pytest.raises(AuthenticationError) as info:
                await client.list_tags("a/b")
            assert client.auth.token_fetches == 0
        message = str(info.value)
        assert "reg.example" in message and "plain http" in message and "\n" not in message
        assert not info.value.transient

    assert hosts.seen_by("auth.example") == []
    assert {auth for _, _, auth in hosts.seen_by("reg.example")} == {None}


async def test_https_registry_may_name_an_https_realm_on_another_host() -> None:
    hosts = Hosts(reg_example=bearer_registry("https://auth.example/token"), auth_example=token_service)
    async with make_client(hosts, url="https://reg.example") as client:
        assert await client.list_tags("a/b") == ["v1"]

    assert [auth for _, _, auth in hosts.seen_by("auth.example")] == [BASIC_CREDENTIALS]
    assert [auth for _, _, auth in hosts.seen_by("reg.example")] == [None, "Bearer tok"]
    assert all(h.startswith(("reg.", "auth.")) for h, _, _, _ in hosts.log)


@pytest.mark.parametrize(
    ("realm", "scheme", "refused"),
    [
        ("https://auth.example/token", "https", None),
        ("http://auth.example/token", "http", None),
        ("https://auth.example/token", "http", None),
        ("http://auth.example/token", "https", "plain http (auth.example)"),
        ("HTTP://reg.example/token", "https", "plain http (reg.example)"),  # same host, still cleartext
        ("ftp://auth.example/token", "http", "not an http(s) URL"),
        ("/token", "https", "not an http(s) URL"),
        ("https://user:pw@auth.example/token", "https", "carries credentials"),
    ],
)
def test_realm_refusal(realm: str, scheme: str, refused: str | None) -> None:
    reason = auth_module.realm_refusal(realm, scheme)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


@pytest.mark.parametrize(
    ("registry", "url", "home"),
    [
        ("https://reg.example", "https://reg.example/v2/", True),
        ("https://reg.example", "https://REG.example:443/v2/", True),
        ("https://reg.example/prefix", "https://reg.example/other", True),
        ("https://reg.example", "http://reg.example/v2/", False),  # same host, default port: cleartext
        ("https://reg.example", "https://reg.example:5000/v2/", False),
        ("http://reg.example:5000", "https://reg.example:5000/v2/", False),
        ("https://reg.example", "https://storage.example/v2/", False),
        ("reg.example:5000", "http://reg.example:5000/v2/", True),  # bare host[:port]: any scheme
        ("reg.example:5000", "https://reg.example/v2/", False),
    ],
)
def test_origin_holds(registry: str, url: str, home: bool) -> None:
    assert auth_module.Origin.of(registry).holds(httpx.URL(url)) is home


async def test_upload_location_on_the_registry_host_over_http_gets_no_credentials() -> None:
    # An https registry handing out an http:// upload Location on its own host and default
    # port: the same host[:port], another origin. Credentials stay on https.
    hosts = Hosts(reg_example=bearer_registry("https://auth.example/token",
                                              upload_to="http://reg.example"),
                  auth_example=token_service)
    transport = httpx.MockTransport(hosts)
    async with httpx.AsyncClient(transport=transport) as token_http, httpx.AsyncClient(
        transport=transport, follow_redirects=True,
        auth=auth_module.RegistryAuth("https://reg.example", USER, SecretStr(PASSWORD),
                                      token_client=token_http),
    ) as http:
        scopes = {auth_module.SCOPES_EXTENSION: ("repository:a/b:pull,push",)}
        started = await http.post("https://reg.example/v2/a/b/blobs/uploads/", extensions=scopes)
        location = started.headers["Location"]
        await http.put(location, content=b"blob", extensions=scopes)

    assert started.status_code == 202
    assert location.startswith("http://reg.example/")
    assert hosts.seen_by("reg.example") == [("POST", "/v2/a/b/blobs/uploads/", None),
                                            ("POST", "/v2/a/b/blobs/uploads/", "Bearer tok"),
                                            ("PUT", "/upload/1", None)]


async def test_token_answer_is_capped_while_it_is_read() -> None:
    pulled: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for i in range(10_000):  # 10 MiB if read to the end
            pulled.append(i)
            yield b" " * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, stream=AsyncByteStream(endless()))
        return bearer_registry(REALM)(request)

    async with make_client(handler) as client:
        with pytest.raises(AnswerTooLargeError, match=r"auth\.example"):
            await client.list_tags("a/b")

    assert len(pulled) <= auth_module.MAX_TOKEN_RESPONSE_BYTES // 1024 + 2


async def test_token_answer_declared_over_the_cap_is_refused_unread() -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        pulled.append(1)
        yield b"{}"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            size = str(auth_module.MAX_TOKEN_RESPONSE_BYTES + 1)
            return httpx.Response(200, headers={"Content-Length": size}, stream=AsyncByteStream(body()))
        return bearer_registry(REALM)(request)

    async with make_client(handler) as client:
        with pytest.raises(AnswerTooLargeError):
            await client.list_tags("a/b")

    assert pulled == []


async def test_a_new_realm_named_by_the_registry_drops_the_old_tokens() -> None:
    realm = ["http://auth.example/token"]

    def registry(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {realm[0]}":
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{realm[0]}",service="reg"'})
        return reply(200, body={"name": "a/b", "tags": ["v1"]})

    def tokens(request: httpx.Request) -> httpx.Response:
        return reply(200, body={"token": str(request.url.copy_with(query=None)), "expires_in": 300})

    hosts = Hosts(reg_example=registry, auth_example=tokens, auth2_example=tokens)
    old, new = "Bearer http://auth.example/token", "Bearer http://auth2.example/token"
    async with make_client(hosts) as client:
        await client.list_tags("a/b")
        await client.list_tags("c/d")
        realm[0] = "http://auth2.example/token"
        await client.list_tags("a/b")  # the old token is refused, the new realm adopted
        await client.list_tags("c/d")  # its old token is gone too: fetched up front, no 401

    assert [auth for _, _, auth in hosts.seen_by("reg.example")] == [None, old, old, old, new, new]
    assert len(hosts.seen_by("auth.example")) == 2
    assert len(hosts.seen_by("auth2.example")) == 2


async def test_a_token_answer_that_never_ends_fails_by_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    def short(deadline: float | None = None, *, what: str) -> AbstractAsyncContextManager[None]:
        return bounded.within(0.2, what=what)

    monkeypatch.setattr(auth_module, "within", short)

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"tok'
        await asyncio.sleep(3600)  # a token service that never sends the rest
        yield b'en": "x"}'

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            return httpx.Response(200, stream=AsyncByteStream(trickle()))
        return bearer_registry(REALM)(request)

    async with make_client(handler) as client:
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"token service auth\.example") as info:
            await client.list_tags("a/b")

    assert time.monotonic() - started < 5
    assert info.value.transient


# -- tokens fetched ahead, batch by batch ---------------------------------------------------------


async def test_a_request_waits_for_its_own_prefetched_batch_not_for_every_batch() -> None:
    """A prefetch returns once its fetches are under way: a request whose repository's batch
    has its token goes at once, one whose batch is still being fetched waits for that fetch
    (never a fetch of its own), and the future says when every batch has ended."""
    registry = BearerRegistry()
    names = [f"team/app-{i}" for i in range(2 * auth_module.TOKEN_SCOPES_PER_FETCH + 1)]
    held = [asyncio.Event() for _ in range(3)]  # one per batch of the prefetch

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})
        if request.url.host == "auth.example":
            first_scope = request.url.params.get_list("scope")[0]
            await held[names.index(first_scope.split(":")[1]) // auth_module.TOKEN_SCOPES_PER_FETCH].wait()
        return registry(request)

    async with DistributionClient(Endpoint(url=REGISTRY, username=USER, password=SecretStr(PASSWORD)),
                                  transport=httpx.MockTransport(handler)) as client:
        every_batch = await client.start_prefetch_tokens(names, "pull")
        assert not every_batch.done()
        held[0].set()  # the first batch's token comes back; the other two are still on their way
        first = await asyncio.wait_for(client.list_tags(names[0]), 5)
        assert first == ["v1"]
        assert not every_batch.done()
        last = asyncio.ensure_future(client.list_tags(names[-1]))  # in the third batch
        await asyncio.sleep(0.05)
        assert not last.done()  # waiting for its batch's token...
        held[1].set()
        held[2].set()
        assert await asyncio.wait_for(last, 5) == ["v1"]
        await asyncio.wait_for(every_batch, 5)
        # ...rather than fetching one of its own: three fetches in all, no 401 from the registry.
        assert len(registry.token_requests) == 3
        assert all(status == 200 for _, status in registry.registry_log)


async def test_a_failed_batch_leaves_its_repositories_to_their_own_fetches() -> None:
    registry = BearerRegistry()
    refuse_first = True

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal refuse_first
        if request.url.path == "/v2/":
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})
        if request.url.host == "auth.example" and refuse_first:
            refuse_first = False
            return reply(503, body={"details": "busy"})
        return registry(request)

    async with DistributionClient(Endpoint(url=REGISTRY, username=USER, password=SecretStr(PASSWORD)),
                                  transport=httpx.MockTransport(handler)) as client:
        await client.prefetch_tokens(["team/a", "team/b"], "pull")  # best effort: no error
        assert await client.list_tags("team/a") == ["v1"]
        assert await client.list_tags("team/b") == ["v1"]
        # The failed batch asked for both; then each fetched a token of its own once.
        assert len(registry.token_requests) == 2
        assert sorted(registry.granted.values(), key=sorted) == [{"repository:team/a:pull"},
                                                                  {"repository:team/b:pull"}]


async def test_the_realm_is_probed_once_for_callers_at_once_and_never_with_credentials() -> None:
    registry = BearerRegistry()
    probes: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            probes.append(request)
            await asyncio.sleep(0.01)  # both callers arrive while the probe is out
            return reply(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="reg"'})
        return registry(request)

    async with make_client(handler) as client:
        await asyncio.gather(client.learn_realm(),
                             client.prefetch_tokens(["team/a", "team/b"], "pull"))
        assert len(probes) == 1 and "Authorization" not in probes[0].headers
        assert client.auth.knows_realm
        assert len(registry.token_requests) == 1  # the prefetch did not go ahead of the realm
