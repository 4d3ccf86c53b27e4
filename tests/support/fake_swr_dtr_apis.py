"""In-memory vendor APIs that live on the registry's own host, for httpx.MockTransport or for a
transport that sends every other path to a real registry:

* ``FakeSwrApi``: Huawei SWR's ``/dockyard/v2`` (Basic with the long-term login
  ``<region>@<AK>`` / hex HMAC-SHA256(SK, AK)): the account's repositories as a JSON list paged
  by ``filter=...|offset::N|limit::M``, namespaces read and created one by one;
* ``FakeDtrApi``: DTR's ``/api/v0`` and ``/enzi/v0`` (Basic): repositories paged by
  ``pageStart`` through ``X-Next-Page-Start``, accounts (organisations) and repositories
  created by POST (organisations only by an admin).

``handles(path)`` says which paths are the API's; every request it answers is recorded with
its Authorization header.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

import httpx

from tests.support.vendor_fakes import basic_user


@dataclass
class FakeSwrApi:
    user: str  # <region>@<AK>
    password: str  # the login key
    namespaces: dict[str, list[str]] = field(default_factory=dict)
    page_size: int = 2
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # method, path+query, Authorization

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith("/dockyard/")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((request.method, f"{path}?{request.url.query.decode()}",
                           request.headers.get("Authorization", "")))
        if basic_user(request) != (self.user, self.password):
            return httpx.Response(401, json={"errorCode": "SVCSTG.SWR.4010001",
                                             "errorMessage": "Unauthorized"})
        if request.method == "GET" and path == "/dockyard/v2/repositories":
            given = request.url.params.get("filter", "").split("|")
            terms = dict(t.split("::", 1) for t in given if "::" in t)
            if terms.get("center") != "self":
                return httpx.Response(400, json={"errorMessage": "filter needs center::self"})
            offset, limit = int(terms.get("offset", 0)), min(int(terms.get("limit", 100)), self.page_size)
            rows = [{"name": n, "namespace": ns, "category": "other", "is_public": False, "tags": []}
                    for ns in sorted(self.namespaces) for n in sorted(self.namespaces[ns])]
            return httpx.Response(200, json=rows[offset:offset + limit],
                                  headers={"Content-Range": f"{offset}-{offset + limit - 1}/{len(rows)}"})
        one = re.fullmatch(r"/dockyard/v2/namespaces/([^/]+)", path)
        if request.method == "GET" and one:
            name = unquote(one.group(1))
            if name not in self.namespaces:
                return httpx.Response(404, json={"errorCode": "SVCSTG.SWR.4040002",
                                                 "errorMessage": "Namespace not found"})
            return httpx.Response(200, json={"id": 1, "name": name, "auth": 7})
        if request.method == "POST" and path == "/dockyard/v2/namespaces":
            name = json.loads(request.content)["namespace"]
            if name in self.namespaces:
                return httpx.Response(409, json={"errorMessage": "namespace already exists"})
            self.namespaces[name] = []
            return httpx.Response(201, json={})
        return httpx.Response(404, json={"errorMessage": f"no route {request.method} {path}"})


@dataclass
class FakeDtrApi:
    user: str
    password: str
    admin: bool = True
    # namespace (organisation or user) -> repository names
    namespaces: dict[str, list[str]] = field(default_factory=dict)
    page_size: int = 2
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # method, path+query, Authorization
    created: list[dict[str, object]] = field(default_factory=list)

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(("/api/v0/", "/enzi/v0/"))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((request.method, f"{path}?{request.url.query.decode()}",
                           request.headers.get("Authorization", "")))
        if basic_user(request) != (self.user, self.password):
            return httpx.Response(401, json={"errors": [{"code": "NOT_AUTHENTICATED",
                                                          "message": "The client is not authenticated."}]})
        rows = [{"id": f"{ns}-{n}", "namespace": ns, "namespaceType": "organization", "name": n,
                 "visibility": "private"}
                for ns in sorted(self.namespaces) for n in sorted(self.namespaces[ns])]
        if request.method == "GET" and path == "/api/v0/repositories":
            query = dict(parse_qsl(request.url.query.decode()))
            start = int(query.get("pageStart") or 0)
            size = min(int(query.get("pageSize", 10)), self.page_size)
            headers = {"X-Next-Page-Start": str(start + size)} if start + size < len(rows) else {}
            return httpx.Response(200, json={"repositories": rows[start:start + size]}, headers=headers)
        one_repo = re.fullmatch(r"/api/v0/repositories/([^/]+)/([^/]+)", path)
        if request.method == "GET" and one_repo:
            ns, name = unquote(one_repo.group(1)), unquote(one_repo.group(2))
            if name not in self.namespaces.get(ns, []):
                return httpx.Response(404, json={"errors": [{"code": "NO_SUCH_REPOSITORY",
                                                              "message": "repository does not exist"}]})
            return httpx.Response(200, json={"namespace": ns, "name": name})
        in_namespace = re.fullmatch(r"/api/v0/repositories/([^/]+)", path)
        if request.method == "POST" and in_namespace:
            ns = unquote(in_namespace.group(1))
            body = json.loads(request.content)
            if ns not in self.namespaces:
                return _no_account()
            if body["name"] in self.namespaces[ns]:
                return httpx.Response(400, json={"errors": [{"code": "REPOSITORY_EXISTS",
                                                              "message": "repository already exists"}]})
            self.namespaces[ns].append(body["name"])
            self.created.append({"namespace": ns, **body})
            return httpx.Response(201, json={"namespace": ns, **body})
        account = re.fullmatch(r"/enzi/v0/accounts/([^/]+)", path)
        if request.method == "GET" and account:
            if unquote(account.group(1)) not in self.namespaces:
                return _no_account()
            return httpx.Response(200, json={"name": unquote(account.group(1)), "isOrg": True})
        if request.method == "POST" and path == "/enzi/v0/accounts":
            if not self.admin:
                return httpx.Response(403, json={"errors": [{"code": "NOT_AUTHORIZED",
                                                              "message": "only admins may create accounts"}]})
            body = json.loads(request.content)
            assert body["isOrg"] is True
            self.namespaces.setdefault(body["name"], [])
            return httpx.Response(201, json={"name": body["name"], "isOrg": True})
        return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND",
                                                      "message": f"{request.method} {path}"}]})


def _no_account() -> httpx.Response:
    return httpx.Response(404, json={"errors": [{"code": "NO_SUCH_ACCOUNT", "message": "no account"}]})
