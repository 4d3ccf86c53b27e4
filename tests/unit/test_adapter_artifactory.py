"""adapters.artifactory against an in-memory Artifactory shaped after JFrog's REST API reference:
``GET /api/repositories?type=&packageType=`` (a JSON list of {key, type, packageType, url}),
``GET /api/docker/<key>/v2/_catalog?n=&last=``, ``PUT /api/repositories/<key>`` (200 with a
plain-text confirmation, 400 ``{"errors": [{"status", "message"}]}`` when the key exists), all
under ``/artifactory`` and behind Basic auth; plus its Docker registry at ``/v2/<key>/<image>``."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from pydantic import SecretStr

import adapters.artifactory as artifactory_module
from adapters.artifactory import ArtifactoryAdapter
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, PermissionDeniedError

HOST = "acme.jfrog.io"
USER = "alice"
PASSWORD = "cmVmdGtuOjAxOjE3-access-token-never-shown"


def reply(status: int = 200, *, body: object = None, text: str | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else (text or "").encode()
    return httpx.Response(status, headers={"Content-Length": str(len(content)), **(headers or {})},
                          stream=httpx.ByteStream(content))


class FakeArtifactory:
    def __init__(self) -> None:
        self.repositories = [
            {"key": "docker-local", "type": "LOCAL", "packageType": "Docker"},
            {"key": "docker-remote", "type": "REMOTE", "packageType": "Docker"},
            {"key": "docker-virtual", "type": "VIRTUAL", "packageType": "Docker"},
            {"key": "npm-local", "type": "LOCAL", "packageType": "Npm"},
            {"key": "team", "type": "LOCAL", "packageType": "Docker"},
        ]
        self.images = {"docker-local": ["app", "base/alpine", "base/debian", "tools/a", "web"],
                       "team": ["svc"], "docker-remote": ["library/nginx"]}
        self.requests: list[httpx.Request] = []
        self.created: list[dict[str, object]] = []
        self.refuse_creation = False
        self.expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.host == HOST, request.url  # nothing goes anywhere else
        self.requests.append(request)
        path = request.url.path
        if request.headers.get("Authorization") != self.expected:
            if path.startswith("/v2/"):
                return reply(401, headers={"WWW-Authenticate": f'Basic realm="{HOST}"'})
            return reply(401, body={"errors": [{"status": 401, "message": "Bad credentials"}]})
        if path == "/artifactory/api/repositories" and request.method == "GET":
            kind = request.url.params.get("type", "").upper()
            package = request.url.params.get("packageType", "").lower()
            return reply(200, body=[
                {**r, "url": f"https://{HOST}/artifactory/{r['key']}"} for r in self.repositories
                if (not kind or r["type"] == kind) and (not package or r["packageType"].lower() == package)])
        if path.startswith("/artifactory/api/repositories/") and request.method == "PUT":
            return self._create(path.rpartition("/")[2], json.loads(request.content))
        if path.startswith("/artifactory/api/docker/") and path.endswith("/v2/_catalog"):
            key = path.split("/")[4]
            n = int(request.url.params["n"])
            last = request.url.params.get("last", "")
            return reply(200, body={"repositories": [i for i in self.images.get(key, []) if i > last][:n]})
        if path.startswith("/v2/") and path.endswith("/tags/list"):
            return reply(200, body={"name": path[4:-10], "tags": ["1.0"]})
        return reply(404, body={"errors": [{"status": 404, "message": "Not Found"}]})

    def _create(self, key: str, config: dict[str, object]) -> httpx.Response:
        if self.refuse_creation:
            return reply(403, body={"errors": [{"status": 403,
                                                "message": "Only an admin can create repositories"}]})
        if any(r["key"].lower() == key.lower() for r in self.repositories):
            message = "Case insensitive repository key already exists"
            return reply(400, body={"errors": [{"status": 400, "message": message}]})
        assert config["key"] == key
        self.created.append(config)
        self.repositories.append({"key": key, "type": "LOCAL", "packageType": "Docker"})
        return reply(200, text=f"Successfully created repository '{key}' ")

    def catalog_requests(self) -> list[tuple[str, dict[str, str]]]:
        return [(r.url.path.split("/")[4], dict(r.url.params)) for r in self.requests
                if r.url.path.endswith("/v2/_catalog")]


def make(fake: FakeArtifactory, password: str = PASSWORD) -> ArtifactoryAdapter:
    endpoint = Endpoint(url=f"https://{HOST}", username=USER, password=SecretStr(password))
    return ArtifactoryAdapter(endpoint, transport=httpx.MockTransport(fake))


def test_info_and_credentials_rule() -> None:
    info = ArtifactoryAdapter.info
    assert (info.type, info.min_path_components) == ("jfrog-artifactory", 2)
    assert info.triggers == ("manual", "scheduled")
    with pytest.raises(ConfigError, match="user name"):
        ArtifactoryAdapter(Endpoint(url=f"https://{HOST}", password=SecretStr(PASSWORD)))


async def test_listing_walks_local_docker_repositories_page_by_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifactory_module, "CATALOG_PAGE_SIZE", 2)
    fake = FakeArtifactory()
    adapter = make(fake)
    try:
        listed = [name async for name in adapter.list_repositories()]
    finally:
        await adapter.aclose()

    assert listed == ["docker-local/app", "docker-local/base/alpine", "docker-local/base/debian",
                      "docker-local/tools/a", "docker-local/web", "team/svc"]
    repo_queries = [dict(r.url.params) for r in fake.requests
                    if r.url.path == "/artifactory/api/repositories"]
    assert repo_queries == [{"packageType": "docker", "type": "local"}]
    # Full pages go on from their last name; the short third page ends docker-local.
    assert fake.catalog_requests() == [
        ("docker-local", {"n": "2"}),
        ("docker-local", {"n": "2", "last": "base/alpine"}),
        ("docker-local", {"n": "2", "last": "tools/a"}),
        ("team", {"n": "2"}),
    ]


async def test_old_artifactory_ignoring_the_filters_is_filtered_here() -> None:
    fake = FakeArtifactory()

    def unfiltered(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/artifactory/api/repositories":
            request = httpx.Request("GET", request.url.copy_with(query=None), headers=request.headers)
        return fake(request)

    adapter = ArtifactoryAdapter(Endpoint(url=f"https://{HOST}", username=USER, password=SecretStr(PASSWORD)),
                                 transport=httpx.MockTransport(unfiltered))
    try:
        assert await adapter.docker_repositories(local_only=True) == ["docker-local", "team"]
    finally:
        await adapter.aclose()


async def test_tags_come_from_the_registry_under_the_repository_key() -> None:
    fake = FakeArtifactory()
    adapter = make(fake)
    try:
        assert await adapter.list_tags("docker-local/base/alpine") == ["1.0"]
    finally:
        await adapter.aclose()
    assert fake.requests[-1].url.path == "/v2/docker-local/base/alpine/tags/list"


async def test_prepare_creates_each_missing_key_once() -> None:
    fake = FakeArtifactory()
    adapter = make(fake)
    try:
        await adapter.prepare_for_push(["mirror/app", "mirror/base/alpine", "docker-local/x",
                                        "docker-virtual/y", "Team/z"])
        await adapter.prepare_for_push(["mirror/app"])
    finally:
        await adapter.aclose()

    assert fake.created == [{"key": "mirror", "rclass": "local", "packageType": "docker",
                             "dockerApiVersion": "V2", "description": "created by regflow for replication"}]
    puts = [r.url.path for r in fake.requests if r.method == "PUT"]
    assert puts == ["/artifactory/api/repositories/mirror"]


async def test_prepare_refuses_paths_without_a_repository_key() -> None:
    fake = FakeArtifactory()
    adapter = make(fake)
    try:
        with pytest.raises(ConfigError, match="alone"):
            await adapter.prepare_for_push(["alone", "mirror/app"])
    finally:
        await adapter.aclose()
    assert not any(r.method == "PUT" for r in fake.requests)


async def test_creation_refused_is_a_permission_error() -> None:
    fake = FakeArtifactory()
    fake.refuse_creation = True
    adapter = make(fake)
    try:
        with pytest.raises(PermissionDeniedError) as info:
            await adapter.prepare_for_push(["mirror/app"])
    finally:
        await adapter.aclose()
    assert "Only an admin" in str(info.value)


async def test_wrong_password_is_an_authentication_error_without_it() -> None:
    fake = FakeArtifactory()
    adapter = make(fake, password="wrong-token-never-shown")
    try:
        with pytest.raises(AuthenticationError) as info:
            [name async for name in adapter.list_repositories()]
        health = await adapter.health()
    finally:
        await adapter.aclose()
    assert "Bad credentials" in str(info.value)
    assert health.status == "unhealthy"
    for text in (str(info.value), repr(info.value), repr(vars(info.value)), health.reason, repr(adapter)):
        assert "never-shown" not in text
