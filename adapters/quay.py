"""Quay (quay.io or self-hosted): the bytes through its registry (plain distribution, token
auth), listing and repository creation through its API at ``/api/v1`` on the same host.

Credentials, one of:

* a robot account: user ``org+robot`` (the ``+`` is part of the name), its token as password:
  registry only, since Quay's API does not take robot tokens;
* ``$oauthtoken`` and an OAuth application token: the registry and, as a bearer, the API;
* Harbor's form, kept so that a Harbor configuration carries over: the password is the JSON
  ``{"account_name", "docker_cli_password", "oauth2_access_token"}`` -- the first two for
  the registry, the token for the API;
* or the ``api_token`` option next to any of the above.

Without an API token, listing needs literal names or the robot's organisation (public
repositories only) and ``prepare_for_push`` leaves creation to the push (Quay creates a
repository on push for an account with the Creator role).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from adapters.base import AdapterInfo
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, PermissionDeniedError, RegistryError
from adapters.native import NativeAdapter
from adapters.vendor_api import ApiResponse, HeaderAuth, VendorApi, with_query

logger = logging.getLogger(__name__)

# Quay's documented user name for logging in to the registry with an OAuth token.
OAUTH_TOKEN_USER = "$oauthtoken"
ROBOT_SEPARATOR = "+"


class QuayRepository(BaseModel):
    namespace: str
    name: str


class QuayRepositoryPage(BaseModel):
    repositories: list[QuayRepository] = []
    next_page: str | None = None


class QuayOrganisation(BaseModel):
    name: str


class QuayUser(BaseModel):
    username: str
    organizations: list[QuayOrganisation] = []


class HarborQuaySecret(BaseModel):
    """The JSON Harbor stores as a Quay registry's access secret."""

    account_name: str
    docker_cli_password: SecretStr
    oauth2_access_token: SecretStr | None = None


def split_credentials(endpoint: Endpoint,
                      api_token: SecretStr | None = None) -> tuple[Endpoint, SecretStr | None]:
    """(the endpoint with the registry's credentials, the API token or None)."""
    secret = endpoint.password.get_secret_value() if endpoint.password is not None else ""
    if secret.lstrip().startswith("{"):
        try:
            harbor = HarborQuaySecret.model_validate(json.loads(secret))
        except (ValueError, ValidationError):
            # Not Harbor's JSON after all: a password may start with '{'.
            harbor = None
        if harbor is not None:
            registry = endpoint.model_copy(update={"username": harbor.account_name,
                                                   "password": harbor.docker_cli_password})
            token = harbor.oauth2_access_token
            return registry, api_token or (token if token and token.get_secret_value() else None)
    if endpoint.username == OAUTH_TOKEN_USER and endpoint.password is not None:
        return endpoint, api_token or endpoint.password
    return endpoint, api_token


class QuayAdapter(NativeAdapter):
    info = AdapterInfo(
        type="quay",
        options=("api_url", "namespaces", "visibility"),
        description="Quay (quay.io or self-hosted; listing and repository creation through its API)",
        # Quay's repository notifications are not a format the receiver reads.
        triggers=("manual", "scheduled"),
        # namespace/name; Quay 3.6+ takes deeper names (extended repository names).
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_url: str | None = None,
        api_token: SecretStr | None = None,
        namespaces: Sequence[str] | None = None,
        visibility: Literal["private", "public"] = "private",
    ) -> None:
        # NativeAdapter.__init__ is not called: the registry may get other credentials than the
        # endpoint's password (Harbor's JSON form).
        self.endpoint, token = split_credentials(endpoint, api_token)
        self.client = DistributionClient(self.endpoint, transport=transport)
        self.has_api_token = token is not None
        auth = None
        if token is not None:
            def auth(host: str) -> HeaderAuth:
                return HeaderAuth(host, lambda: {"Authorization": f"Bearer {token.get_secret_value()}"})
        base = api_url or f"{httpx.URL(endpoint.url).scheme}://{endpoint.host}"
        self.api = VendorApi(base, endpoint, auth=auth, transport=transport)
        self._namespaces = tuple(namespaces) if namespaces else None
        self.visibility = visibility

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.api.aclose()

    async def walk_repositories(self) -> AsyncIterator[str]:
        for namespace in self._namespaces or await self._visible_namespaces():
            async for page in self.api.pages("/api/v1/repository", _next_page,
                                             params={"namespace": namespace}):
                for repository in page.parse(QuayRepositoryPage).repositories:
                    yield f"{repository.namespace}/{repository.name}"

    async def _visible_namespaces(self) -> list[str]:
        """The robot's organisation, else the token's user and its organisations."""
        user = self.endpoint.username or ""
        if ROBOT_SEPARATOR in user:
            return [user.split(ROBOT_SEPARATOR, 1)[0]]
        if not self.has_api_token:
            raise ConfigError("Quay lists repositories per namespace: name the repositories in the "
                              "policy's name filter, use a robot account, or give an OAuth token",
                              field="credential")
        me = (await self.api.get("/api/v1/user/")).parse(QuayUser)
        return list(dict.fromkeys([me.username, *(org.name for org in me.organizations)]))

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Create each repository through the API; one that exists already is fine."""
        if not self.has_api_token:
            return  # the push creates it, if the account may (Quay's Creator role)
        for repository in sorted(set(repositories)):
            await self._create(repository)

    async def _create(self, repository: str) -> None:
        namespace, _, name = repository.partition("/")
        answer = await self.api.request(
            "POST", "/api/v1/repository", ok=(201, 400, 403, 409),
            json_body={"namespace": namespace, "repository": name, "visibility": self.visibility,
                       "description": "", "repo_kind": "image"},
        )
        if answer.status == 201:
            logger.info("quay: created %s (%s)", repository, self.visibility)
            return
        message = answer.message()
        if answer.status in (400, 409) and "already exists" in message.lower():
            return
        if answer.status == 403:
            # Quay checks the right to create before it checks existence: a token that may only
            # write to existing repositories is refused here for one that exists.
            if await self._exists(repository):
                return
            await self._namespace_must_exist(namespace)
            raise PermissionDeniedError(
                f"Quay refused to create {repository}: the token needs the right to create "
                f"repositories in {namespace} (Creator role or admin)",
                status=403, method="POST", url=f"{self.api.host}/api/v1/repository", detail=message)
        raise RegistryError(f"Quay refused to create {repository}: {answer.status}: {message}",
                            status=answer.status, method="POST",
                            url=f"{self.api.host}/api/v1/repository", detail=message)

    async def _exists(self, repository: str) -> bool:
        answer = await self.api.get(f"/api/v1/repository/{_quoted(repository)}",
                                    params={"includeTags": "false"}, ok=(200, 403, 404))
        return answer.status == 200

    async def _namespace_must_exist(self, namespace: str) -> None:
        org = await self.api.get(f"/api/v1/organization/{quote(namespace, safe='')}", ok=(200, 403, 404))
        if org.status != 404:
            return
        user = await self.api.get(f"/api/v1/users/{quote(namespace, safe='')}", ok=(200, 403, 404))
        if user.status == 404:
            raise ConfigError(f"Quay has no organisation or user {namespace!r}: Quay creates no "
                              "namespace on push; create the organisation in Quay, or change "
                              "dest_namespace", field="dest_namespace")


def _quoted(repository: str) -> str:
    return "/".join(quote(part, safe="") for part in repository.split("/"))


def _next_page(page: ApiResponse) -> str | None:
    token = page.parse(QuayRepositoryPage).next_page
    return with_query(page.url, next_page=token) if token else None
