"""The adapter for Harbor 2.x. Images move through the distribution API exactly as with any
registry (``NativeAdapter``); only what Harbor knows beyond it goes through its REST API
(``/api/v2.0``):

- listing walks projects → repositories → artifacts, and artifacts carry labels, a type and
  their accessories (cosign signatures, attestations, SBOMs);
- ``prepare_for_push`` creates missing projects, since Harbor refuses a push into a project
  that does not exist;
- ``health`` asks ``/api/v2.0/ping`` (``/v2/`` when no Harbor API answers), then the credentials.

Credentials are the registry's basic ones (robot accounts ``robot$name`` included), sent
pre-emptively on API requests, which Harbor expects, and only ever to the registry's own host.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.base import Accessory, AdapterInfo, Artifact
from adapters.bounded import NON_BLOB_DEADLINE_SECONDS, read_capped, within
from adapters.distribution.client import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    USER_AGENT,
    _closing,
    _error_from,
    _next_link,
    _redact,
    _transport_errors,
    tls_verify,
)
from adapters.endpoint import Endpoint
from adapters.errors import (
    ConfigError,
    ContentError,
    NotFoundError,
    RegistryError,
)
from adapters.native import NativeAdapter
from adapters.oci import Digest
from adapters.oci.created import parse_created

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v2.0"
# Harbor refuses page_size above 100 (its swagger's maximum); the largest page is the fewest
# requests for a big project.
API_PAGE_SIZE = 100
# A Link or X-Total-Count that never ends (a broken proxy, a bug) must not page forever:
# 10,000 pages of 100 is a million projects, repositories or artifacts.
MAX_API_PAGES = 10_000
# One page of 100 artifacts, with tags, labels, accessories and extra_attrs (the image config),
# is well under a MiB; anything past this is not an honest page, and memory stays bounded.
MAX_API_RESPONSE_BYTES = 8 * 1024 * 1024
PUBLIC_TRUE = "true"


class _Wire(BaseModel):
    # Harbor adds fields release by release; only the ones read here are checked.
    model_config = ConfigDict(extra="ignore")


_W = TypeVar("_W", bound=_Wire)


class _Named(_Wire):
    name: str


class _Project(_Named):
    # Harbor's swagger says strings ({"public": "true"}); a field of another type elsewhere in
    # the metadata must not make the whole listing fail.
    metadata: dict[str, Any] | None = None

    @property
    def public(self) -> bool:
        return str((self.metadata or {}).get("public", "")).lower() == PUBLIC_TRUE


class _Accessory(_Wire):
    type: str
    digest: Digest


class _Artifact(_Wire):
    digest: Digest
    type: str = "IMAGE"
    # Harbor answers null, not [], for an artifact without tags, labels or accessories.
    tags: list[_Named] | None = None
    labels: list[_Named] | None = None
    accessories: list[_Accessory] | None = None
    # Read leniently: a time or attribute of another shape must not fail the whole listing.
    push_time: Any = None
    # An image's config fields, ``created`` among them; other types have other attributes.
    extra_attrs: Any = None

    def hand_off(self) -> Artifact:
        made = parse_created(self.extra_attrs.get("created")) if isinstance(self.extra_attrs, dict) else None
        return Artifact(
            digest=self.digest, type=self.type,
            tags=tuple(t.name for t in self.tags or ()),
            labels=tuple(label.name for label in self.labels or ()),
            accessories=tuple(Accessory(type=a.type, digest=a.digest, subject_digest=self.digest)
                              for a in self.accessories or ()),
            created=made or parse_created(self.push_time),
        )


def split_repository(repository: str) -> tuple[str, str]:
    """``project/rest/of/path`` → (project, rest): every Harbor repository lives in a project."""
    project, _, rest = repository.partition("/")
    if not project or not rest:
        raise ConfigError(f"{repository!r} is not a Harbor repository path (project/repository)",
                          field="repository")
    return project, rest


def api_repository_path(repository: str) -> str:
    """``/projects/{project}/repositories/{name}``: Harbor's router would split a '/' in the name,
    so the name goes URL-encoded twice (``a/b`` → ``a%252Fb``)."""
    project, rest = split_repository(repository)
    return f"/projects/{quote(project, safe='')}/repositories/{quote(quote(rest, safe=''), safe='')}"


class HarborApi:
    """Harbor's REST API for one registry: JSON in, JSON out, errors from the one error tree."""

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self._base = f"{urlsplit(endpoint.url).scheme}://{endpoint.host}"
        # httpx lower-cases the host and drops a default port; compare the way it writes them.
        self._own_host = httpx.URL(endpoint.url).netloc.decode()
        timeout = httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS,
                                write=READ_TIMEOUT_SECONDS, pool=None)
        # No redirects: an API answer that points elsewhere is an error, never a place to send
        # our credentials. Identity encoding: the size cap counts the bytes we hold, and no
        # compressed answer can inflate past it.
        self._http = httpx.AsyncClient(base_url=self._base, verify=tls_verify(endpoint),
                                       timeout=timeout, transport=transport, follow_redirects=False,
                                       headers={"User-Agent": USER_AGENT, "Accept": "application/json",
                                                "Accept-Encoding": "identity"})
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"HarborApi({self.endpoint.url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def _authorization(self) -> str | None:
        if self.endpoint.username is None or self.endpoint.password is None:
            return None
        # Encoded by hand, not through a URL: the '$' of a robot account stays as it is.
        raw = f"{self.endpoint.username}:{self.endpoint.password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def send(self, method: str, url: str, *, ok: tuple[int, ...], authenticated: bool = True,
                   params: Mapping[str, str] | None = None, body: Any = None) -> httpx.Response:
        """One request whose answer is read up to MAX_API_RESPONSE_BYTES (over it:
        ``AnswerTooLargeError``), from sending to the last byte within NON_BLOB_DEADLINE_SECONDS;
        a status outside ``ok`` raises from the error tree (5xx and 429 transient)."""
        prefix = self.endpoint.prefix
        path = url if url.startswith(f"{prefix}{API_PREFIX}") else f"{prefix}{API_PREFIX}{url}"
        request = self._http.build_request(method, path, params=params, json=body)
        if request.url.netloc.decode() != self._own_host:
            raise ContentError(f"refusing to send an API request to {request.url.host}")
        if authenticated and (authorization := self._authorization()) is not None:
            request.headers["Authorization"] = authorization
        self.requests_made += 1
        what = f"{method} {_redact(str(request.url))}"
        async with within(NON_BLOB_DEADLINE_SECONDS, what=what):
            with _transport_errors(method, str(request.url)):
                streamed = await self._http.send(request, stream=True)
                async with _closing(streamed):
                    if streamed.status_code not in ok:
                        raise await _error_from(streamed)
                    # A HEAD's Content-Length is the GET's; its empty body is still read to the
                    # end, so that the connection goes back to the pool.
                    raw = await read_capped(streamed, MAX_API_RESPONSE_BYTES, what=what,
                                            truncate=method == "HEAD")
        # A plain response holding the capped body, for .json(), .links and the headers.
        return httpx.Response(streamed.status_code, headers=streamed.headers, content=raw, request=request)

    async def get_json(self, url: str, params: Mapping[str, str] | None = None) -> Any:
        return _json(await self.send("GET", url, ok=(200,), params=params))

    async def pages(self, url: str, params: Mapping[str, str] | None = None) -> AsyncIterator[Any]:
        """Every item of a paged list: Harbor's ``Link: <...>; rel="next"`` when given, else
        ``X-Total-Count`` against the items seen; neither means one page."""
        size = API_PAGE_SIZE
        query: dict[str, str] | None = {**(params or {}), "page": "1", "page_size": str(size)}
        next_url: str | None = url
        seen = 0
        for page in range(1, MAX_API_PAGES + 1):
            if next_url is None:
                return
            response = await self.send("GET", next_url, ok=(200,), params=query)
            items = _json(response)
            if not isinstance(items, list):
                raise ContentError(f"{_redact(str(response.url))}: expected a JSON list")
            for item in items:
                yield item
            seen += len(items)
            next_url, query = _next_link(response), None
            if next_url is None and items and seen < _total_count(response):
                next_url, query = url, {**(params or {}), "page": str(page + 1), "page_size": str(size)}
        raise ContentError(f"{url} on {self.endpoint.host} did not end after {MAX_API_PAGES} pages")


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise ContentError(f"{_redact(str(response.url))}: the answer is not JSON") from None


def _total_count(response: httpx.Response) -> int:
    value = response.headers.get("X-Total-Count", "").strip()
    return int(value) if value.isdigit() else 0


def _parse(model: type[_W], item: Any, where: str) -> _W:
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ContentError(f"{where}: unexpected answer at {problem['loc']}: {problem['msg']}") from None


class HarborAdapter(NativeAdapter):
    info = AdapterInfo(
        type="harbor",
        description="Harbor 2.x: projects, labels, artifact types, accessories (cosign signatures, SBOMs)",
        resource_types=("image", "artifact", "chart"),
        filters=("name", "tag", "label", "resource"),
        triggers=("manual", "scheduled", "event_based"),
        min_path_components=2,  # project/repository
        supports_tag_deletion=True,
    )

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(endpoint, transport=transport)
        self.api = HarborApi(endpoint, transport=transport)
        # Project name → public, learned while listing; read by project_public().
        self._public: dict[str, bool] = {}

    async def aclose(self) -> None:
        try:
            await self.api.aclose()
        finally:
            await super().aclose()

    async def probe(self) -> None:
        """Harbor's ping (or, lacking it, /v2/) answers and the credentials work."""
        try:
            await self.api.send("GET", "/ping", ok=(200,), authenticated=False)
        except NotFoundError:
            await self.client.ping()  # no Harbor API here: a plain registry is still usable
        if self.endpoint.username:
            await self.client.check_credentials()

    async def walk_repositories(self) -> AsyncIterator[str]:
        """Every repository of every project the credentials see."""
        async for item in self.api.pages("/projects"):
            project = _parse(_Project, item, "project list")
            self._public[project.name] = project.public
            async for repo in self.api.pages(f"/projects/{quote(project.name, safe='')}/repositories"):
                yield _parse(_Named, repo, f"repositories of {project.name}").name

    async def list_artifacts(self, repository: str) -> list[Artifact]:
        """The repository's artifacts with their tags, labels, type and accessories."""
        artifacts: list[Artifact] = []
        params = {"with_tag": "true", "with_label": "true", "with_accessory": "true"}
        async for item in self.api.pages(f"{api_repository_path(repository)}/artifacts", params):
            artifacts.append(_parse(_Artifact, item, f"artifacts of {repository}").hand_off())
        return artifacts

    async def project_public(self, repository: str) -> bool | None:
        """Whether the project holding ``repository`` is public; None when it does not exist."""
        project = repository.partition("/")[0]
        if project not in self._public:
            try:
                found = _parse(_Project, await self.api.get_json(
                    f"/projects/{quote(project, safe='')}"), f"project {project}")
            except NotFoundError:
                return None
            self._public[project] = found.public
        return self._public[project]

    async def prepare_for_push(self, repositories: Sequence[str],
                               public: Mapping[str, bool] | None = None) -> None:
        """Create the projects ``repositories`` need. ``public`` maps a target repository to
        whether its source is public (``project_public`` of a Harbor source); a project is
        created public only when every repository landing in it says so, private otherwise."""
        wanted: dict[str, bool] = {}
        for repository in repositories:
            project, _ = split_repository(repository)
            flag = (public or {}).get(repository, False)
            wanted[project] = wanted.get(project, True) and flag
        for project, flag in sorted(wanted.items()):
            if await self._project_exists(project):
                continue
            await self._create_project(project, flag)

    async def _project_exists(self, project: str) -> bool:
        try:
            await self.api.send("HEAD", "/projects", ok=(200,), params={"project_name": project})
        except NotFoundError:
            return False
        return True

    async def _create_project(self, project: str, public: bool) -> None:
        body = {"project_name": project, "metadata": {"public": str(public).lower()}}
        try:
            await self.api.send("POST", "/projects", ok=(201,), body=body)
        except RegistryError as exc:
            if exc.status == 409:
                return  # created meanwhile by someone else: what we wanted
            raise
        logger.info("created project %s on %s (public: %s)", project, self.endpoint.host, public)
