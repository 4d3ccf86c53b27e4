"""GitHub Container Registry: the bytes through ghcr.io (plain distribution; a personal access
token is the password, the user name is not checked), the listing through GitHub's REST API,
since ghcr.io answers ``/v2/_catalog`` with 404.

* Listing: the container packages of the given owners (organisations or users), else of the
  token's user and each organisation it belongs to; pages follow ``Link: rel="next"``.
  Literal names are used as they are, with no API call.
* Targets: ``owner/name[/...]``; ghcr.io creates the package on first push.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote

import httpx
from pydantic import BaseModel, RootModel

from adapters.base import AdapterInfo
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, NotFoundError, PermissionDeniedError
from adapters.native import NativeAdapter
from adapters.vendor_api import HeaderAuth, VendorApi, link_next

logger = logging.getLogger(__name__)

GITHUB_API_URL = "https://api.github.com"
# The REST API version these calls and answers follow (GitHub's dated versioning).
GITHUB_API_VERSION = "2022-11-28"
# GitHub's maximum per_page: fewest requests per owner.
GITHUB_PAGE_SIZE = 100


class GithubOwner(BaseModel):
    login: str


class GithubPackage(BaseModel):
    name: str
    owner: GithubOwner


class GithubPackages(RootModel[list[GithubPackage]]):
    pass


class GithubOrganisations(RootModel[list[GithubOwner]]):
    pass


class GhcrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="github-ghcr",
        options=("api_url", "owners"),
        description="GitHub Container Registry (ghcr.io; listing through the GitHub packages API)",
        # GitHub's package webhooks are not a format the receiver reads.
        triggers=("manual", "scheduled"),
        min_path_components=2,
        # ghcr.io refuses manifest DELETE; packages are deleted through GitHub's API.
        supports_tag_deletion=False,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_url: str = GITHUB_API_URL,
        owners: Sequence[str] | None = None,
    ) -> None:
        super().__init__(endpoint, transport=transport)
        password = endpoint.password
        auth = None
        if password is not None:
            def auth(host: str) -> HeaderAuth:
                return HeaderAuth(host, lambda: {"Authorization": f"Bearer {password.get_secret_value()}"})
        self.api = VendorApi(api_url, endpoint, auth=auth, transport=transport,
                             headers={"Accept": "application/vnd.github+json",
                                      "X-GitHub-Api-Version": GITHUB_API_VERSION})
        self._owners = tuple(owners) if owners else None

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.api.aclose()

    async def walk_repositories(self) -> AsyncIterator[str]:
        if self.endpoint.password is None:
            raise ConfigError("ghcr.io has no catalog: name the repositories in the policy's name "
                              "filter, or give a token that can read packages (read:packages)",
                              field="credential")
        seen: set[str] = set()
        for owner in self._owners or [None, *await self._organisations()]:
            async for name in self._packages_of(owner):
                if name not in seen:
                    seen.add(name)
                    yield name

    async def _packages_of(self, owner: str | None) -> AsyncIterator[str]:
        """The container packages of ``owner`` (None: the token's user) as ghcr.io names."""
        paths = ["/user/packages"] if owner is None else [
            f"/orgs/{quote(owner, safe='')}/packages", f"/users/{quote(owner, safe='')}/packages"]
        for path in paths:
            try:
                async for page in self.api.pages(path, link_next, params={
                        "package_type": "container", "per_page": GITHUB_PAGE_SIZE}):
                    for package in page.parse(GithubPackages).root:
                        # ghcr.io names are lower case whatever the owner's login looks like.
                        yield f"{package.owner.login}/{package.name}".lower()
                return
            except NotFoundError:
                if path == paths[-1]:
                    raise  # neither an organisation nor a user of that name
                # not an organisation: the same name as a user, next
            except PermissionDeniedError as exc:
                if self._owners is not None:
                    raise
                # An organisation that enforces SAML SSO refuses a token not authorised for it;
                # that must not hide every other owner's packages.
                logger.warning("ghcr: skipping the packages of %s: %s", owner, exc)
                return

    async def _organisations(self) -> list[str]:
        orgs: list[str] = []
        async for page in self.api.pages("/user/orgs", link_next, params={"per_page": GITHUB_PAGE_SIZE}):
            orgs.extend(org.login for org in page.parse(GithubOrganisations).root)
        return orgs
