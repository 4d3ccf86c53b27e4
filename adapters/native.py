"""The adapter for any registry that speaks the OCI distribution spec and nothing more.

Vendor adapters subclass it and override only listing, namespace creation and credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

import httpx

from adapters.base import AdapterInfo, Health
from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, PermissionDeniedError, ReplicationError


class NativeAdapter:
    info = AdapterInfo(
        type="docker-registry",
        description="Any OCI distribution-spec registry (CNCF distribution, zot, ...)",
        supports_tag_deletion=False,
    )

    # The client for this registry type; a vendor whose "registry" is no distribution server
    # (ChartMuseum) names its own subclass.
    client_class: ClassVar[type[DistributionClient]] = DistributionClient

    def __init__(self, endpoint: Endpoint, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.client = self.client_class(endpoint, transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint.url!r})"

    async def health(self) -> Health:
        """Healthy when ``probe`` passes; its error, credentials first, is the reason otherwise."""
        try:
            await self.probe()
        except (AuthenticationError, PermissionDeniedError) as exc:
            return Health(status="unhealthy", reason=f"credentials refused: {exc}")
        except ReplicationError as exc:
            return Health(status="unhealthy", reason=str(exc))
        return Health(status="healthy")

    async def probe(self) -> None:
        """Raise unless /v2/ answers and, with credentials, the registry accepts them. Vendor
        adapters override this, not ``health``."""
        status = await self.client.ping()
        if status != 200 and self.endpoint.username:
            await self.client.check_credentials()

    async def list_repositories(self, names: Sequence[str] | None = None) -> AsyncIterator[str]:
        """Every repository, or just ``names`` when the policy named them (no catalog walk)."""
        if names is not None:
            for name in names:
                yield name
            return
        async for name in self.walk_repositories():
            yield name

    async def walk_repositories(self) -> AsyncIterator[str]:
        """Every repository the registry lists. Vendor adapters override this, not
        ``list_repositories``."""
        async for name in self.client.catalog():
            yield name

    async def list_tags(self, repository: str) -> list[str]:
        return await self.client.list_tags(repository)

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """distribution creates repositories on first push: nothing to prepare."""

    async def aclose(self) -> None:
        await self.client.aclose()
