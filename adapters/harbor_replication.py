"""A running Harbor's replication settings, read through its REST API: every registry
(``GET /api/v2.0/registries``) and every replication policy (``GET /api/v2.0/replication/policies``),
all pages of each, as Harbor's JSON. Reading only; the mapping to regflow is
``policies.harbor_import``.

The client is the Harbor adapter's (``HarborApi``): basic credentials sent pre-emptively and only
to Harbor's own host, no redirects, answers capped, paging by ``Link`` or ``X-Total-Count``.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, SecretStr

from adapters.endpoint import Endpoint
from adapters.harbor import HarborApi

REGISTRIES_PATH = "/registries"
POLICIES_PATH = "/replication/policies"


class HarborReplication(BaseModel):
    """Harbor's answers as they came: lists of its Registry and ReplicationPolicy objects."""

    registries: list[Any]
    policies: list[Any]


async def read_replication(url: str, user: str, password: SecretStr, *, insecure: bool = False,
                           ca_certificate: str | None = None,
                           transport: httpx.AsyncBaseTransport | None = None) -> HarborReplication:
    """Every registry and replication policy of the Harbor at ``url``, as ``user`` (a system
    administrator: Harbor lists both to admins only)."""
    endpoint = Endpoint(url=url, username=user, password=password, insecure=insecure,
                        ca_certificate=ca_certificate)
    api = HarborApi(endpoint, transport=transport)
    try:
        registries = [item async for item in api.pages(REGISTRIES_PATH)]
        policies = [item async for item in api.pages(POLICIES_PATH)]
    finally:
        await api.aclose()
    return HarborReplication(registries=registries, policies=policies)
