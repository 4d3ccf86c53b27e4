"""Amazon ECR (private registries). The registry itself speaks the distribution spec with Basic
auth, but its password is a 12-hour token from the ECR API, it has no usable ``_catalog``, and a
repository must exist before anything is pushed to it. So, over the native adapter:

- credentials: the registry's ``access_key`` / ``access_secret`` are an IAM access key id and
  secret access key; ``GetAuthorizationToken`` (SigV4-signed) turns them into the registry
  password "AWS:<token>", fetched again shortly before it expires;
- listing: ``DescribeRepositories``, paged by ``nextToken``;
- ``prepare_for_push``: ``CreateRepository`` for each target repository that does not exist.

The API is JSON 1.1 over POST on ``api.ecr.<region>.amazonaws.com``; the region and registry
(account) id come from the registry host ``<account>.dkr.ecr.<region>.amazonaws.com``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from adapters.aws_sigv4 import AwsCredentials, SigV4Auth
from adapters.base import AdapterInfo
from adapters.distribution.auth import RegistryCredentials
from adapters.endpoint import Endpoint
from adapters.errors import (
    AuthenticationError,
    ConfigError,
    ContentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RegistryError,
    ServerError,
)
from adapters.native import NativeAdapter
from adapters.vendor_http import api_client, call_json

ECR_HOST = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr(?P<fips>-fips)?\.(?P<region>[a-z0-9-]+)"
    r"\.(?P<suffix>amazonaws\.com(?:\.cn)?|sc2s\.sgov\.gov|c2s\.ic\.gov)"
)
TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
SIGNING_SERVICE = "ecr"
REGISTRY_USER = "AWS"
# ECR documents 12 hours; used only when an answer omits expiresAt.
TOKEN_LIFETIME_SECONDS = 12 * 3600.0
# DescribeRepositories' maximum page: the fewest calls for a large account.
DESCRIBE_PAGE_SIZE = 1000
MAX_PAGES = 10_000  # a nextToken loop on a broken answer must end
# ECR throttles its control-plane calls per account at a few to a few tens per second: a handful
# of repositories checked at a time stays well inside that.
PREPARE_CONCURRENCY = 4

# What ECR's error codes mean in regflow's tree (most arrive as HTTP 400).
ERROR_CODES: dict[str, type[RegistryError]] = {
    "RepositoryNotFoundException": NotFoundError,
    "AccessDeniedException": PermissionDeniedError,
    "UnrecognizedClientException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
    "SignatureDoesNotMatch": AuthenticationError,
    "IncompleteSignature": AuthenticationError,
    "MissingAuthenticationTokenException": AuthenticationError,
    "InvalidClientTokenId": AuthenticationError,
    "ExpiredTokenException": AuthenticationError,
    "ThrottlingException": RateLimitedError,
    "TooManyRequestsException": RateLimitedError,
    "ServerException": ServerError,
}
ALREADY_EXISTS = "RepositoryAlreadyExistsException"


class _Answer(BaseModel):
    # Answers are checked, never echoed: the token answer holds the registry password.
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)


class _AuthorizationData(_Answer):
    authorizationToken: SecretStr
    expiresAt: float | None = None


class _TokenAnswer(_Answer):
    authorizationData: list[_AuthorizationData]


class _Repository(_Answer):
    repositoryName: str


class _RepositoriesPage(_Answer):
    repositories: list[_Repository] = []
    nextToken: str | None = None


class EcrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="aws-ecr",
        options=("api_url", "region", "registry_id"),
        description="Amazon ECR private registry (tokens and repositories through the ECR API)",
        # ECR announces pushes through EventBridge, not webhooks regflow receives.
        triggers=("manual", "scheduled"),
        supports_mount=False,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_transport: httpx.AsyncBaseTransport | None = None,
        api_url: str | None = None,
        region: str | None = None,
        registry_id: str | None = None,
        session_token: SecretStr | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``region``, ``registry_id`` and ``api_url`` override what the host name says;
        ``api_transport`` (default: ``transport``) carries the ECR API calls only."""
        if not endpoint.username or endpoint.password is None:
            raise ConfigError("aws-ecr needs access_key = an AWS access key id and access_secret = "
                              "its secret access key", field="credential")
        parsed = ECR_HOST.fullmatch(httpx.URL(endpoint.url).host)
        if parsed is None and (region is None or registry_id is None):
            raise ConfigError(f"{endpoint.host} is not an ECR host "
                              "(<account>.dkr.ecr.<region>.amazonaws.com)", field="url")
        self.region = region or (parsed["region"] if parsed else "")
        self.registry_id = registry_id or (parsed["account"] if parsed else "")
        self.api_url = api_url or _api_url(self.region, parsed)
        super().__init__(endpoint, transport=transport)
        self._clock = clock
        credentials = AwsCredentials(access_key_id=endpoint.username, secret_access_key=endpoint.password,
                                     session_token=session_token)
        self._api = api_client(transport=api_transport or transport,
                               auth=SigV4Auth(credentials, region=self.region, service=SIGNING_SERVICE,
                                              clock=clock))
        self.client.auth.use_credential_provider(self.registry_credentials)

    async def registry_credentials(self) -> RegistryCredentials:
        """The registry password from ``GetAuthorizationToken``: base64 of "AWS:<token>"."""
        raw = await self._call("GetAuthorizationToken", {})
        try:
            [data, *_] = _TokenAnswer.model_validate(raw).authorizationData
        except (ValidationError, ValueError):
            raise ContentError("ECR API GetAuthorizationToken: no authorizationData in the answer") from None
        try:
            decoded = base64.b64decode(data.authorizationToken.get_secret_value(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        user, sep, password = decoded.partition(":")
        if not sep or not user or not password:
            raise ContentError("ECR API GetAuthorizationToken: the token is not base64 of user:password")
        expires = data.expiresAt if data.expiresAt is not None else self._clock() + TOKEN_LIFETIME_SECONDS
        return RegistryCredentials(username=user, password=SecretStr(password), expires_at=expires)

    async def walk_repositories(self) -> AsyncIterator[str]:
        """``DescribeRepositories`` of this registry (account), page by page."""
        request: dict[str, Any] = {"registryId": self.registry_id, "maxResults": DESCRIBE_PAGE_SIZE}
        for _ in range(MAX_PAGES):
            page = _page(await self._call("DescribeRepositories", request))
            for repository in page.repositories:
                yield repository.repositoryName
            if not page.nextToken:
                return
            request["nextToken"] = page.nextToken
        raise ContentError(f"ECR DescribeRepositories of {self.registry_id} did not end "
                           f"after {MAX_PAGES} pages")

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Create each repository ECR does not have yet (ECR refuses pushes to unknown ones)."""
        slots = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def ensure(name: str) -> None:
            async with slots:
                await self._ensure_repository(name)

        tasks = [asyncio.create_task(ensure(name)) for name in sorted(set(repositories))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # The first failure is the answer: stop the rest and collect them quietly.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _ensure_repository(self, name: str) -> None:
        # Describe first: re-running a policy then needs no ecr:CreateRepository permission.
        try:
            await self._call("DescribeRepositories", {"registryId": self.registry_id,
                                                      "repositoryNames": [name]})
            return
        except NotFoundError:
            pass
        try:
            await self._call("CreateRepository", {"registryId": self.registry_id, "repositoryName": name})
        except RegistryError as exc:
            if ALREADY_EXISTS not in exc.codes:  # created meanwhile by someone else: fine
                raise

    async def _call(self, action: str, payload: dict[str, Any]) -> Any:
        return await call_json(
            self._api, "POST", self.api_url, what=f"ECR API {action}", codes=ERROR_CODES,
            content=json.dumps(payload).encode(),
            headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": TARGET_PREFIX + action},
        )

    async def aclose(self) -> None:
        await self._api.aclose()
        await super().aclose()


def _api_url(region: str, parsed: re.Match[str] | None) -> str:
    if parsed is not None and parsed["fips"]:
        return f"https://ecr-fips.{region}.{parsed['suffix']}"
    suffix = parsed["suffix"] if parsed is not None else "amazonaws.com"
    return f"https://api.ecr.{region}.{suffix}"


def _page(raw: Any) -> _RepositoriesPage:
    try:
        return _RepositoriesPage.model_validate(raw)
    except ValidationError:
        raise ContentError("ECR API DescribeRepositories: unexpected answer") from None
