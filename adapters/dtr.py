"""Docker Trusted Registry / Mirantis Secure Registry (DTR, MSR 2.x).

The registry speaks the distribution spec (bearer flow at DTR's ``/auth/token``, the native
flow unchanged); its API on the same host takes the same user with HTTP Basic (a password or
an access token):

- listing: ``GET /api/v0/repositories?pageSize=N``, paged by ``pageStart`` from the
  ``X-Next-Page-Start`` header (DTR has no usable ``_catalog`` for this);
- ``prepare_for_push``: a missing organisation is created at ``POST /enzi/v0/accounts`` (needs
  an admin; DTR's v0 API has no call for it) and a missing repository at
  ``POST /api/v0/repositories/<namespace>`` (private): DTR refuses a push to an unknown one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from adapters.base import AdapterInfo
from adapters.distribution.auth import RegistryCredentials
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, PermissionDeniedError, error_for_status
from adapters.native import NativeAdapter
from adapters.vendor_api import ApiResponse, HeaderAuth, VendorApi, with_query

logger = logging.getLogger(__name__)

# DTR's largest page of repositories.
PAGE_SIZE = 100


class _Repository(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str


class _Repositories(BaseModel):
    model_config = ConfigDict(extra="ignore")

    repositories: list[_Repository] = []


class DtrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="dtr",
        options=("visibility",),
        description="Docker Trusted Registry / Mirantis Secure Registry (listing and repository "
                    "creation through its API)",
        # DTR's webhooks have their own payload, not one of the kinds regflow receives.
        triggers=("manual", "scheduled"),
        # DTR repositories are <namespace>/<name>.
        min_path_components=2,
        max_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        visibility: Literal["private", "public"] = "private",
    ) -> None:
        if not endpoint.username or endpoint.password is None:
            raise ConfigError("dtr needs access_key = a DTR user and access_secret = its password or "
                              "access token", field="credential")
        super().__init__(endpoint, transport=transport)
        if visibility not in ("private", "public"):
            raise ConfigError(f"dtr visibility must be private or public, got {visibility!r}",
                              field="options.visibility")
        self.visibility = visibility
        login = RegistryCredentials(username=endpoint.username, password=endpoint.password)

        def auth(host: str) -> HeaderAuth:
            return HeaderAuth(host, lambda: {"Authorization": login.basic_header()})
        self.api = VendorApi(f"{httpx.URL(endpoint.url).scheme}://{endpoint.host}", endpoint, auth=auth,
                             transport=transport)

    async def walk_repositories(self) -> AsyncIterator[str]:
        async for page in self.api.pages("/api/v0/repositories", _next_page, params={"pageSize": PAGE_SIZE}):
            for repository in page.parse(_Repositories).repositories:
                yield f"{repository.namespace}/{repository.name}"

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        wanted = sorted(set(repositories))
        bad = [r for r in wanted if r.count("/") != 1]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: DTR repositories are <namespace>/<name>, exactly two "
                              "path components", field="dest_namespace")
        for namespace in sorted({r.split("/", 1)[0] for r in wanted}):
            await self._ensure_namespace(namespace)
        for repository in wanted:
            namespace, name = repository.split("/", 1)
            found = await self.api.get(f"/api/v0/repositories/{_quoted(namespace)}/{_quoted(name)}",
                                       ok=(200, 404))
            if found.status == 200:
                continue
            created = await self.api.request(
                "POST", f"/api/v0/repositories/{_quoted(namespace)}", ok=(201, 400, 409),
                json_body={"name": name, "visibility": self.visibility, "enableManifestLists": True})
            # 400/409 with DTR's REPOSITORY_EXISTS: created meanwhile by someone else.
            if created.status != 201 and "exist" not in created.message().lower():
                raise error_for_status(
                    f"DTR refused to create {repository}: {created.status}: {created.message()}",
                    status=created.status, method="POST", url=f"{self.api.host}/api/v0/repositories",
                    detail=created.message())
            logger.info("dtr: created %s (%s)", repository, self.visibility)

    async def _ensure_namespace(self, namespace: str) -> None:
        found = await self.api.get(f"/enzi/v0/accounts/{_quoted(namespace)}", ok=(200, 404))
        if found.status == 200:
            return
        created = await self.api.request("POST", "/enzi/v0/accounts", ok=(201, 403, 409), json_body={
            "name": namespace, "fullName": namespace, "isOrg": True})
        if created.status == 403:
            raise PermissionDeniedError(
                f"DTR has no organisation {namespace!r} and refused to create it (only an admin may): "
                "create it in DTR, or change dest_namespace", status=403, method="POST",
                url=f"{self.api.host}/enzi/v0/accounts", detail=created.message())
        if created.status == 201:
            logger.info("dtr: created organisation %s", namespace)

    async def aclose(self) -> None:
        await self.api.aclose()
        await super().aclose()


def _quoted(part: str) -> str:
    return quote(part, safe="")


def _next_page(page: ApiResponse) -> str | None:
    start = page.headers.get("X-Next-Page-Start", "")
    return with_query(page.url, pageStart=start) if start else None
