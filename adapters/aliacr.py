"""Alibaba Cloud Container Registry: the Personal edition (``registry[-vpc].<region>.aliyuncs.com``)
and the Enterprise edition (``<instance>-registry[-vpc].<region>.cr.aliyuncs.com``).

The registry speaks the distribution spec (bearer flow); the rest goes through the CR API at
``cr.<region>.aliyuncs.com``, signed with ACS3-HMAC-SHA256 (Alibaba Cloud's V3 signature):

- credentials: ``access_key`` / ``access_secret`` are an AccessKey id and secret;
  ``GetAuthorizationToken`` turns them into a temporary registry user and password, fetched
  again shortly before it expires;
- Personal edition (API 2016-06-07, REST paths): listing ``GET /namespace`` then
  ``GET /repos/<namespace>`` paged by ``Page``/``PageSize``; ``PUT /namespace`` creates one;
- Enterprise edition (API 2018-12-01, RPC actions on one instance, ``cri-...``): its id is the
  ``instance_id`` option, or read as Harbor does from the registry's own token challenge
  (``service="registry.aliyuncs.com:<region>:<...>:cri-..."``); ``ListNamespace`` /
  ``ListRepository`` paged by ``PageNo``/``PageSize``; ``CreateNamespace`` with
  ``AutoCreateRepo`` so that the push creates the repository.

The region comes from the host (the ``region`` option overrides it and is needed elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr

from adapters.aws_sigv4 import canonical_request
from adapters.base import AdapterInfo
from adapters.bounded import NON_BLOB_DEADLINE_SECONDS, read_capped, within
from adapters.cloud_api import CloudAnswer, call_signed, parse_answer
from adapters.distribution.auth import RegistryCredentials, parse_challenge
from adapters.distribution.client import tls_verify
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
    TransportError,
)
from adapters.native import NativeAdapter
from adapters.vendor_http import api_client

ALGORITHM = "ACS3-HMAC-SHA256"
PERSONAL_VERSION = "2016-06-07"
ENTERPRISE_VERSION = "2018-12-01"
ACR_HOST = re.compile(r"(?:(?P<instance>[a-z0-9-]+)-)?registry(?:-vpc|-internal)?\.(?P<region>[a-z0-9-]+)"
                      r"\.(?P<ee>cr\.)?aliyuncs\.com")
INSTANCE_PREFIX = "cri-"
# A 401 to GET /v2/ carries a short error document; only its header matters.
MAX_CHALLENGE_BODY_BYTES = 64 * 1024
PAGE_SIZE = 100  # the largest page both editions take
MAX_PAGES = 10_000  # a page loop on a broken answer must end
# Used only when an answer omits the expiry; ACR's temporary passwords live an hour.
TOKEN_LIFETIME_SECONDS = 3600.0

ModelT = TypeVar("ModelT", bound=BaseModel)

ERROR_CODES: dict[str, type[RegistryError]] = {
    "InvalidAccessKeyId": AuthenticationError,
    "SignatureDoesNotMatch": AuthenticationError,
    "IncompleteSignature": AuthenticationError,
    "InvalidSecurityToken": AuthenticationError,
    "Forbidden": PermissionDeniedError,
    "NoPermission": PermissionDeniedError,
    "NAMESPACE_NOT_EXIST": NotFoundError,
    "Throttling": RateLimitedError,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
}


def sign_acs3(method: str, url: httpx.URL, headers: Sequence[tuple[str, str]], body: bytes, *,
              access_key: str, secret: SecretStr) -> str:
    """The ``Authorization`` value for one request, over ``headers`` (host, x-acs-*)."""
    canonical, signed = canonical_request(method, url.raw_path.decode().partition("?")[0],
                                          url.query.decode(), headers, body)
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(secret.get_secret_value().encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key},SignedHeaders={signed},Signature={signature}"


class Acs3Auth(httpx.Auth):
    requires_request_body = True

    def __init__(self, access_key: str, secret: SecretStr, clock: Callable[[], float]) -> None:
        self._ak = access_key
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return "Acs3Auth()"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["x-acs-date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock()))
        request.headers["x-acs-signature-nonce"] = secrets.token_hex(16)
        request.headers["x-acs-content-sha256"] = hashlib.sha256(request.content).hexdigest()
        signed = [(n, v) for n, v in request.headers.items()
                  if n.lower() in ("host", "content-type") or n.lower().startswith("x-acs-")]
        request.headers["Authorization"] = sign_acs3(request.method, request.url, signed, request.content,
                                                     access_key=self._ak, secret=self._secret)
        yield request


def _error_of(data: Any) -> tuple[str, str] | None:
    code = data.get("Code", data.get("code"))
    message = str(data.get("Message", data.get("message", "")))
    if data.get("IsSuccess") is False or data.get("isSuccess") is False:
        return str(code or "Failed"), message
    if isinstance(code, str) and code.lower() != "success":
        return code, message
    return None


_Answer = CloudAnswer


class _PersonalToken(_Answer):
    tempUserName: str
    authorizationToken: SecretStr
    expireDate: float | None = None  # milliseconds since the epoch


class _EnterpriseToken(_Answer):
    TempUsername: str
    AuthorizationToken: SecretStr
    ExpireTime: float | None = None  # milliseconds since the epoch


class _PersonalNamespace(_Answer):
    namespace: str


class _PersonalNamespaces(_Answer):
    namespaces: list[_PersonalNamespace] = []


class _PersonalRepo(_Answer):
    repoName: str
    repoNamespace: str


class _PersonalRepos(_Answer):
    repos: list[_PersonalRepo] = []
    total: int = 0


class _EnterpriseNamespace(_Answer):
    NamespaceName: str


class _EnterpriseNamespaces(_Answer):
    Namespaces: list[_EnterpriseNamespace] = []
    TotalCount: int = 0


class _EnterpriseRepo(_Answer):
    RepoName: str
    RepoNamespaceName: str


class _EnterpriseRepos(_Answer):
    Repositories: list[_EnterpriseRepo] = []
    TotalCount: int = 0


class AliAcrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="ali-acr",
        options=("api_url", "region", "instance_id"),
        description="Alibaba Cloud ACR, Personal and Enterprise editions (AccessKey; tokens and "
                    "namespaces through the CR API)",
        triggers=("manual", "scheduled"),
        # ACR repositories are <namespace>/<name>.
        min_path_components=2,
        max_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_transport: httpx.AsyncBaseTransport | None = None,
        api_url: str | None = None,
        region: str | None = None,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``api_transport`` (default: ``transport``) carries the CR API calls only."""
        if not endpoint.username or endpoint.password is None:
            raise ConfigError("ali-acr needs access_key = an AccessKey id and access_secret = its secret "
                              "(not the registry's docker login password)", field="credential")
        parsed = ACR_HOST.fullmatch(httpx.URL(endpoint.url).host)
        if parsed is None and region is None:
            raise ConfigError(f"{endpoint.host} is not an ACR host (registry.<region>.aliyuncs.com or "
                              "<instance>-registry.<region>.cr.aliyuncs.com); elsewhere give the region "
                              "option", field="url")
        self.region = region or (parsed["region"] if parsed else "")
        self.instance_id = instance_id
        self.enterprise = instance_id is not None or bool(parsed and parsed["ee"])
        self.api_url = (api_url or f"https://cr.{self.region}.aliyuncs.com").rstrip("/")
        super().__init__(endpoint, transport=transport)
        self._clock = clock
        self._api = api_client(transport=api_transport or transport,
                               auth=Acs3Auth(endpoint.username, endpoint.password, clock))
        # An anonymous GET /v2/ only, to read the instance id from the registry's challenge.
        self._anonymous = api_client(verify=tls_verify(endpoint), transport=transport)
        self.client.auth.use_credential_provider(self.registry_credentials)

    async def _instance(self) -> str:
        """The Enterprise instance id: the option, else the registry's bearer challenge names it."""
        if self.instance_id is not None:
            return self.instance_id
        url = f"{self.endpoint.url}/v2/"
        async with within(NON_BLOB_DEADLINE_SECONDS, what=f"GET {self.endpoint.host}/v2/"):
            try:
                response = await self._anonymous.send(self._anonymous.build_request("GET", url), stream=True)
                try:
                    await read_capped(response, MAX_CHALLENGE_BODY_BYTES, what=f"{self.endpoint.host}/v2/",
                                      truncate=True)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                raise TransportError(f"GET {self.endpoint.host}/v2/: {type(exc).__name__}") from None
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        service = challenge.params.get("service", "") if challenge is not None else ""
        found = [part for part in service.split(":") if part.startswith(INSTANCE_PREFIX)]
        if not found:
            raise ConfigError(f"{self.endpoint.host} did not name its ACR Enterprise instance: give its "
                              "id as the instance_id option (cri-...)", field="options.instance_id")
        self.instance_id = found[-1]
        return self.instance_id

    async def _personal(self, method: str, path: str, action: str, *,
                        params: dict[str, str | int] | None = None, body: object = None) -> Any:
        raw = await call_signed(self._api, method, self.api_url + path, what=f"ACR API {action}",
                                error_of=_error_of, codes=ERROR_CODES, params=params, body=body,
                                headers={"x-acs-action": action, "x-acs-version": PERSONAL_VERSION})
        data = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(data, dict):
            raise ContentError(f"ACR API {action}: the answer has no data")
        return data

    async def _enterprise(self, action: str, params: dict[str, str | int]) -> Any:
        instance = await self._instance()
        return await call_signed(self._api, "POST", self.api_url + "/", what=f"ACR API {action}",
                                 error_of=_error_of, codes=ERROR_CODES,
                                 params={"InstanceId": instance, **params},
                                 headers={"x-acs-action": action, "x-acs-version": ENTERPRISE_VERSION})

    async def registry_credentials(self) -> RegistryCredentials:
        if not self.enterprise:
            personal = _parse(_PersonalToken, await self._personal("GET", "/tokens", "GetAuthorizationToken"),
                              "GetAuthorizationToken")
            user, password = personal.tempUserName, personal.authorizationToken
            expires_ms = personal.expireDate
        else:
            ee = _parse(_EnterpriseToken, await self._enterprise("GetAuthorizationToken", {}),
                        "GetAuthorizationToken")
            user, password, expires_ms = ee.TempUsername, ee.AuthorizationToken, ee.ExpireTime
        expires = expires_ms / 1000 if expires_ms else self._clock() + TOKEN_LIFETIME_SECONDS
        return RegistryCredentials(username=user, password=password, expires_at=expires)

    async def namespaces(self) -> list[str]:
        if not self.enterprise:
            data = await self._personal("GET", "/namespace", "GetNamespaceList")
            return [ns.namespace for ns in _parse(_PersonalNamespaces, data, "GetNamespaceList").namespaces]
        names: list[str] = []
        for page in range(1, MAX_PAGES):
            answer = _parse(_EnterpriseNamespaces,
                            await self._enterprise("ListNamespace", {"PageNo": page, "PageSize": PAGE_SIZE}),
                            "ListNamespace")
            names += [ns.NamespaceName for ns in answer.Namespaces]
            if not answer.Namespaces or len(names) >= answer.TotalCount:
                return names
        raise ContentError(f"ACR ListNamespace did not end after {MAX_PAGES} pages")

    async def walk_repositories(self) -> AsyncIterator[str]:
        for namespace in await self.namespaces():
            for name in await self._repositories(namespace):
                yield name

    async def _repositories(self, namespace: str) -> list[str]:
        names: list[str] = []
        for page in range(1, MAX_PAGES):
            if not self.enterprise:
                data = await self._personal("GET", f"/repos/{quote(namespace, safe='')}",
                                            "GetRepoListByNamespace",
                                            params={"Page": page, "PageSize": PAGE_SIZE})
                personal = _parse(_PersonalRepos, data, "GetRepoListByNamespace")
                found = [f"{r.repoNamespace}/{r.repoName}" for r in personal.repos]
                total = personal.total
            else:
                ee = _parse(_EnterpriseRepos, await self._enterprise("ListRepository", {
                    "RepoNamespaceName": namespace, "RepoStatus": "NORMAL", "PageNo": page,
                    "PageSize": PAGE_SIZE}), "ListRepository")
                found = [f"{r.RepoNamespaceName}/{r.RepoName}" for r in ee.Repositories]
                total = ee.TotalCount
            names += found
            if not found or len(names) >= total:
                return names
        raise ContentError(f"ACR repositories of {namespace} did not end after {MAX_PAGES} pages")

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Create each missing namespace; the push then creates the repository (Enterprise:
        the namespace is created with AutoCreateRepo; Personal: ACR's namespace default)."""
        wanted = sorted(set(repositories))
        bad = [r for r in wanted if r.count("/") != 1]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: ACR repositories are <namespace>/<name>, exactly two "
                              "path components", field="dest_namespace")
        missing = sorted({r.split("/", 1)[0] for r in wanted} - set(await self.namespaces()))
        for namespace in missing:
            if not self.enterprise:
                await self._personal("PUT", "/namespace", "CreateNamespace",
                                     body={"Namespace": {"Namespace": namespace}})
            else:
                await self._enterprise("CreateNamespace", {
                    "NamespaceName": namespace, "AutoCreateRepo": "true", "DefaultRepoType": "PRIVATE"})

    async def aclose(self) -> None:
        await self._anonymous.aclose()
        await self._api.aclose()
        await super().aclose()


def _parse(model: type[ModelT], raw: Any, action: str) -> ModelT:
    return parse_answer(model, raw, f"ACR API {action}")
