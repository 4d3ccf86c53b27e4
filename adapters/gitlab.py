"""GitLab's container registry: the bytes through the registry host (plain distribution; its
JWT realm takes the user name and a personal, project, group or deploy token), listing and
project checks through the GitLab API, which lives on another host.

* API host: the ``api_url`` option, else the host of the registry's token realm
  (``Bearer realm="https://gitlab.example.com/jwt/auth"``), so that gitlab.com and
  self-managed instances need nothing more than the registry URL.
* API auth: the password as ``PRIVATE-TOKEN``. Deploy tokens work for the registry only, so
  with one, name the repositories in the policy (literal names need no API call).
* Listing: the given groups' repositories (``/groups/:id/registry/repositories``), else every
  project the token is a member of (``/projects/:id/registry/repositories?tags=true``, whose
  inlined tags then spare one tags/list request per repository). Pages follow ``Link`` or
  ``X-Next-Page``.
* Targets: an image lives under an existing project, at most GITLAB_IMAGE_LEVELS below it;
  the registry creates the repository on push. ``prepare_for_push`` finds each target's
  project and says clearly when there is none.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote

import httpx
from pydantic import BaseModel, RootModel

from adapters.base import AdapterInfo
from adapters.distribution.auth import parse_challenge
from adapters.distribution.client import (
    CONNECT_TIMEOUT_SECONDS,
    USER_AGENT,
    tls_verify,
)
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    TransportError,
)
from adapters.native import NativeAdapter
from adapters.vendor_api import ApiResponse, HeaderAuth, VendorApi, link_next, with_query

logger = logging.getLogger(__name__)

# GitLab's maximum per_page: fewest requests per listing.
GITLAB_PAGE_SIZE = 100
# GitLab takes image names at most three levels below the project path
# (registry.example.com/group/project/a/b/c).
GITLAB_IMAGE_LEVELS = 3
# Where GitLab's registry sends clients for tokens, below the GitLab root URL.
JWT_REALM_PATH = "/jwt/auth"


class GitLabTag(BaseModel):
    name: str


class GitLabRepository(BaseModel):
    path: str
    project_id: int | None = None
    tags: list[GitLabTag] | None = None


class GitLabRepositories(RootModel[list[GitLabRepository]]):
    pass


class GitLabProject(BaseModel):
    id: int
    path_with_namespace: str
    container_registry_enabled: bool | None = None
    container_registry_access_level: str | None = None

    @property
    def registry_disabled(self) -> bool:
        return self.container_registry_access_level == "disabled" or self.container_registry_enabled is False


class GitLabProjects(RootModel[list[GitLabProject]]):
    pass


class GitLabAdapter(NativeAdapter):
    info = AdapterInfo(
        type="gitlab",
        options=("api_url", "groups"),
        description="GitLab container registry (listing and project checks through the GitLab API)",
        # GitLab sends no webhook for registry pushes.
        triggers=("manual", "scheduled"),
        # group/project at least; the project's depth varies with subgroups, so the upper bound
        # (GITLAB_IMAGE_LEVELS below the project) is checked against the API in prepare_for_push.
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_url: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> None:
        super().__init__(endpoint, transport=transport)
        self._transport = transport
        self._api_url = api_url.rstrip("/") if api_url else None
        self._api: VendorApi | None = None
        self._groups = tuple(groups) if groups else None
        self._tags: dict[str, list[str]] = {}  # inlined by the project listing
        self._projects: dict[str, GitLabProject | None] = {}  # by path; None = not a project

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._api is not None:
            await self._api.aclose()

    async def api_client(self) -> VendorApi:
        """The GitLab API client, on the host found from the registry's realm the first time."""
        if self._api is None:
            base = self._api_url or await self._root_from_realm()
            password = self.endpoint.password
            auth = None
            if password is not None:
                def auth(host: str) -> HeaderAuth:
                    return HeaderAuth(host, lambda: {"PRIVATE-TOKEN": password.get_secret_value()})
            self._api = VendorApi(f"{base}/api/v4", self.endpoint, auth=auth, transport=self._transport)
        return self._api

    async def _root_from_realm(self) -> str:
        url = f"{self.endpoint.url}/v2/"
        try:
            async with httpx.AsyncClient(verify=tls_verify(self.endpoint), transport=self._transport,
                                         timeout=CONNECT_TIMEOUT_SECONDS,
                                         headers={"User-Agent": USER_AGENT}) as http:
                response = await http.get(url)  # no credentials: only the challenge is wanted
        except httpx.TransportError as exc:
            raise TransportError(f"GET {self.endpoint.host}/v2/: {type(exc).__name__}") from None
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        realm = challenge.params.get("realm", "") if challenge is not None else ""
        parts = httpx.URL(realm) if realm.startswith(("http://", "https://")) else None
        if parts is None:
            raise ConfigError(f"{self.endpoint.host} does not name its GitLab (no token realm in "
                              "its /v2/ challenge): set the GitLab API URL", field="url")
        path = parts.path.removesuffix("/").removesuffix(JWT_REALM_PATH)
        return f"{parts.scheme}://{parts.netloc.decode()}{path}"

    async def walk_repositories(self) -> AsyncIterator[str]:
        api = await self.api_client()
        try:
            if self._groups is not None:
                for group in self._groups:
                    async for page in api.pages(f"/groups/{quote(group, safe='')}/registry/repositories",
                                                _next_page, params={"per_page": GITLAB_PAGE_SIZE}):
                        for repository in page.parse(GitLabRepositories).root:
                            yield repository.path
                return
            async for project in self._member_projects(api):
                async for path in self._project_repositories(api, project):
                    yield path
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"{exc}; the GitLab API takes personal, project or group access tokens, not deploy "
                "tokens: with a deploy token, name the repositories in the policy's name filter",
                status=exc.status, method=exc.method, url=exc.url, detail=exc.detail) from None

    async def _member_projects(self, api: VendorApi) -> AsyncIterator[GitLabProject]:
        async for page in api.pages("/projects", _next_page, params={
                "membership": "true", "archived": "false", "per_page": GITLAB_PAGE_SIZE}):
            for project in page.parse(GitLabProjects).root:
                self._projects[project.path_with_namespace.lower()] = project
                if not project.registry_disabled:
                    yield project

    async def _project_repositories(self, api: VendorApi, project: GitLabProject) -> AsyncIterator[str]:
        try:
            async for page in api.pages(f"/projects/{project.id}/registry/repositories", _next_page,
                                        params={"tags": "true", "per_page": GITLAB_PAGE_SIZE}):
                for repository in page.parse(GitLabRepositories).root:
                    if repository.tags is not None:
                        self._tags[repository.path] = [t.name for t in repository.tags]
                    yield repository.path
        except (NotFoundError, PermissionDeniedError) as exc:
            # A registry this member may not read (Guest role, registry private): not an error
            # of the run, but worth a line.
            logger.info("gitlab: no registry listing for %s: %s", project.path_with_namespace, exc)

    async def list_tags(self, repository: str) -> list[str]:
        cached = self._tags.pop(repository, None)
        return cached if cached is not None else await self.client.list_tags(repository)

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Every target must sit under an existing project with its registry on."""
        if not repositories:
            return
        api = await self.api_client()
        for repository in sorted(set(repositories)):
            try:
                project = await self._project_of(api, repository)
            except AuthenticationError:
                # A deploy token: the API is closed to it, the registry will judge the push.
                logger.info("gitlab: the API refused the token; %s is checked at push", repository)
                return
            if project is None:
                raise ConfigError(
                    f"no GitLab project holds {repository!r}: GitLab keeps images under an existing "
                    f"project, at most {GITLAB_IMAGE_LEVELS} levels below it. Create the project, or "
                    "change dest_namespace", field="dest_namespace")
            if project.registry_disabled:
                raise ConfigError(f"the container registry of GitLab project "
                                  f"{project.path_with_namespace!r} is disabled", field="dest_namespace")

    async def _project_of(self, api: VendorApi, repository: str) -> GitLabProject | None:
        """The project whose path is a prefix of ``repository`` leaving at most
        GITLAB_IMAGE_LEVELS components; shortest first (``group/project/app`` is the usual)."""
        parts = repository.split("/")
        for size in range(max(2, len(parts) - GITLAB_IMAGE_LEVELS), len(parts) + 1):
            path = "/".join(parts[:size]).lower()
            if path not in self._projects:
                answer = await api.get(f"/projects/{quote(path, safe='')}", ok=(200, 404))
                self._projects[path] = answer.parse(GitLabProject) if answer.status == 200 else None
            project = self._projects[path]
            if project is not None:
                return project
        return None


def _next_page(page: ApiResponse) -> str | None:
    """GitLab sends both ``Link`` and ``X-Next-Page``; the latter alone on some proxies."""
    following = link_next(page)
    if following:
        return following
    number = page.headers.get("X-Next-Page", "")
    return with_query(page.url, page=number) if number.isdigit() else None
