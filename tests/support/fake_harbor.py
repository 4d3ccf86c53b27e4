"""Harbor 2.x's REST API in memory, shaped as its public swagger (api/v2.0/swagger.yaml) says,
for ``httpx.MockTransport`` in unit tests; and the JSON builders the integration test serves
from a loopback proxy in front of a real registry.

What it imitates, because the adapter depends on it:

- paging with ``page`` / ``page_size`` (the server caps the size: ``max_page_size``), the
  ``X-Total-Count`` header and ``Link: <...>; rel="next"`` (``links=False`` leaves it out);
- repository names inside the path encoded twice (``a/b`` → ``a%252Fb``): a name that reaches
  the router with a bare or once-encoded '/' is split by it and answered 404, as Harbor does;
- API requests with basic credentials (``users``), robot accounts ``robot$name`` included; the
  distribution side (``/v2/``) asks for a bearer token from ``/service/token``, which takes the
  same basic credentials;
- errors as ``{"errors": [{"code", "message"}]}``; ``fail()`` scripts statuses per request.

Every request is kept in ``requests``.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import httpx

API = "/api/v2.0"
TOKEN_PATH = "/service/token"
SERVICE = "harbor-registry"
PUSH_TIME = "2024-05-01T10:00:00.000Z"
ACCESSORY_ICON = "sha256:" + "0" * 64
_ids = itertools.count(1)


# -- shapes (swagger definitions) ---------------------------------------------------------------


def project_json(name: str, *, public: bool = False, project_id: int | None = None) -> dict[str, Any]:
    return {"project_id": project_id or next(_ids), "owner_id": 1, "name": name, "owner_name": "admin",
            "creation_time": PUSH_TIME, "update_time": PUSH_TIME, "deleted": False, "repo_count": 1,
            "chart_count": 0, "registry_id": None, "togglable": True,
            "metadata": {"public": "true" if public else "false", "auto_scan": "false"}}


def repository_json(name: str, *, artifact_count: int = 1) -> dict[str, Any]:
    return {"id": next(_ids), "project_id": 1, "name": name, "description": "",
            "artifact_count": artifact_count, "pull_count": 0, "creation_time": PUSH_TIME,
            "update_time": PUSH_TIME}


def label_json(name: str) -> dict[str, Any]:
    return {"id": next(_ids), "name": name, "description": "", "color": "#0065AB", "scope": "g",
            "project_id": 0, "creation_time": PUSH_TIME, "update_time": PUSH_TIME}


def tag_json(name: str, artifact_id: int) -> dict[str, Any]:
    return {"id": next(_ids), "repository_id": 1, "artifact_id": artifact_id, "name": name,
            "push_time": PUSH_TIME, "pull_time": "0001-01-01T00:00:00.000Z", "immutable": False,
            "signed": False}


def accessory_json(type_: str, digest: str, subject_id: int, subject_digest: str) -> dict[str, Any]:
    return {"id": next(_ids), "artifact_id": next(_ids), "subject_artifact_id": subject_id,
            "subject_artifact_digest": subject_digest, "subject_artifact_repo": "", "size": 512,
            "digest": digest, "type": type_, "icon": ACCESSORY_ICON, "creation_time": PUSH_TIME}


def artifact_json(digest: str, *, tags: Sequence[str] = (), labels: Sequence[str] = (),
                  type_: str = "IMAGE", accessories: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """``accessories``: (type, digest) pairs, e.g. ("signature.cosign", "sha256:...")."""
    artifact_id = next(_ids)
    return {
        "id": artifact_id, "type": type_, "media_type": "application/vnd.oci.image.config.v1+json",
        "manifest_media_type": "application/vnd.oci.image.manifest.v1+json", "project_id": 1,
        "repository_id": 1, "digest": digest, "size": 2048, "icon": "", "push_time": PUSH_TIME,
        "pull_time": "0001-01-01T00:00:00.000Z",
        "extra_attrs": {"architecture": "amd64", "os": "linux", "config": {}},
        "annotations": None, "references": None,
        # Harbor answers null, not [], for an artifact without tags, labels or accessories.
        "tags": [tag_json(t, artifact_id) for t in tags] or None,
        "labels": [label_json(n) for n in labels] or None,
        "accessories": [accessory_json(t, d, artifact_id, digest) for t, d in accessories] or None,
        "addition_links": {"build_history": {"absolute": False, "href": "/api/v2.0/..."}},
    }


def errors_json(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


def api_repository_segment(repository_in_project: str) -> str:
    """How a client must write ``a/b`` inside ``/repositories/{name}``: ``a%252Fb``."""
    return repository_in_project.replace("/", "%252F")


# -- the fake -----------------------------------------------------------------------------------


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str]


@dataclass
class FakeHarbor:
    host: str = "harbor.test"
    users: dict[str, str] = field(default_factory=dict)
    max_page_size: int = 100
    links: bool = True
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    repositories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # project → repos
    artifacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # repository → artifacts
    # What /v2/<name>/tags/list answers: Harbor lists accessories' own tags there too.
    registry_tags: dict[str, list[str]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)  # POST /projects bodies
    requests: list[httpx.Request] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    # GET /registries and /replication/policies answer these (registry_json, replication_policy_json).
    registries: list[dict[str, Any]] = field(default_factory=list)
    replication_policies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- seeding ---------------------------------------------------------------------------------

    def add_project(self, name: str, *, public: bool = False) -> None:
        self.projects[name] = project_json(name, public=public)
        self.repositories.setdefault(name, [])

    def add_artifact(self, repository: str, digest: str, *, tags: Sequence[str] = (),
                     labels: Sequence[str] = (), type_: str = "IMAGE",
                     accessories: Sequence[tuple[str, str, str | None]] = ()) -> dict[str, Any]:
        """``accessories``: (type, digest, tag on the registry or None for an untagged one)."""
        project = repository.split("/", 1)[0]
        if project not in self.projects:
            self.add_project(project)
        if repository not in self.artifacts:
            self.artifacts[repository] = []
            self.repositories[project].append(repository_json(repository))
        art = artifact_json(digest, tags=tags, labels=labels, type_=type_,
                            accessories=[(t, d) for t, d, _ in accessories])
        self.artifacts[repository].append(art)
        listed = self.registry_tags.setdefault(repository, [])
        listed.extend(tags)
        listed.extend(tag for _, _, tag in accessories if tag is not None)
        return art

    def fail(self, method: str, path: str, status: int, *, times: int = 1,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path`` (a regex, fullmatch
        on the decoded path) with ``status``."""
        self._faults.append(_Fault(method.upper(), re.compile(path), status, times, headers or {}))

    def seen(self, method: str, path: str) -> list[httpx.Request]:
        rx = re.compile(path)
        return [r for r in self.requests if r.method == method and rx.fullmatch(r.url.path)]

    # -- serving ---------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host != self.host.split(":")[0]:
            return reply(599, text="a request left the registry's host")
        for fault in self._faults:
            if fault.times and fault.method == request.method and fault.path.fullmatch(request.url.path):
                fault.times -= 1
                return _error(fault.status, "FAULT", "scripted", fault.headers)
        path = request.url.path
        if path == TOKEN_PATH:
            return self._token(request)
        if path.startswith("/v2/"):
            return self._registry(request)
        if path.startswith(API):
            return self._api(request)
        return _error(404, "NOT_FOUND", "no such route")

    def _basic_user(self, request: httpx.Request) -> str | None:
        """The user whose basic credentials the request carries, if they are right."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _token(self, request: httpx.Request) -> httpx.Response:
        if self.users and self._basic_user(request) is None:
            return _error(401, "UNAUTHORIZED", "unauthorized")
        user = self._basic_user(request) or "anonymous"
        return reply(200, {"token": f"token-of-{user}", "expires_in": 1800})

    def _registry(self, request: httpx.Request) -> httpx.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer token-of-"):
            challenge = f'Bearer realm="{self.url}{TOKEN_PATH}",service="{SERVICE}"'
            return _error(401, "UNAUTHORIZED", "unauthorized", {"WWW-Authenticate": challenge})
        if request.url.path == "/v2/":
            return reply(200, {})
        m = re.fullmatch(r"/v2/(.+)/tags/list", request.url.path)
        if m and m.group(1) in self.registry_tags:
            return reply(200, {"name": m.group(1), "tags": self.registry_tags[m.group(1)]})
        return _error(404, "NAME_UNKNOWN", "repository name not known to registry")

    def _api(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path[len(API):]
        if route == "/ping" and request.method == "GET":
            return reply(200, text="Pong")
        if self.users and self._basic_user(request) is None:
            return _error(401, "UNAUTHORIZED", "unauthorized")
        if route == "/projects":
            return self._projects(request)
        if route in REPLICATION_ROUTES and request.method == "GET":
            return self._page(request, getattr(self, REPLICATION_ROUTES[route]))
        # The router splits on '/' after decoding once: a name must arrive encoded twice.
        raw = request.url.raw_path.decode().split("?")[0]
        segments = "/".join(unquote(s) for s in raw.split("/")).split("/")[3:]
        if len(segments) == 2 and segments[0] == "projects" and request.method == "GET":
            found = self.projects.get(segments[1])
            return reply(200, found) if found else _error(404, "NOT_FOUND", "project not found")
        if len(segments) == 3 and segments[::2] == ["projects", "repositories"] and request.method == "GET":
            if segments[1] not in self.projects:
                return _error(404, "NOT_FOUND", "project not found")
            return self._page(request, self.repositories[segments[1]])
        if len(segments) == 5 and segments[::2] == ["projects", "repositories", "artifacts"]:
            repository = f"{segments[1]}/{unquote(segments[3])}"
            if request.method != "GET" or repository not in self.artifacts:
                return _error(404, "NOT_FOUND", f"repository {repository} not found")
            return self._page(request, self.artifacts[repository])
        return _error(404, "NOT_FOUND", "no such route")

    def _projects(self, request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            name = request.url.params.get("project_name", "")
            return reply(200 if name in self.projects else 404)
        if request.method == "POST":
            body = json.loads(request.content)
            self.created.append(body)
            name = body["project_name"]
            if name in self.projects:
                return _error(409, "CONFLICT", f"The project named {name} already exists")
            self.projects[name] = project_json(name, public=body.get("metadata", {}).get("public") == "true")
            self.repositories[name] = []
            return reply(201, headers={"Location": f"{API}/projects/{len(self.projects)}"})
        if request.method == "GET":
            return self._page(request, list(self.projects.values()))
        return _error(405, "METHOD_NOT_ALLOWED", "method not allowed")

    def _page(self, request: httpx.Request, items: list[dict[str, Any]]) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        size = min(int(request.url.params.get("page_size", "10")), self.max_page_size)
        chunk = items[(page - 1) * size : page * size]
        headers = {"X-Total-Count": str(len(items))}
        if self.links and page * size < len(items):
            params = [(k, v) for k, v in request.url.params.multi_items() if k not in ("page", "page_size")]
            query = "&".join(f"{k}={v}" for k, v in [*params, ("page", page + 1), ("page_size", size)])
            nxt = f"{request.url.raw_path.decode().split('?')[0]}?{query}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        return reply(200, chunk, headers=headers)


def reply(status: int = 200, body: Any = None, *, text: str | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body is still a stream, as from a real transport (``json=`` would be
    read into memory at construction, and the adapter reads bodies raw, capped)."""
    content = text.encode() if text is not None else b"" if body is None else json.dumps(body).encode()
    return httpx.Response(status, headers={"Content-Type": "application/json", **(headers or {}),
                                           "Content-Length": str(len(content))},
                          stream=httpx.ByteStream(content))


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return reply(status, errors_json(code, message), headers=headers)


# -- replication settings (issue 19: regflow import harbor) ---------------------------------------

REPLICATION_ROUTES = {"/registries": "registries", "/replication/policies": "replication_policies"}
ZERO_TIME = "0001-01-01T00:00:00.000Z"
MASKED_SECRET = "*****"
# go-swagger's omitempty: Harbor leaves out every false, zero and empty field of these models,
# except those its swagger marks as pointers (x-isnullable) or x-omitempty false.
_POLICY_POINTERS = frozenset({"dest_namespace_replace_count", "speed", "copy_by_chunk",
                              "single_active_replication"})


def _omit_empty(data: dict[str, Any], keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in keep or v not in (False, 0, "", None, [], {})}


def registry_json(registry_id: int, name: str, type_: str, url: str, *, access_key: str = "",
                  secret: bool = False, credential_type: str = "basic", insecure: bool = False,
                  description: str = "", ca_certificate: str = "") -> dict[str, Any]:
    """A Registry as ``GET /registries`` answers it: the secret masked, never returned."""
    credential = _omit_empty({"type": credential_type, "access_key": access_key,
                              "access_secret": MASKED_SECRET if secret else ""})
    return _omit_empty({"id": registry_id, "name": name, "type": type_, "url": url,
                        "description": description, "credential": credential, "insecure": insecure,
                        "ca_certificate": ca_certificate,
                        "status": "healthy", "creation_time": PUSH_TIME, "update_time": PUSH_TIME},
                       frozenset({"id"}))


def local_registry_json() -> dict[str, Any]:
    """Harbor's own side of a policy, as its API answers it: id 0, "Local", its core's URL."""
    return {"id": 0, "name": "Local", "type": "harbor", "url": "http://core:8080", "insecure": True,
            "credential": {"type": "secret", "access_secret": MASKED_SECRET}, "status": "healthy",
            "creation_time": ZERO_TIME, "update_time": ZERO_TIME}


def filter_json(type_: str, value: Any, decoration: str = "") -> dict[str, Any]:
    return _omit_empty({"type": type_, "value": value, "decoration": decoration})


def trigger_json(type_: str = "manual", cron: str = "") -> dict[str, Any]:
    return {"type": type_, "trigger_settings": {"cron": cron}}


def replication_policy_json(policy_id: int, name: str, *, src: dict[str, Any] | None,
                            dest: dict[str, Any] | None, filters: Sequence[dict[str, Any]] = (),
                            trigger: dict[str, Any] | None = None, description: str = "",
                            dest_namespace: str = "", dest_namespace_replace_count: int | None = -1,
                            replicate_deletion: bool = False, override: bool = True, enabled: bool = True,
                            speed: int | None = 0, copy_by_chunk: bool | None = False,
                            single_active_replication: bool | None = False) -> dict[str, Any]:
    """A ReplicationPolicy as ``GET /replication/policies`` answers it. ``src``/``dest``: a
    registry_json, local_registry_json() or None (older Harbors' null for the local side)."""
    return _omit_empty({
        "id": policy_id, "name": name, "description": description, "creator": "admin",
        "src_registry": src, "dest_registry": dest, "dest_namespace": dest_namespace,
        "dest_namespace_replace_count": dest_namespace_replace_count,
        "trigger": trigger or trigger_json(), "filters": list(filters),
        "replicate_deletion": replicate_deletion, "deletion": replicate_deletion, "override": override,
        "enabled": enabled, "speed": speed, "copy_by_chunk": copy_by_chunk,
        "single_active_replication": single_active_replication,
        "creation_time": PUSH_TIME, "update_time": PUSH_TIME,
    }, _POLICY_POINTERS | {"id"})


@contextmanager
def serve_on_loopback(fake: FakeHarbor) -> Iterator[str]:
    """``fake`` as a real HTTP server on 127.0.0.1 (for a CLI subprocess); yields its URL.

    The fake's host becomes the server's address, so its own-host check keeps working."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = httpx.Request(self.command, f"http://{fake.host}{self.path}",
                                    headers=list(self.headers.items()), content=body)
            response = fake.handle(request)
            content = response.read()
            self.send_response(response.status_code)
            for key, value in response.headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
