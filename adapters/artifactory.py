"""JFrog Artifactory. Its Docker registry (the "repository path" access method) serves
``<repository key>/<image>`` under ``/v2/``, so every path's first component is an Artifactory
repository. Over the native adapter:

- listing: the local Docker repositories from ``GET /api/repositories``, then each one's
  catalog from ``GET /api/docker/<key>/v2/_catalog`` (paged with ``n``/``last``), names
  prefixed with the key;
- ``prepare_for_push``: a local Docker repository (``PUT /api/repositories/<key>``) for each
  first component that is no Docker repository yet;
- path rule: two components at least (the key, then the image).

Credentials are a user name with its password, API key or access token as the password:
Artifactory takes all three as Basic, on the REST API and the registry alike. The REST API lives
on the registry's own host, under ``api_path`` (``/artifactory`` by default), so credentials never
leave that host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from adapters.base import AdapterInfo
from adapters.distribution.client import tls_verify
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, ContentError
from adapters.native import NativeAdapter
from adapters.vendor_http import api_client, call_json

DEFAULT_API_PATH = "/artifactory"
# Artifactory's catalog takes any n; distribution's 1000 ceiling keeps pages of a sane size.
CATALOG_PAGE_SIZE = 1000
MAX_PAGES = 100_000  # a paging loop on a broken answer must end
# What a repository regflow creates looks like: a plain local Docker V2 repository.
NEW_REPOSITORY_SETTINGS: dict[str, Any] = {
    "rclass": "local",
    "packageType": "docker",
    "dockerApiVersion": "V2",
    "description": "created by regflow for replication",
}


class _Repository(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str
    type: str = ""
    packageType: str = ""


class _Catalog(BaseModel):
    model_config = ConfigDict(extra="ignore")

    repositories: list[str] | None = None


_REPOSITORIES = TypeAdapter(list[_Repository])


class ArtifactoryAdapter(NativeAdapter):
    info = AdapterInfo(
        type="jfrog-artifactory",
        options=("api_path",),
        description="JFrog Artifactory Docker repositories (repository path method: <key>/<image>)",
        # Artifactory's webhooks have their own payload, not one of the kinds regflow receives.
        triggers=("manual", "scheduled"),
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_path: str = DEFAULT_API_PATH,
    ) -> None:
        if endpoint.password is not None and not endpoint.username:
            raise ConfigError("jfrog-artifactory needs access_key = the user name that goes with the "
                              "password, API key or access token", field="credential")
        super().__init__(endpoint, transport=transport)
        auth = (httpx.BasicAuth(endpoint.username, endpoint.password.get_secret_value())
                if endpoint.username and endpoint.password is not None else None)
        base = f"{urlsplit(endpoint.url).scheme}://{endpoint.host}{api_path.rstrip('/')}"
        self._api = api_client(base_url=base, verify=tls_verify(endpoint), transport=transport, auth=auth)

    async def docker_repositories(self, *, local_only: bool) -> list[str]:
        """Keys of the Docker repositories (local ones only, or of every kind)."""
        params = {"packageType": "docker", **({"type": "local"} if local_only else {})}
        raw = await call_json(self._api, "GET", "/api/repositories", what="Artifactory", params=params)
        try:
            repositories = _REPOSITORIES.validate_python(raw or [])
        except ValidationError:
            raise ContentError("Artifactory GET /api/repositories: not a list of repositories") from None
        # Older Artifactory versions ignore the filters: apply them again.
        return [r.key for r in repositories if r.packageType.lower() in ("", "docker")
                and (not local_only or r.type.upper() in ("", "LOCAL"))]

    async def walk_repositories(self) -> AsyncIterator[str]:
        """``<key>/<image>`` for every image of every local Docker repository."""
        for key in await self.docker_repositories(local_only=True):
            async for image in self._catalog(key):
                yield f"{key}/{image}"

    async def _catalog(self, key: str) -> AsyncIterator[str]:
        url = f"/api/docker/{quote(key, safe='')}/v2/_catalog"
        last: str | None = None
        for _ in range(MAX_PAGES):
            params = {"n": str(CATALOG_PAGE_SIZE), **({"last": last} if last is not None else {})}
            raw = await call_json(self._api, "GET", url, what="Artifactory", params=params)
            try:
                page = _Catalog.model_validate(raw or {}).repositories or []
            except ValidationError:
                raise ContentError(f"Artifactory catalog of {key}: not a list of names") from None
            for name in page:
                yield name
            # A short page is the last one; a page that does not move on would loop for ever.
            if len(page) < CATALOG_PAGE_SIZE or page[-1] == last:
                return
            last = page[-1]
        raise ContentError(f"Artifactory catalog of {key} did not end after {MAX_PAGES} pages")

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """A local Docker repository for each first path component that is none yet."""
        keys = sorted({name.split("/")[0] for name in repositories})
        short = sorted(name for name in repositories if "/" not in name)
        if short:
            raise ConfigError(f"{', '.join(short)}: Artifactory paths are <repository key>/<image>")
        if not keys:
            return
        # Every kind counts: a virtual repository with a deployment target takes pushes too.
        # Keys are case-insensitive in Artifactory.
        existing = {k.lower() for k in await self.docker_repositories(local_only=False)}
        for key in keys:
            if key.lower() not in existing:
                # Answers 200 with a plain-text confirmation.
                await call_json(self._api, "PUT", f"/api/repositories/{quote(key, safe='')}",
                                what="Artifactory", parse=False, json={"key": key, **NEW_REPOSITORY_SETTINGS})

    async def aclose(self) -> None:
        await self._api.aclose()
        await super().aclose()
