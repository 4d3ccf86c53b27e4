"""In-memory fakes for the vendor adapter unit tests: a router for httpx.MockTransport that
records every request, and a distribution registry behind a bearer token realm (the auth mode
all four vendors use for their registries), shaped after the vendors' public documentation."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx

Handler = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, *, body: object = None, content: bytes = b"",
          headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still a stream, as from a real transport."""
    if body is not None:
        content = json.dumps(body).encode()
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


def basic_user(request: httpx.Request) -> tuple[str, str] | None:
    """The (user, password) of a Basic Authorization header, or None."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


class Router:
    """Answers by (method, host, path regex); keeps every request. Unrouted requests get 599,
    so a test sees at once that something unexpected was asked."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, str, re.Pattern[str], Handler]] = []
        self.requests: list[httpx.Request] = []
        # (method, path, Authorization) as sent: an auth flow that re-sends a request after a
        # 401 changes the headers of the very object kept in ``requests``.
        self.sent: list[tuple[str, str, str]] = []

    def add(self, method: str, host: str, path: str, handler: Handler) -> None:
        self.routes.append((method, host, re.compile(path), handler))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.sent.append((request.method, request.url.path, request.headers.get("Authorization", "")))
        path = request.url.raw_path.decode().split("?")[0]
        for method, host, pattern, handler in self.routes:
            if method == request.method and host == request.url.netloc.decode() and pattern.fullmatch(path):
                return handler(request)
        return reply(599, body={"message": f"unrouted {request.method} {request.url}"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.netloc.decode() == host]


@dataclass
class FakeTokenRegistry:
    """A registry at ``host`` whose realm at ``realm_host`` issues tokens for known users.

    ``tags`` maps repository names to their tags; a token is good for the scopes it was
    issued for and nothing else, as in the distribution token spec.
    """

    host: str
    realm_host: str
    users: dict[str, str]
    tags: dict[str, list[str]] = field(default_factory=dict)
    service: str = "registry.fake"
    realm_path: str = "/token"
    issued: dict[str, set[str]] = field(default_factory=dict)  # token -> scopes
    token_requests: list[tuple[str | None, tuple[str, ...]]] = field(default_factory=list)

    @property
    def realm(self) -> str:
        return f"https://{self.realm_host}{self.realm_path}"

    def install(self, router: Router) -> None:
        router.add("GET", self.realm_host, re.escape(self.realm_path), self._token)
        router.add("GET", self.host, r"/v2/", self._base)
        router.add("GET", self.host, r"/v2/(?P<repo>.+)/tags/list", self._tags)

    def _challenge(self, scope: str | None = None) -> httpx.Response:
        value = f'Bearer realm="{self.realm}",service="{self.service}"'
        if scope:
            value += f',scope="{scope}"'
        return reply(401, body={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                     headers={"WWW-Authenticate": value})

    def _token(self, request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        scopes = tuple(query.get("scope", []))
        creds = basic_user(request)
        self.token_requests.append((creds[0] if creds else None, scopes))
        if creds is None or self.users.get(creds[0]) != creds[1]:
            return reply(401, body={"details": "incorrect username or password"})
        token = secrets.token_hex(8)
        self.issued[token] = set(scopes)
        return reply(body={"token": token, "expires_in": 300})

    def _granted(self, request: httpx.Request, scope: str) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and scope in self.issued.get(header[7:], set())

    def _base(self, request: httpx.Request) -> httpx.Response:
        return self._challenge()

    def _tags(self, request: httpx.Request) -> httpx.Response:
        repo = re.fullmatch(r"/v2/(.+)/tags/list", request.url.path)
        assert repo is not None
        name = repo.group(1)
        scope = f"repository:{name}:pull"
        if not self._granted(request, scope):
            return self._challenge(scope)
        if name not in self.tags:
            return reply(404, body={"errors": [{"code": "NAME_UNKNOWN", "message": "unknown repository"}]})
        return reply(body={"name": name, "tags": self.tags[name]})
