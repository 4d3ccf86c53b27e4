"""Huawei Cloud SoftWare Repository for Container (SWR, ``swr.<region>.myhuaweicloud.com``).

The registry speaks the distribution spec; its listing and namespace calls (``/dockyard/v2``)
live on the same host and take the same Basic credentials as the registry -- SWR's long-term
login:

- user ``<region>@<AK>``, password the login key ``hex(HMAC-SHA256(key=SK, msg=AK))``: as
  Harbor takes it, from ``swr login`` instructions;
- or the AccessKey pair itself (``access_key`` = AK without ``@``, ``access_secret`` = SK): the
  login is derived here, the SK never leaves this process.

Listing: ``GET /dockyard/v2/repositories?filter=center::self|offset::N|limit::M`` (the
account's own repositories, paged); ``prepare_for_push``: ``POST /dockyard/v2/namespaces`` for
each namespace ``GET /dockyard/v2/namespaces/<name>`` does not find (SWR creates repositories on
push inside an existing namespace, called an organisation in its console).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from adapters.base import AdapterInfo
from adapters.distribution.auth import RegistryCredentials
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError, ContentError
from adapters.native import NativeAdapter
from adapters.vendor_api import HeaderAuth, VendorApi

logger = logging.getLogger(__name__)

SWR_HOST = re.compile(r"swr\.(?P<region>[a-z0-9-]+)\.myhuaweicloud\.(?:com|eu|cn)")
# SWR's documented largest page for repository listings.
PAGE_SIZE = 100
MAX_PAGES = 10_000  # an offset loop on a broken answer must end


def login_key(access_key: str, secret_key: SecretStr) -> SecretStr:
    """SWR's long-term login password for an AccessKey pair."""
    digest = hmac.new(secret_key.get_secret_value().encode(), access_key.encode(), hashlib.sha256)
    return SecretStr(digest.hexdigest())


class _Repository(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str


class SwrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="huawei-SWR",
        options=("region",),
        description="Huawei Cloud SWR (long-term login or AccessKey pair; organisations created on demand)",
        # SWR triggers push events only into Huawei's own services.
        triggers=("manual", "scheduled"),
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        region: str | None = None,
    ) -> None:
        user, secret = endpoint.username, endpoint.password
        if not user or secret is None:
            raise ConfigError("huawei-SWR needs access_key = <region>@<AK> with access_secret = the login "
                              "key, or access_key = AK with access_secret = SK", field="credential")
        if "@" not in user:
            parsed = SWR_HOST.fullmatch(httpx.URL(endpoint.url).host)
            region = region or (parsed["region"] if parsed else None)
            if region is None:
                raise ConfigError(f"{endpoint.host} is not an SWR host (swr.<region>.myhuaweicloud.com): "
                                  "give the region option, or access_key = <region>@<AK>", field="url")
            user, secret = f"{region}@{user}", login_key(user, secret)
            endpoint = endpoint.model_copy(update={"username": user, "password": secret})
        super().__init__(endpoint, transport=transport)
        login = RegistryCredentials(username=user, password=secret)

        def auth(host: str) -> HeaderAuth:
            return HeaderAuth(host, lambda: {"Authorization": login.basic_header()})
        self.api = VendorApi(f"{httpx.URL(endpoint.url).scheme}://{endpoint.host}", endpoint, auth=auth,
                             transport=transport)

    async def walk_repositories(self) -> AsyncIterator[str]:
        """The account's repositories, page by page: until SWR's ``Content-Range`` total
        (``first-last/total``) is reached, or without one, until a page comes back short."""
        offset = 0
        for _ in range(MAX_PAGES):
            filter_ = f"center::self|offset::{offset}|limit::{PAGE_SIZE}"
            answer = await self.api.get("/dockyard/v2/repositories", params={"filter": filter_})
            if not isinstance(answer.data, list):
                raise ContentError(f"{self.api.host}/dockyard/v2/repositories: not a list of repositories")
            for item in answer.data:
                try:
                    repository = _Repository.model_validate(item)
                except ValidationError:
                    raise ContentError(f"{self.api.host}/dockyard/v2/repositories: odd entry") from None
                yield f"{repository.namespace}/{repository.name}"
            offset += len(answer.data)
            total = _range_total(answer.headers.get("Content-Range", ""))
            if not answer.data or (offset >= total if total is not None else len(answer.data) < PAGE_SIZE):
                return
        raise ContentError(f"{self.api.host}: SWR listing did not end after {MAX_PAGES} pages")

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        short = sorted({r for r in repositories if "/" not in r})
        if short:
            raise ConfigError(f"{', '.join(short)}: SWR repositories are <organisation>/<name>",
                              field="dest_namespace")
        for namespace in sorted({r.split("/", 1)[0] for r in repositories}):
            found = await self.api.get(f"/dockyard/v2/namespaces/{quote(namespace, safe='')}", ok=(200, 404))
            if found.status == 200:
                continue
            created = await self.api.request("POST", "/dockyard/v2/namespaces",
                                             json_body={"namespace": namespace}, ok=(200, 201, 409))
            if created.status != 409:  # 409: created meanwhile by someone else
                logger.info("swr: created organisation %s", namespace)

    async def aclose(self) -> None:
        await self.api.aclose()
        await super().aclose()


def _range_total(header: str) -> int | None:
    total = header.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None
