"""Test-only ``httpx.Auth`` that answers a registry's 401 challenge (Bearer token or Basic)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Generator

import httpx

_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
_REPO_PATH_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:blobs|manifests|tags|referrers)/")


class TokenFetchError(RuntimeError):
    """The token endpoint named in a Bearer challenge refused us or answered nonsense."""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="r",service="s",scope="x"`` -> ("bearer", {"realm": "r", ...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM_RE.findall(rest))


class ChallengeTokenAuth(httpx.Auth):
    """Sends the request; on ``401 WWW-Authenticate: Bearer realm=..,service=..,scope=..`` fetches a
    token from the realm (Basic credentials if given, else anonymous), caches it per repository
    (the scope's resource) until it expires, and retries once. A Basic challenge is answered with
    the credentials. Sync and async clients both work (the token GET goes through the same client).

    ``token_fetches`` counts tokens fetched, ``scopes_fetched`` lists their scope strings.
    """

    requires_response_body = True

    def __init__(self, username: str | None = None, password: str | None = None, *, margin: float = 2.0):
        self._basic: str | None = None
        if username is not None:
            self._basic = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        self._margin = margin
        self._tokens: dict[str, tuple[str, float]] = {}  # resource key -> (token, monotonic expiry)
        self.token_fetches = 0
        self.scopes_fetched: list[str] = []

    @staticmethod
    def _resource(request: httpx.Request) -> str:
        m = _REPO_PATH_RE.match(request.url.path)
        return f"repository:{m['name']}" if m else request.url.path

    def clear(self) -> None:
        self._tokens.clear()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self._resource(request)
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            request.headers["Authorization"] = f"Bearer {cached[0]}"
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self._basic is not None:
                request.headers["Authorization"] = self._basic
                yield request
            return
        if scheme != "bearer" or "realm" not in params:
            return
        scope = params.get("scope", "")
        query = httpx.QueryParams([("scope", s) for s in scope.split(" ") if s])
        if params.get("service"):
            query = query.add("service", params["service"])
        token_request = httpx.Request("GET", params["realm"], params=query)
        if self._basic is not None:
            token_request.headers["Authorization"] = self._basic
        token_response = yield token_request
        if token_response.status_code != 200:
            raise TokenFetchError(f"token endpoint {params['realm']} answered {token_response.status_code}")
        try:
            body = token_response.json()
            token = str(body.get("token") or body["access_token"])
        except (ValueError, KeyError, AttributeError) as exc:
            raise TokenFetchError(f"token endpoint {params['realm']} sent no token") from exc
        expires_in = float(body.get("expires_in") or 60)
        self.token_fetches += 1
        self.scopes_fetched.append(scope)
        self._tokens[key] = (token, time.monotonic() + expires_in - self._margin)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
