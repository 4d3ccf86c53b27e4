"""GhcrAdapter against a fake of GitHub's REST API (packages of a user and of organisations,
paged by ``Link``) and of ghcr.io's token realm, shaped after GitHub's public REST reference."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from pydantic import SecretStr

from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, ContentError, NotFoundError, RateLimitedError
from adapters.ghcr import GITHUB_API_VERSION, GhcrAdapter
from tests.support.vendor_fakes import FakeTokenRegistry, Router, reply

API = "api.github.com"
GHCR = "ghcr.io"
PAT = "ghp_never-shown-0123456789"


def package(owner: str, name: str) -> dict[str, object]:
    return {"id": abs(hash(name)) % 10_000, "name": name, "package_type": "container",
            "owner": {"login": owner, "type": "User"}, "visibility": "private",
            "url": f"https://{API}/users/{owner}/packages/container/{name}"}


class FakeGitHub:
    """``/user/packages``, ``/orgs/{org}/packages``, ``/users/{user}/packages``, ``/user/orgs``,
    two entries a page (GitHub caps per_page; the ``Link`` header carries the rest)."""

    def __init__(self, owned: dict[str, list[str]], *, user: str, orgs: list[str],
                 forbidden: frozenset[str] = frozenset()) -> None:
        self.owned = owned
        self.user = user
        self.orgs = orgs
        self.forbidden = forbidden

    def install(self, router: Router) -> None:
        router.add("GET", API, r"/user/packages", lambda r: self.page(r, self.packages(self.user)))
        router.add("GET", API, r"/user/orgs", lambda r: self.page(r, [{"login": o} for o in self.orgs]))
        router.add("GET", API, r"/orgs/(?P<o>[^/]+)/packages", self.org_packages)
        router.add("GET", API, r"/users/(?P<o>[^/]+)/packages", self.user_packages)

    def packages(self, owner: str) -> list[dict[str, object]]:
        return [package(owner, n) for n in self.owned[owner]]

    def org_packages(self, request: httpx.Request) -> httpx.Response:
        org = request.url.path.split("/")[2]
        if org in self.forbidden:
            return reply(403, body={"message": "Resource protected by organization SAML enforcement.",
                                    "documentation_url": "https://docs.github.com/rest"})
        if org not in self.orgs:
            return reply(404, body={"message": "Not Found", "documentation_url": "https://docs.github.com"})
        return self.page(request, self.packages(org))

    def user_packages(self, request: httpx.Request) -> httpx.Response:
        user = request.url.path.split("/")[2]
        if user not in self.owned:
            return reply(404, body={"message": "Not Found"})
        return self.page(request, self.packages(user))

    def page(self, request: httpx.Request, items: list[dict[str, object]]) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {PAT}":
            return reply(401, body={"message": "Requires authentication"})
        assert request.headers["X-GitHub-Api-Version"] == GITHUB_API_VERSION
        number = int(request.url.params.get("page", "1"))
        size = 2
        chunk = items[(number - 1) * size:number * size]
        headers = {}
        if number * size < len(items):
            nxt = request.url.copy_merge_params({"page": str(number + 1)})
            headers["Link"] = f'<{nxt}>; rel="next", <{nxt}>; rel="last"'
        return reply(body=chunk, headers=headers)


def make_adapter(router: Router, *, password: str | None = PAT,
                 owners: list[str] | None = None) -> GhcrAdapter:
    endpoint = Endpoint(url="https://ghcr.io", username="any-name",
                        password=SecretStr(password) if password else None)
    return GhcrAdapter(endpoint, transport=router.transport(), owners=owners)


def test_adapter_info() -> None:
    info = GhcrAdapter.info
    assert info.type == "github-ghcr"
    assert info.min_path_components == 2 and info.max_path_components is None
    assert "event_based" not in info.triggers
    assert info.filters == ("name", "tag")


async def test_listing_pages_through_the_users_and_each_organisations_packages() -> None:
    router = Router()
    FakeGitHub({"Octo": ["app", "Tool", "lib/core"], "acme": ["web", "api", "db"], "sso": ["x"]},
               user="Octo", orgs=["acme", "sso"], forbidden=frozenset({"sso"})).install(router)
    adapter = make_adapter(router)
    try:
        names = [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()

    # Lower case, as ghcr.io names are; the SAML-protected organisation is skipped, not fatal.
    assert names == ["octo/app", "octo/tool", "octo/lib/core", "acme/web", "acme/api", "acme/db"]
    paths = [(r.url.path, r.url.params.get("page")) for r in router.requests]
    assert paths == [("/user/orgs", None), ("/user/packages", None), ("/user/packages", "2"),
                     ("/orgs/acme/packages", None), ("/orgs/acme/packages", "2"),
                     ("/orgs/sso/packages", None)]
    assert all(r.url.params.get("package_type") == "container"
               for r in router.requests if r.url.path.endswith("/packages"))
    assert router.to(GHCR) == []


async def test_named_owners_are_organisations_or_else_users() -> None:
    router = Router()
    FakeGitHub({"someone": ["tool"], "acme": ["web"]}, user="me", orgs=["acme"]).install(router)
    adapter = make_adapter(router, owners=["acme", "someone"])
    try:
        names = [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert names == ["acme/web", "someone/tool"]
    assert [r.url.path for r in router.requests] == [
        "/orgs/acme/packages", "/orgs/someone/packages", "/users/someone/packages"]


async def test_an_owner_that_does_not_exist_is_an_error() -> None:
    router = Router()
    FakeGitHub({}, user="me", orgs=[]).install(router)
    adapter = make_adapter(router, owners=["nobody"])
    try:
        with pytest.raises(NotFoundError):
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()


async def test_literal_names_and_push_preparation_need_no_api_call() -> None:
    router = Router()
    adapter = make_adapter(router)
    try:
        assert [n async for n in adapter.list_repositories(["octo/app"])] == ["octo/app"]
        await adapter.prepare_for_push(["octo/new-one", "acme/web"])  # ghcr.io creates on push
    finally:
        await adapter.aclose()
    assert router.requests == []


async def test_without_a_token_there_is_no_listing_and_the_reason_is_given() -> None:
    router = Router()
    adapter = make_adapter(router, password=None)
    try:
        with pytest.raises(ConfigError, match="no catalog"):
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert router.requests == []


async def test_githubs_rate_limit_answer_is_a_transient_rate_limit_with_its_reset() -> None:
    router = Router()
    reset = str(int(time.time()) + 90)
    router.add("GET", API, r"/user/orgs", lambda r: reply(403, body={"message": "API rate limit exceeded"},
                                                          headers={"X-RateLimit-Remaining": "0",
                                                                   "X-RateLimit-Reset": reset}))
    adapter = make_adapter(router)
    try:
        with pytest.raises(RateLimitedError) as info:
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert info.value.transient
    assert info.value.retry_after is not None and 80 <= info.value.retry_after <= 91
    assert "API rate limit exceeded" in str(info.value)


async def test_a_link_off_the_api_host_is_refused_and_the_token_stays_home() -> None:
    router = Router()
    router.add("GET", API, r"/user/orgs", lambda r: reply(body=[]))
    router.add("GET", API, r"/user/packages", lambda r: reply(
        body=[package("octo", "app")],
        headers={"Link": '<https://evil.example/user/packages?page=2>; rel="next"'}))
    adapter = make_adapter(router)
    try:
        with pytest.raises(ContentError, match=r"evil\.example"):
            [n async for n in adapter.list_repositories()]
    finally:
        await adapter.aclose()
    assert router.to("evil.example") == []


async def test_registry_token_exchange_takes_the_pat_under_any_user_name() -> None:
    router = Router()
    registry = FakeTokenRegistry(GHCR, GHCR, {"any-name": PAT}, service="ghcr.io",
                                 tags={"octo/app": ["1.0", "2.0"]})
    registry.install(router)
    adapter = make_adapter(router)
    try:
        assert await adapter.list_tags("octo/app") == ["1.0", "2.0"]
    finally:
        await adapter.aclose()
    assert registry.token_requests == [("any-name", ("repository:octo/app:pull",))]
    # The PAT never went to the API host, nor anywhere as a bearer.
    assert all("Bearer " + PAT not in r.headers.get("Authorization", "") for r in router.requests)


async def test_a_refused_pat_is_an_authentication_error() -> None:
    router = Router()
    FakeTokenRegistry(GHCR, GHCR, {"any-name": "another"}, service="ghcr.io", tags={"octo/app": []}
                      ).install(router)
    adapter = make_adapter(router)
    try:
        with pytest.raises(AuthenticationError):
            await adapter.list_tags("octo/app")
        health = await adapter.health()
    finally:
        await adapter.aclose()
    assert health.status == "unhealthy" and "credentials refused" in health.reason
    assert not any(re.search(PAT, str(r.url)) for r in router.requests)
