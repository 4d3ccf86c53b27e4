"""Tencent Cloud Container Registry, Enterprise edition (TCR, ``<instance>.tencentcloudcr.com``).

The registry speaks the distribution spec (bearer flow); listing, namespace and repository
creation and the registry password go through the TCR API (``tcr.tencentcloudapi.com``,
version 2019-09-24, TC3-HMAC-SHA256 signed):

- credentials: ``access_key`` / ``access_secret`` are a SecretId (``AKID...``) and SecretKey;
  ``CreateInstanceToken`` turns them into a temporary registry user and token, fetched again
  shortly before it expires. A docker-login user and password are refused by name.
- the instance: ``DescribeInstances`` (all regions, filtered by the instance name from the
  host) gives its id and region, unless the ``registry_id`` and ``region`` options say them.
- listing: ``DescribeNamespaces``, then ``DescribeRepositories`` per namespace, paged by
  ``Offset``/``Limit``.
- ``prepare_for_push``: ``CreateNamespace`` (private) and ``CreateRepository`` for what is missing.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from adapters.aws_sigv4 import canonical_request
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

API_URL = "https://tcr.tencentcloudapi.com"
API_VERSION = "2019-09-24"
SERVICE = "tcr"
ALGORITHM = "TC3-HMAC-SHA256"
TCR_HOST_SUFFIX = ".tencentcloudcr.com"
SECRET_ID_PREFIX = "AKID"
# DescribeInstances with AllRegion answers from any region; this one is always served.
LOOKUP_REGION = "ap-guangzhou"
# TCR's largest page for namespaces and repositories; its Offset counts pages, from 1.
PAGE_SIZE = 100
MAX_PAGES = 10_000  # an offset loop on a broken answer must end
# Used only when CreateInstanceToken omits ExpTime; TCR's temporary tokens live an hour.
TOKEN_LIFETIME_SECONDS = 3600.0

ModelT = TypeVar("ModelT", bound=BaseModel)

ERROR_CODES: dict[str, type[RegistryError]] = {
    "AuthFailure": AuthenticationError,
    "UnauthorizedOperation": PermissionDeniedError,
    "ResourceNotFound": NotFoundError,
    "RequestLimitExceeded": RateLimitedError,
    "InternalError": ServerError,
}


def sign_tc3(method: str, url: httpx.URL, headers: Sequence[tuple[str, str]], body: bytes, *,
             secret_id: str, secret_key: SecretStr, timestamp: int) -> str:
    """The ``Authorization`` value for one request: TC3 over ``headers`` (content-type, host)."""
    canonical, signed = canonical_request(method, url.raw_path.decode().partition("?")[0],
                                          url.query.decode(), [(n, v.lower()) for n, v in headers], body)
    date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    scope = f"{date}/{SERVICE}/tc3_request"
    to_sign = "\n".join([ALGORITHM, str(timestamp), scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("TC3" + secret_key.get_secret_value()).encode()
    for part in (date, SERVICE, "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={signed}, Signature={signature}"


class Tc3Auth(httpx.Auth):
    """Signs each TCR API request; the secret key only enters the HMAC chain."""

    requires_request_body = True

    def __init__(self, secret_id: str, secret_key: SecretStr, clock: Callable[[], float]) -> None:
        self._id = secret_id
        self._key = secret_key
        self._clock = clock

    def __repr__(self) -> str:
        return "Tc3Auth()"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        now = int(self._clock())
        request.headers["X-TC-Timestamp"] = str(now)
        signed = [(n, v) for n, v in request.headers.items() if n.lower() in ("content-type", "host")]
        request.headers["Authorization"] = sign_tc3(request.method, request.url, signed, request.content,
                                                    secret_id=self._id, secret_key=self._key, timestamp=now)
        yield request


def _error_of(data: Any) -> tuple[str, str] | None:
    error = (data.get("Response") or {}).get("Error") if isinstance(data.get("Response"), dict) else None
    if isinstance(error, dict) and isinstance(error.get("Code"), str):
        return error["Code"], str(error.get("Message", ""))
    return None


_Answer = CloudAnswer


class _Token(_Answer):
    Username: str
    Token: SecretStr
    ExpTime: float | None = None  # milliseconds since the epoch


class _Instance(_Answer):
    RegistryId: str
    RegionName: str


class _Instances(_Answer):
    Registries: list[_Instance] = []


class _Namespace(_Answer):
    Name: str


class _Namespaces(_Answer):
    NamespaceList: list[_Namespace] = []
    TotalCount: int = 0


class _Repository(_Answer):
    Name: str  # "<namespace>/<name>"


class _Repositories(_Answer):
    RepositoryList: list[_Repository] = []
    TotalCount: int = 0


class TcrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="tencent-tcr",
        options=("api_url", "region", "registry_id"),
        description="Tencent Cloud TCR Enterprise (SecretId/SecretKey; tokens and namespaces through "
                    "the TCR API)",
        # TCR's webhooks have their own payload, not one of the kinds regflow receives.
        triggers=("manual", "scheduled"),
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_transport: httpx.AsyncBaseTransport | None = None,
        api_url: str = API_URL,
        region: str | None = None,
        registry_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``api_transport`` (default: ``transport``) carries the TCR API calls only."""
        if not endpoint.username or endpoint.password is None:
            raise ConfigError("tencent-tcr needs access_key = a SecretId (AKID...) and access_secret = "
                              "its SecretKey", field="credential")
        if not endpoint.username.startswith(SECRET_ID_PREFIX):
            raise ConfigError("tencent-tcr takes a SecretId (AKID...) and SecretKey, not a docker login "
                              "user and password", field="credential")
        host = httpx.URL(endpoint.url).host
        if not host.endswith(TCR_HOST_SUFFIX) and (region is None or registry_id is None):
            raise ConfigError(f"{endpoint.host} is not a TCR host (<instance>{TCR_HOST_SUFFIX}); "
                              "elsewhere give the region and registry_id options", field="url")
        super().__init__(endpoint, transport=transport)
        self.instance_name = host.removesuffix(TCR_HOST_SUFFIX)
        self.region = region
        self.registry_id = registry_id
        self.api_url = api_url
        self._clock = clock
        self._api = api_client(transport=api_transport or transport,
                               auth=Tc3Auth(endpoint.username, endpoint.password, clock))
        self.client.auth.use_credential_provider(self.registry_credentials)

    async def _call(self, action: str, payload: dict[str, Any], *, region: str | None = None) -> Any:
        """One action; the instance must be located first (``_locate``) for all but the lookup."""
        raw = await call_signed(
            self._api, "POST", self.api_url, what=f"TCR API {action}", error_of=_error_of, codes=ERROR_CODES,
            body=payload,
            headers={"X-TC-Action": action, "X-TC-Version": API_VERSION,
                     "X-TC-Region": region or self.region or LOOKUP_REGION},
        )
        response = raw.get("Response") if isinstance(raw, dict) else None
        if not isinstance(response, dict):
            raise ContentError(f"TCR API {action}: the answer has no Response")
        return response

    async def _locate(self) -> None:
        """The instance's id and region, from its name, once."""
        if self.registry_id is not None and self.region is not None:
            return
        raw = await self._call("DescribeInstances", {
            "AllRegion": True, "Filters": [{"Name": "RegistryName", "Values": [self.instance_name]}]},
            region=self.region or LOOKUP_REGION)
        found = _parse(_Instances, raw, "DescribeInstances").Registries
        if not found:
            raise ConfigError(f"TCR has no instance named {self.instance_name!r} for this SecretId",
                              field="url")
        self.registry_id = self.registry_id or found[0].RegistryId
        self.region = self.region or found[0].RegionName

    async def registry_credentials(self) -> RegistryCredentials:
        """A temporary registry user and token from ``CreateInstanceToken``."""
        await self._locate()
        raw = await self._call("CreateInstanceToken", {"RegistryId": self.registry_id, "TokenType": "temp"})
        token = _parse(_Token, raw, "CreateInstanceToken")
        expires = token.ExpTime / 1000 if token.ExpTime else self._clock() + TOKEN_LIFETIME_SECONDS
        return RegistryCredentials(username=token.Username, password=token.Token, expires_at=expires)

    async def namespaces(self) -> list[str]:
        await self._locate()
        names: list[str] = []
        for page in range(1, MAX_PAGES):
            raw = await self._call("DescribeNamespaces", {"RegistryId": self.registry_id, "Limit": PAGE_SIZE,
                                                          "Offset": page})
            answer = _parse(_Namespaces, raw, "DescribeNamespaces")
            names += [ns.Name for ns in answer.NamespaceList]
            if not answer.NamespaceList or len(names) >= answer.TotalCount:
                return names
        raise ContentError(f"TCR DescribeNamespaces did not end after {MAX_PAGES} pages")

    async def walk_repositories(self) -> AsyncIterator[str]:
        for namespace in await self.namespaces():
            async for name in self._repositories(namespace):
                yield name

    async def _repositories(self, namespace: str, name: str | None = None) -> AsyncIterator[str]:
        await self._locate()
        seen = 0
        for page in range(1, MAX_PAGES):
            query: dict[str, Any] = {"RegistryId": self.registry_id, "NamespaceName": namespace,
                                     "Limit": PAGE_SIZE, "Offset": page}
            if name is not None:
                query["RepositoryName"] = name
            answer = _parse(_Repositories, await self._call("DescribeRepositories", query),
                            "DescribeRepositories")
            for repository in answer.RepositoryList:
                yield repository.Name
            seen += len(answer.RepositoryList)
            if not answer.RepositoryList or seen >= answer.TotalCount:
                return
        raise ContentError(f"TCR DescribeRepositories of {namespace} did not end after {MAX_PAGES} pages")

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Create the private namespaces and the repositories TCR does not have yet; asking
        first means a re-run needs no create permission."""
        wanted = sorted(set(repositories))
        short = [r for r in wanted if "/" not in r]
        if short:
            raise ConfigError(f"{', '.join(short)}: TCR repositories are <namespace>/<name>",
                              field="dest_namespace")
        existing = set(await self.namespaces())
        for namespace in sorted({r.split("/", 1)[0] for r in wanted} - existing):
            await self._call("CreateNamespace", {"RegistryId": self.registry_id, "NamespaceName": namespace,
                                                 "IsPublic": False})
        for repository in wanted:
            namespace, name = repository.split("/", 1)
            if repository in [r async for r in self._repositories(namespace, name)]:
                continue
            await self._call("CreateRepository", {"RegistryId": self.registry_id, "NamespaceName": namespace,
                                                  "RepositoryName": name})

    async def aclose(self) -> None:
        await self._api.aclose()
        await super().aclose()


def _parse(model: type[ModelT], raw: Any, action: str) -> ModelT:
    return parse_answer(model, raw, f"TCR API {action}")
