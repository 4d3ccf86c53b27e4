"""In-memory control-plane APIs of three cloud registries, for httpx.MockTransport, shaped after
their public API references:

* ``FakeTcrApi``: Tencent TCR 2019-09-24, POST JSON, action in ``X-TC-Action``, TC3-HMAC-SHA256,
  every answer HTTP 200 as ``{"Response": {...}}`` (errors as ``Response.Error``), pages by
  ``Offset`` (a page number from 1) and ``Limit``;
* ``FakeVolcengineApi``: Volcengine CR 2022-05-12, ``POST /?Action=&Version=`` with a JSON body,
  HMAC-SHA256 (SigV4's shape), answers ``{"ResponseMetadata": ..., "Result": ...}``, errors as
  ``ResponseMetadata.Error`` with a 4xx status, pages by ``PageNumber``/``PageSize``;
* ``FakeAliAcrApi``: Alibaba Cloud CR, ACS3-HMAC-SHA256; the Personal edition's REST paths
  (2016-06-07, ``{"data": ...}``) and the Enterprise edition's RPC actions (2018-12-01,
  parameters in the query, ``InstanceId``), errors as ``{"Code", "Message"}`` with a 4xx.

Each checks every request's signature by recomputing it with the secret it knows, records the
actions, keeps namespaces and repositories, hands out one temporary registry login, and answers
with small pages so that paging is exercised.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
from pydantic import SecretStr

from adapters.aliacr import sign_acs3
from adapters.tcr import sign_tc3
from adapters.volcengine import sign_volcengine


@dataclass
class _CloudState:
    access_key: str
    secret_key: str
    # namespace -> repository names (without the namespace)
    namespaces: dict[str, list[str]] = field(default_factory=dict)
    registry_user: str = "temp-user"
    registry_password: str = "temp-password"
    token_lifetime: float = 3600.0
    page_size: int = 2
    # action -> error code: answer that action with this error
    failures: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def actions(self) -> list[str]:
        return [action for action, _ in self.calls]

    def page(self, items: list[Any], number: int, size: int) -> list[Any]:
        size = min(size, self.page_size)
        return items[(number - 1) * size:number * size]

    def repositories(self) -> list[str]:
        return sorted(f"{ns}/{name}" for ns, names in self.namespaces.items() for name in names)


def _signed_headers(request: httpx.Request, names: str) -> list[tuple[str, str]]:
    return [(name, request.headers.get(name, "")) for name in names.split(";")]


# -- Tencent TCR ----------------------------------------------------------------------------------

_TC3 = re.compile(r"TC3-HMAC-SHA256 Credential=(?P<id>[^/]+)/(?P<date>[\d-]+)/tcr/tc3_request, "
                  r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>[0-9a-f]{64})")


@dataclass
class FakeTcrApi(_CloudState):
    instance_name: str = "myinstance"
    registry_id: str = "tcr-abc123"
    region: str = "ap-shanghai"
    regions_seen: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        match = _TC3.fullmatch(request.headers.get("Authorization", ""))
        problem = None
        if match is None:
            problem = "no TC3 Authorization"
        elif match["id"] != self.access_key:
            problem = "unknown SecretId"
        elif {"content-type", "host"} - set(match["signed"].split(";")):
            problem = "content-type and host must be signed"
        else:
            expected = sign_tc3(request.method, request.url, _signed_headers(request, match["signed"]),
                                request.content, secret_id=self.access_key,
                                secret_key=SecretStr(self.secret_key),
                                timestamp=int(request.headers.get("X-TC-Timestamp", "0")))
            if expected != request.headers["Authorization"]:
                problem = "signature mismatch"
        if problem is not None:
            self.refused.append(problem)
            code = "AuthFailure.SecretIdNotFound" if problem == "unknown SecretId" \
                else "AuthFailure.SignatureFailure"
            return self._error(code, "The provided credentials could not be validated.")
        action = request.headers.get("X-TC-Action", "")
        if request.headers.get("X-TC-Version") != "2019-09-24":
            return self._error("InvalidParameter", "wrong version")
        payload = json.loads(request.content or b"{}")
        self.calls.append((action, payload))
        self.regions_seen.append(request.headers.get("X-TC-Region", ""))
        if action in self.failures:
            return self._error(self.failures[action], f"{action} failed on purpose")
        if action != "DescribeInstances" and payload.get("RegistryId") != self.registry_id:
            return self._error("ResourceNotFound", "no such instance")
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            return self._error("InvalidAction", action)
        return self._ok(handler(payload))

    def _ok(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json={"Response": {**body, "RequestId": "req-1"}})

    def _error(self, code: str, message: str) -> httpx.Response:
        return httpx.Response(200, json={"Response": {"Error": {"Code": code, "Message": message},
                                                      "RequestId": "req-1"}})

    def _DescribeInstances(self, payload: dict[str, Any]) -> dict[str, Any]:
        names = payload["Filters"][0]["Values"]
        found = [{"RegistryId": self.registry_id, "RegionName": self.region,
                  "RegistryName": self.instance_name,
                  "PublicDomain": f"{self.instance_name}.tencentcloudcr.com"}] \
            if self.instance_name in names else []
        return {"Registries": found, "TotalCount": len(found)}

    def _CreateInstanceToken(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"Username": self.registry_user, "Token": self.registry_password,
                "ExpTime": int((time.time() + self.token_lifetime) * 1000)}

    def _DescribeNamespaces(self, payload: dict[str, Any]) -> dict[str, Any]:
        names = sorted(self.namespaces)
        if payload.get("NamespaceName"):
            names = [n for n in names if n == payload["NamespaceName"]]
        page = self.page(names, int(payload.get("Offset", 1)), int(payload.get("Limit", 20)))
        return {"NamespaceList": [{"Name": n, "NamespaceId": i} for i, n in enumerate(page)],
                "TotalCount": len(names)}

    def _DescribeRepositories(self, payload: dict[str, Any]) -> dict[str, Any]:
        namespace = payload["NamespaceName"]
        names = [f"{namespace}/{n}" for n in sorted(self.namespaces.get(namespace, []))
                 if payload.get("RepositoryName") in (None, n)]
        page = self.page(names, int(payload.get("Offset", 1)), int(payload.get("Limit", 20)))
        return {"RepositoryList": [{"Name": n, "Namespace": namespace} for n in page],
                "TotalCount": len(names)}

    def _CreateNamespace(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert payload["IsPublic"] is False
        self.namespaces.setdefault(payload["NamespaceName"], [])
        return {}

    def _CreateRepository(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.namespaces[payload["NamespaceName"]].append(payload["RepositoryName"])
        return {}


# -- Volcengine CR --------------------------------------------------------------------------------

_VOLC = re.compile(r"HMAC-SHA256 Credential=(?P<ak>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/cr/request, "
                   r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>[0-9a-f]{64})")


@dataclass
class FakeVolcengineApi(_CloudState):
    registry_name: str = "myreg"
    region: str = "cn-beijing"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        match = _VOLC.fullmatch(request.headers.get("Authorization", ""))
        problem = None
        if match is None:
            problem = "no Authorization"
        elif match["ak"] != self.access_key:
            problem = "unknown key"
        elif match["region"] != self.region or {"host", "x-date"} - set(match["signed"].split(";")):
            problem = "wrong scope or unsigned headers"
        else:
            expected = sign_volcengine(request.method, request.url, _signed_headers(request, match["signed"]),
                                       request.content, access_key=self.access_key,
                                       secret_key=SecretStr(self.secret_key), region=self.region,
                                       x_date=request.headers.get("X-Date", ""))
            if expected != request.headers["Authorization"]:
                problem = "signature mismatch"
        if problem is not None:
            self.refused.append(problem)
            code = "InvalidAccessKey" if problem == "unknown key" else "SignatureDoesNotMatch"
            return self._error(401, code, "The request signature we calculated does not match")
        query = dict(parse_qsl(request.url.query.decode()))
        action = query.get("Action", "")
        if query.get("Version") != "2022-05-12" or request.method != "POST":
            return self._error(400, "InvalidVersion", "wrong version")
        payload = json.loads(request.content or b"{}")
        self.calls.append((action, payload))
        if action in self.failures:
            return self._error(400, self.failures[action], f"{action} failed on purpose")
        if payload.get("Registry") != self.registry_name:
            return self._error(404, "NotFound.Registry", "no such registry")
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            return self._error(400, "InvalidAction", action)
        return httpx.Response(200, json={"ResponseMetadata": {"RequestId": "r1", "Action": action},
                                         "Result": handler(payload)})

    def _error(self, status: int, code: str, message: str) -> httpx.Response:
        return httpx.Response(status, json={"ResponseMetadata": {
            "RequestId": "r1", "Error": {"CodeN": 100, "Code": code, "Message": message}}})

    def _paged(self, items: list[dict[str, Any]], payload: dict[str, Any]) -> dict[str, Any]:
        number, size = int(payload.get("PageNumber", 1)), int(payload.get("PageSize", 10))
        return {"Items": self.page(items, number, size), "TotalCount": len(items), "PageNumber": number,
                "PageSize": size}

    def _GetAuthorizationToken(self, payload: dict[str, Any]) -> dict[str, Any]:
        expires = datetime.fromtimestamp(time.time() + self.token_lifetime, UTC)
        return {"Username": self.registry_user, "Token": self.registry_password,
                "ExpireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _ListNamespaces(self, payload: dict[str, Any]) -> dict[str, Any]:
        names = (payload.get("Filter") or {}).get("Names")
        items = [{"Name": n, "CreateTime": "2024-01-01T00:00:00Z"} for n in sorted(self.namespaces)
                 if names is None or n in names]
        return self._paged(items, payload)

    def _ListRepositories(self, payload: dict[str, Any]) -> dict[str, Any]:
        wanted = payload.get("Filter") or {}
        items = [{"Name": n, "Namespace": ns, "AccessLevel": "Private"}
                 for ns in sorted(self.namespaces) for n in sorted(self.namespaces[ns])
                 if ns in wanted.get("Namespaces", [ns]) and n in wanted.get("Names", [n])]
        return self._paged(items, payload)

    def _CreateNamespace(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.namespaces.setdefault(payload["Name"], [])
        return {}

    def _CreateRepository(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert payload["AccessLevel"] == "Private"
        self.namespaces[payload["Namespace"]].append(payload["Name"])
        return {}


# -- Alibaba Cloud ACR ----------------------------------------------------------------------------

_ACS3 = re.compile(r"ACS3-HMAC-SHA256 Credential=(?P<ak>[^,]+),SignedHeaders=(?P<signed>[^,]+),"
                   r"Signature=(?P<sig>[0-9a-f]{64})")


@dataclass
class FakeAliAcrApi(_CloudState):
    # None: the Personal edition; "cri-...": an Enterprise instance.
    instance_id: str | None = None
    auto_create: dict[str, bool] = field(default_factory=dict)
    nonces: set[str] = field(default_factory=set)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        match = _ACS3.fullmatch(request.headers.get("Authorization", ""))
        problem = None
        if match is None:
            problem = "no ACS3 Authorization"
        elif match["ak"] != self.access_key:
            problem = "unknown key"
        elif {"host", "x-acs-action", "x-acs-date", "x-acs-signature-nonce"} - \
                set(match["signed"].split(";")):
            problem = "unsigned headers"
        elif request.headers.get("x-acs-signature-nonce", "") in self.nonces:
            problem = "nonce used twice"
        else:
            expected = sign_acs3(request.method, request.url, _signed_headers(request, match["signed"]),
                                 request.content, access_key=self.access_key,
                                 secret=SecretStr(self.secret_key))
            if expected != request.headers["Authorization"]:
                problem = "signature mismatch"
        if problem is not None:
            self.refused.append(problem)
            code = "InvalidAccessKeyId.NotFound" if problem == "unknown key" else "SignatureDoesNotMatch"
            return httpx.Response(400 if code == "SignatureDoesNotMatch" else 404,
                                  json={"RequestId": "r1", "Code": code, "Message": "refused"})
        self.nonces.add(request.headers["x-acs-signature-nonce"])
        action = request.headers.get("x-acs-action", "")
        query = dict(parse_qsl(request.url.query.decode()))
        payload = {**query, **json.loads(request.content or b"{}")}
        self.calls.append((action, payload))
        if action in self.failures:
            return httpx.Response(400, json={"RequestId": "r1", "Code": self.failures[action],
                                             "Message": f"{action} failed on purpose"})
        if self.instance_id is None:
            return self._personal(request, action, payload)
        return self._enterprise(request, action, payload)

    # Personal edition: REST paths, {"data": ...}
    def _personal(self, request: httpx.Request, action: str, payload: dict[str, Any]) -> httpx.Response:
        if request.headers.get("x-acs-version") != "2016-06-07":
            return httpx.Response(400, json={"code": "InvalidVersion", "message": "wrong version"})
        path, method = request.url.path, request.method
        if (method, path, action) == ("GET", "/tokens", "GetAuthorizationToken"):
            return self._data({"tempUserName": self.registry_user,
                               "authorizationToken": self.registry_password,
                               "expireDate": int((time.time() + self.token_lifetime) * 1000)})
        if (method, path, action) == ("GET", "/namespace", "GetNamespaceList"):
            return self._data({"namespaces": [{"namespace": n, "authorizeType": "ADMIN"}
                                              for n in sorted(self.namespaces)]})
        if (method, path, action) == ("PUT", "/namespace", "CreateNamespace"):
            name = payload["Namespace"]["Namespace"]
            self.namespaces.setdefault(name, [])
            return self._data({"namespaceId": 1})
        repos = re.fullmatch(r"/repos/([^/]+)", path)
        if method == "GET" and repos and action == "GetRepoListByNamespace":
            namespace = repos.group(1)
            names = sorted(self.namespaces.get(namespace, []))
            number, size = int(payload.get("Page", 1)), int(payload.get("PageSize", 30))
            return self._data({"repos": [{"repoName": n, "repoNamespace": namespace}
                                         for n in self.page(names, number, size)],
                               "total": len(names), "page": number, "pageSize": min(size, self.page_size)})
        return httpx.Response(404, json={"code": "NotFound", "message": f"{method} {path}"})

    def _data(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json={"data": body})

    # Enterprise edition: RPC actions, flat answers with Code/IsSuccess
    def _enterprise(self, request: httpx.Request, action: str, payload: dict[str, Any]) -> httpx.Response:
        if request.headers.get("x-acs-version") != "2018-12-01" or request.url.path != "/":
            return httpx.Response(400, json={"Code": "InvalidVersion", "Message": "wrong version"})
        if payload.get("InstanceId") != self.instance_id:
            return httpx.Response(404, json={"Code": "INSTANCE_NOT_EXIST", "Message": "no such instance"})
        ok: dict[str, Any] = {"Code": "success", "IsSuccess": True, "RequestId": "r1"}
        if action == "GetAuthorizationToken":
            return httpx.Response(200, json={**ok, "TempUsername": self.registry_user,
                                             "AuthorizationToken": self.registry_password,
                                             "ExpireTime": int((time.time() + self.token_lifetime) * 1000)})
        number, size = int(payload.get("PageNo", 1)), int(payload.get("PageSize", 30))
        if action == "ListNamespace":
            names = sorted(self.namespaces)
            return httpx.Response(200, json={**ok, "Namespaces": [{"NamespaceName": n}
                                                                  for n in self.page(names, number, size)],
                                             "TotalCount": str(len(names)), "PageNo": number,
                                             "PageSize": size})
        if action == "ListRepository":
            namespace = payload["RepoNamespaceName"]
            names = sorted(self.namespaces.get(namespace, []))
            return httpx.Response(200, json={**ok, "Repositories": [
                {"RepoName": n, "RepoNamespaceName": namespace, "RepoId": f"crr-{n}"}
                for n in self.page(names, number, size)], "TotalCount": str(len(names)),
                "PageNo": number, "PageSize": size})
        if action == "CreateNamespace":
            self.namespaces.setdefault(payload["NamespaceName"], [])
            self.auto_create[payload["NamespaceName"]] = payload.get("AutoCreateRepo") == "true"
            return httpx.Response(200, json=ok)
        return httpx.Response(400, json={"Code": "InvalidAction", "Message": action})
