"""Volcengine Container Registry (``<registry>-<region>.cr.volces.com``).

The registry speaks the distribution spec (bearer flow); the rest goes through the CR OpenAPI
(``cr.<region>.volcengineapi.com``, version 2022-05-12, HMAC-SHA256 signed, SigV4's shape with
Volcengine's names):

- credentials: ``access_key`` / ``access_secret`` are an AccessKey id and secret;
  ``GetAuthorizationToken`` turns them into a temporary registry user and token, fetched
  again shortly before it expires;
- the registry name and region come from the host (``registry_name`` / ``region`` options
  override them, and are needed on any other host);
- listing: ``ListNamespaces``, then ``ListRepositories`` per namespace, paged by
  ``PageNumber``/``PageSize``;
- ``prepare_for_push``: ``CreateNamespace`` and ``CreateRepository`` (private) for what is missing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from adapters.aws_sigv4 import amz_date, canonical_request
from adapters.base import AdapterInfo
from adapters.cloud_api import CloudAnswer, call_signed, parse_answer
from adapters.distribution.auth import RegistryCredentials
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    ConfigError,
    ContentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RegistryError,
    ServerError,
)
from adapters.native import NativeAdapter
from adapters.vendor_http import api_client

API_VERSION = "2022-05-12"
SERVICE = "cr"
ALGORITHM = "HMAC-SHA256"
VOLCENGINE_HOST = re.compile(r"(?P<name>[a-z0-9][a-z0-9-]*?)-(?P<region>(?:cn|ap)-[a-z]+(?:-\d+)?)"
                             r"\.cr\.(?:i?volces)\.com")
PAGE_SIZE = 100  # the OpenAPI's largest page
MAX_PAGES = 10_000  # a page loop on a broken answer must end
# Used only when an answer omits ExpireTime; Volcengine's temporary tokens live hours.
TOKEN_LIFETIME_SECONDS = 3600.0

ModelT = TypeVar("ModelT", bound=BaseModel)

ERROR_CODES: dict[str, type[RegistryError]] = {
    "InvalidAccessKey": AuthenticationError,
    "SignatureDoesNotMatch": AuthenticationError,
    "InvalidAuthorization": AuthenticationError,
    "MissingAuthenticationToken": AuthenticationError,
    "AccessDenied": PermissionDeniedError,
    "NotFound": NotFoundError,
    "FlowLimitExceeded": RateLimitedError,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
}


def sign_volcengine(method: str, url: httpx.URL, headers: Sequence[tuple[str, str]], body: bytes, *,
                    access_key: str, secret_key: SecretStr, region: str, x_date: str) -> str:
    """The ``Authorization`` value for one request, over ``headers`` (which carry X-Date)."""
    canonical, signed = canonical_request(method, url.raw_path.decode().partition("?")[0],
                                          url.query.decode(), headers, body)
    scope = f"{x_date[:8]}/{region}/{SERVICE}/request"
    to_sign = "\n".join([ALGORITHM, x_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = secret_key.get_secret_value().encode()
    for part in (x_date[:8], region, SERVICE, "request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"


class VolcengineAuth(httpx.Auth):
    """Signs host, content-type, X-Date and X-Content-Sha256 of each OpenAPI request."""

    requires_request_body = True

    def __init__(self, access_key: str, secret_key: SecretStr, region: str,
                 clock: Callable[[], float]) -> None:
        self._ak = access_key
        self._sk = secret_key
        self._region = region
        self._clock = clock

    def __repr__(self) -> str:
        return f"VolcengineAuth(region={self._region!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        x_date = amz_date(self._clock())
        request.headers["X-Date"] = x_date
        request.headers["X-Content-Sha256"] = hashlib.sha256(request.content).hexdigest()
        signed = [(n, v) for n, v in request.headers.items()
                  if n.lower() in ("host", "content-type", "x-date", "x-content-sha256")]
        request.headers["Authorization"] = sign_volcengine(
            request.method, request.url, signed, request.content, access_key=self._ak, secret_key=self._sk,
            region=self._region, x_date=x_date)
        yield request


def _error_of(data: Any) -> tuple[str, str] | None:
    meta = data.get("ResponseMetadata")
    error = meta.get("Error") if isinstance(meta, dict) else None
    if isinstance(error, dict) and isinstance(error.get("Code"), str):
        return error["Code"], str(error.get("Message", ""))
    return None


_Answer = CloudAnswer


class _Token(_Answer):
    Username: str
    Token: SecretStr
    ExpireTime: datetime | None = None


class _Item(_Answer):
    Name: str
    Namespace: str = ""


class _Page(_Answer):
    Items: list[_Item] = []
    TotalCount: int = 0


class VolcengineAdapter(NativeAdapter):
    info = AdapterInfo(
        type="volcengine-cr",
        options=("api_url", "region", "registry_name"),
        description="Volcengine CR (AccessKey; tokens and namespaces through the CR OpenAPI)",
        triggers=("manual", "scheduled"),
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_transport: httpx.AsyncBaseTransport | None = None,
        api_url: str | None = None,
        region: str | None = None,
        registry_name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``api_transport`` (default: ``transport``) carries the OpenAPI calls only."""
        if not endpoint.username or endpoint.password is None:
            raise ConfigError("volcengine-cr needs access_key = an AccessKey id and access_secret = "
                              "its secret", field="credential")
        parsed = VOLCENGINE_HOST.fullmatch(httpx.URL(endpoint.url).host)
        if parsed is None and (region is None or registry_name is None):
            raise ConfigError(f"{endpoint.host} is not a Volcengine CR host "
                              "(<registry>-<region>.cr.volces.com); elsewhere give the region and "
                              "registry_name options", field="url")
        self.region = region or (parsed["region"] if parsed else "")
        self.registry_name = registry_name or (parsed["name"] if parsed else "")
        self.api_url = (api_url or f"https://cr.{self.region}.volcengineapi.com").rstrip("/") + "/"
        super().__init__(endpoint, transport=transport)
        self._clock = clock
        self._api = api_client(transport=api_transport or transport,
                               auth=VolcengineAuth(endpoint.username, endpoint.password, self.region, clock))
        self.client.auth.use_credential_provider(self.registry_credentials)

    async def _call(self, action: str, payload: dict[str, Any]) -> Any:
        raw = await call_signed(self._api, "POST", self.api_url, what=f"Volcengine CR API {action}",
                                error_of=_error_of, codes=ERROR_CODES, body=payload,
                                params={"Action": action, "Version": API_VERSION})
        result = raw.get("Result") if isinstance(raw, dict) else None
        if not isinstance(result, dict):
            raise ContentError(f"Volcengine CR API {action}: the answer has no Result")
        return result

    async def registry_credentials(self) -> RegistryCredentials:
        raw = await self._call("GetAuthorizationToken", {"Registry": self.registry_name})
        token = _parse(_Token, raw, "GetAuthorizationToken")
        expires = token.ExpireTime.timestamp() if token.ExpireTime else self._clock() + TOKEN_LIFETIME_SECONDS
        return RegistryCredentials(username=token.Username, password=token.Token, expires_at=expires)

    async def _items(self, action: str, query: dict[str, Any]) -> list[_Item]:
        items: list[_Item] = []
        for page in range(1, MAX_PAGES):
            answer = _parse(_Page, await self._call(action, {
                "Registry": self.registry_name, **query, "PageNumber": page, "PageSize": PAGE_SIZE}), action)
            items += answer.Items
            if not answer.Items or len(items) >= answer.TotalCount:
                return items
        raise ContentError(f"Volcengine CR {action} did not end after {MAX_PAGES} pages")

    async def namespaces(self, names: Sequence[str] | None = None) -> list[str]:
        query = {"Filter": {"Names": list(names)}} if names else {}
        return [item.Name for item in await self._items("ListNamespaces", query)]

    async def walk_repositories(self) -> AsyncIterator[str]:
        for namespace in await self.namespaces():
            for item in await self._items("ListRepositories", {"Filter": {"Namespaces": [namespace]}}):
                yield f"{item.Namespace or namespace}/{item.Name}"

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Create missing namespaces, then missing repositories (private); asking first means a
        re-run needs no create permission."""
        wanted = sorted(set(repositories))
        short = [r for r in wanted if "/" not in r]
        if short:
            raise ConfigError(f"{', '.join(short)}: Volcengine CR repositories are <namespace>/<name>",
                              field="dest_namespace")
        spaces = sorted({r.split("/", 1)[0] for r in wanted})
        for namespace in sorted(set(spaces) - set(await self.namespaces(spaces))):
            await self._call("CreateNamespace", {"Registry": self.registry_name, "Name": namespace})
        for repository in wanted:
            namespace, name = repository.split("/", 1)
            found = await self._items("ListRepositories", {"Filter": {"Namespaces": [namespace],
                                                                      "Names": [name]}})
            if any(item.Name == name for item in found):
                continue
            await self._call("CreateRepository", {"Registry": self.registry_name, "Namespace": namespace,
                                                  "Name": name, "AccessLevel": "Private"})

    async def aclose(self) -> None:
        await self._api.aclose()
        await super().aclose()


def _parse(model: type[ModelT], raw: Any, action: str) -> ModelT:
    return parse_answer(model, raw, f"Volcengine CR API {action}")
