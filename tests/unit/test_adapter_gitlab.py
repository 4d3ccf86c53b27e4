"""GitLabAdapter against a fake GitLab (``/api/v4`` projects and registry repositories, paged by
``Link`` and ``X-Next-Page``) on a host other than its registry's, whose JWT realm points to
it -- shaped after GitLab's container registry and projects API documentation."""

from __future__ import annotations

import re
from urllib.parse import unquote

import httpx
import pytest
from pydantic import SecretStr

from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError
from adapters.gitlab import GitLabAdapter
from tests.support.vendor_fakes import FakeTokenRegistry, Router, reply

GITLAB = "gitlab.example"
REGISTRY = "registry.gitlab.example"
TOKEN = "glpat-never-shown-0123"
DEPLOY_USER = "gitlab+deploy-token-7"
DEPLOY_TOKEN = "gldt-never-shown-4567"


class FakeGitLab:
    """Projects (with their registry repositories and tags) and groups, two items a page.

    Project listings page by ``Link``; registry listings only by ``X-Next-Page``, as behind a
    proxy that drops Link.
    """

    def __init__(self, projects: dict[str, dict[str, list[str]]], *, disabled: frozenset[str] = frozenset(),
                 guest: frozenset[str] = frozenset()) -> None:
        self.ids = {path: i + 1 for i, path in enumerate(projects)}
        self.images = projects
        self.disabled = disabled
        self.guest = guest

    def install(self, router: Router) -> None:
        router.add("GET", GITLAB, r"/api/v4/projects", self.list_projects)
        router.add("GET", GITLAB, r"/api/v4/projects/(?P<id>[^/]+)", self.get_project)
        router.add("GET", GITLAB, r"/api/v4/projects/(?P<id>\d+)/registry/repositories", self.repositories)
        router.add("GET", GITLAB, r"/api/v4/groups/(?P<id>[^/]+)/registry/repositories", self.group)

    def project_json(self, path: str) -> dict[str, object]:
        return {"id": self.ids[path], "path_with_namespace": path, "name": path.rsplit("/", 1)[1],
                "container_registry_enabled": path not in self.disabled,
                "container_registry_access_level": "disabled" if path in self.disabled else "enabled"}

    def authorised(self, request: httpx.Request) -> bool:
        return request.headers.get("PRIVATE-TOKEN") == TOKEN

    def page(self, request: httpx.Request, items: list[object], *, link: bool) -> httpx.Response:
        if not self.authorised(request):
            return reply(401, body={"message": "401 Unauthorized"})
        number = int(request.url.params.get("page", "1"))
        chunk = items[(number - 1) * 2:number * 2]
        headers = {"X-Page": str(number), "X-Per-Page": "2", "X-Total": str(len(items))}
        if number * 2 < len(items):
            headers["X-Next-Page"] = str(number + 1)
            if link:
                nxt = request.url.copy_merge_params({"page": str(number + 1)})
                headers["Link"] = f'<{nxt}>; rel="next", <{nxt}>; rel="first"'
        return reply(body=chunk, headers=headers)

    def list_projects(self, request: httpx.Request) -> httpx.Response:
        assert request.url.params["membership"] == "true"
        return self.page(request, [self.project_json(p) for p in self.ids], link=True)

    def get_project(self, request: httpx.Request) -> httpx.Response:
        if not self.authorised(request):
            return reply(401, body={"message": "401 Unauthorized"})
        path = unquote(request.url.raw_path.decode().split("?")[0].rsplit("/", 1)[1])
        if path not in self.ids:
            return reply(404, body={"message": "404 Project Not Found"})
        return reply(body=self.project_json(path))

    def repository_json(self, path: str, image: str, tags: bool) -> dict[str, object]:
        full = f"{path}/{image}" if image else path
        entry: dict[str, object] = {"id": abs(hash(full)) % 1000, "name": image, "path": full,
                                    "project_id": self.ids[path], "location": f"{REGISTRY}/{full}"}
        if tags:
            entry["tags"] = [{"name": t, "path": f"{full}:{t}", "location": f"{REGISTRY}/{full}:{t}"}
                             for t in self.images[path][image]]
        return entry

    def repositories(self, request: httpx.Request) -> httpx.Response:
        ident = int(request.url.path.split("/")[4])
        path = next(p for p, i in self.ids.items() if i == ident)
        if path in self.guest:
            return reply(403, body={"message": "403 Forbidden"})
        tags = request.url.params.get("tags") == "true"
        items: list[object] = [self.repository_json(path, i, tags) for i in self.images[path]]
        return self.page(request, items, link=False)

    def group(self, request: httpx.Request) -> httpx.Response:
        group = unquote(request.url.raw_path.decode().split("/")[4])
        items: list[object] = [self.repository_json(p, i, False) for p, images in self.images.items()
                               if p.startswith(group + "/") for i in images]
        return self.page(request, items, link=True)


def install_registry(router: Router, *, users: dict[str, str] | None = None,
                     tags: dict[str, list[str]] | None = None) -> FakeTokenRegistry:
    registry = FakeTokenRegistry(REGISTRY, GITLAB, users or {"alice": TOKEN}, service="container_registry",
                                 realm_path="/jwt/auth", tags=tags or {})
    registry.install(router)
    return registry


def make_adapter(router: Router, *, user: str = "alice", password: str | None = TOKEN,
                 groups: list[str] | None = None) -> GitLabAdapter:
    endpoint = Endpoint(url=f"https://{REGISTRY}", username=user,
                        password=SecretStr(password) if password else None)
    return GitLabAdapter(endpoint, transport=router.transport(), groups=groups)


def test_adapter_info() -> None:
    info = GitLabAdapter.info
    assert info.type == "gitlab"
    assert info.min_path_components == 2
    assert info.triggers == ("manual", "scheduled")


async def test_the_api_is_found_through_the_registrys_realm_and_gets_the_token_only_there() -> None:
    router = Router()
    install_registry(router)
    FakeGitLab({"team/app": {"": ["1"]}}).install(router)
    adapter = make_adapter(router)
    try:
        assert (await adapter.api_client()).base_url == f"https://{GITLAB}/api/v4"
        assert [n async for n in adapter.list_repositories()] == ["team/app"]
    finally:
        await adapter.aclose()
    assert [(r.method, r.url.path) for r in router.to(REGISTRY)] == [("GET", "/v2/")]
    assert all("PRIVATE-TOKEN" not in r.headers and "Authorization" not in r.headers
               for r in router.to(REGISTRY))
    assert all(r.headers.get("PRIVATE-TOKEN") == TOKEN for r in router.to(GITLAB))


async def test_a_registry_without_realm_asks_for_the_api_url() -> None:
    router = Router()
    router.add("GET", REGISTRY, r"/v2/",
               lambda r: reply(401, headers={"WWW-Authenticate": 'Basic realm="x"'}))
    adapter = make_adapter(router)
    try:
        with pytest.raises(ConfigError, match="API URL"):
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()


async def test_listing_pages_through_member_projects_and_their_repositories_with_tags() -> None:
    router = Router()
    registry = install_registry(router)
    FakeGitLab({
        "team/app": {"": ["1.0", "latest"], "worker": ["1.0"], "cli/v2": ["2.0"]},
        "team/off": {"x": ["1"]},
        "team/private": {"y": ["1"]},
        "solo/tool": {"": ["0.1"]},
    }, disabled=frozenset({"team/off"}), guest=frozenset({"team/private"})).install(router)
    adapter = make_adapter(router)
    try:
        names = [n async for n in adapter.list_repositories()]
        tags = await adapter.list_tags("team/app/worker")
        untagged = await adapter.list_tags("team/app")
    finally:
        await adapter.aclose()
    # The disabled registry is not asked; the one a Guest may not read is skipped.
    assert names == ["team/app", "team/app/worker", "team/app/cli/v2", "solo/tool"]
    assert (tags, untagged) == (["1.0"], ["1.0", "latest"])
    api = [(r.url.path, r.url.params.get("page")) for r in router.to(GITLAB)]
    assert api == [
        ("/api/v4/projects", None), ("/api/v4/projects/1/registry/repositories", None),
        ("/api/v4/projects/1/registry/repositories", "2"), ("/api/v4/projects", "2"),
        ("/api/v4/projects/3/registry/repositories", None),
        ("/api/v4/projects/4/registry/repositories", None),
    ]
    assert all(r.url.params.get("tags") == "true" for r in router.to(GITLAB) if "registry" in r.url.path)
    assert registry.token_requests == []  # inlined tags: no tags/list on the registry


async def test_named_groups_are_listed_through_the_group_endpoint() -> None:
    router = Router()
    install_registry(router)
    FakeGitLab({"team/app": {"a": [], "b": [], "c": []}, "other/x": {"y": []}}).install(router)
    adapter = make_adapter(router, groups=["team"])
    try:
        names = [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert names == ["team/app/a", "team/app/b", "team/app/c"]
    assert [r.url.raw_path.decode().split("?")[0] for r in router.to(GITLAB)] == [
        "/api/v4/groups/team/registry/repositories"] * 2


async def test_a_deploy_token_cannot_list_and_is_told_to_name_repositories() -> None:
    router = Router()
    install_registry(router, users={DEPLOY_USER: DEPLOY_TOKEN})
    FakeGitLab({"team/app": {"": ["1"]}}).install(router)
    adapter = make_adapter(router, user=DEPLOY_USER, password=DEPLOY_TOKEN)
    try:
        with pytest.raises(AuthenticationError, match="name the repositories") as info:
            [n async for n in adapter.list_repositories()]
        assert [n async for n in adapter.list_repositories(["team/app"])] == ["team/app"]
    finally:
        await adapter.aclose()
    assert info.value.status == 401
    assert DEPLOY_TOKEN not in str(info.value)


# -- targets -----------------------------------------------------------------------------------


async def test_prepare_finds_each_targets_project_shortest_path_first() -> None:
    router = Router()
    install_registry(router)
    FakeGitLab({"team/app": {}, "org/sub/proj": {}}).install(router)
    adapter = make_adapter(router)
    try:
        await adapter.prepare_for_push(["team/app", "team/app/worker", "org/sub/proj/a/b/c"])
    finally:
        await adapter.aclose()
    asked = [unquote(r.url.raw_path.decode().rsplit("/", 1)[1]) for r in router.to(GITLAB)]
    # org/sub/proj/a/b/c may sit 3 levels below org/sub/proj, so the search starts there, and
    # finds a project; team/app is asked once (then cached for team/app/worker).
    assert asked == ["org/sub/proj", "team/app"]


@pytest.mark.parametrize(("target", "reason"), [
    ("team/nothing/here", "no GitLab project holds 'team/nothing/here'"),
    ("team/app/a/b/c/d", "no GitLab project holds"),  # four levels below team/app: too deep
    ("team/off/img", "registry of GitLab project 'team/off' is disabled"),
])
async def test_prepare_refuses_a_target_gitlab_cannot_hold(target: str, reason: str) -> None:
    router = Router()
    install_registry(router)
    FakeGitLab({"team/app": {}, "team/off": {}}, disabled=frozenset({"team/off"})).install(router)
    adapter = make_adapter(router)
    try:
        with pytest.raises(ConfigError, match=re.escape(reason)) as info:
            await adapter.prepare_for_push([target])
    finally:
        await adapter.aclose()
    assert info.value.field == "dest_namespace"


async def test_with_a_deploy_token_prepare_leaves_the_check_to_the_push() -> None:
    router = Router()
    install_registry(router, users={DEPLOY_USER: DEPLOY_TOKEN})
    FakeGitLab({"team/app": {}}).install(router)
    adapter = make_adapter(router, user=DEPLOY_USER, password=DEPLOY_TOKEN)
    try:
        await adapter.prepare_for_push(["team/app/img"])
    finally:
        await adapter.aclose()
    assert len(router.to(GITLAB)) == 1  # one refused lookup, then nothing more


async def test_the_registry_jwt_realm_takes_a_deploy_token_as_basic_credentials() -> None:
    router = Router()
    registry = install_registry(router, users={DEPLOY_USER: DEPLOY_TOKEN}, tags={"team/app/img": ["1", "2"]})
    adapter = make_adapter(router, user=DEPLOY_USER, password=DEPLOY_TOKEN)
    try:
        assert await adapter.list_tags("team/app/img") == ["1", "2"]
    finally:
        await adapter.aclose()
    assert registry.token_requests == [(DEPLOY_USER, ("repository:team/app/img:pull",))]
    assert router.to(GITLAB)[0].url.path == "/jwt/auth"
    assert all("PRIVATE-TOKEN" not in r.headers for r in router.requests)
