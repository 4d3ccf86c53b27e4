"""What every adapter offers the replication tasks, and what it declares about itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint


class AdapterInfo(BaseModel):
    """Drives policy validation: which filters, triggers and paths a registry type accepts."""

    model_config = ConfigDict(frozen=True)

    type: str
    description: str
    resource_types: tuple[str, ...] = ("image", "artifact")
    filters: tuple[str, ...] = ("name", "tag")
    triggers: tuple[str, ...] = ("manual", "scheduled", "event_based")
    # Repository path rule: how many '/'-separated components a target path may have.
    min_path_components: int = 1
    max_path_components: int | None = None
    supports_tag_deletion: bool = False
    supports_mount: bool = True


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    reason: str = ""


class Adapter(Protocol):
    info: AdapterInfo
    client: DistributionClient

    async def health(self) -> Health: ...

    def list_repositories(self, names: Sequence[str] | None = None) -> AsyncIterator[str]: ...

    async def list_tags(self, repository: str) -> list[str]: ...

    async def prepare_for_push(self, repositories: Sequence[str]) -> None: ...

    async def aclose(self) -> None: ...


class AdapterFactory(Protocol):
    info: AdapterInfo

    def __call__(self, endpoint: Endpoint) -> Adapter: ...
