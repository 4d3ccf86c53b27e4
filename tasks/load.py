"""Step 1: the policy and both registries, read from the store, with adapters opened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import BaseModel

from adapters import Adapter, Endpoint, adapter_info, create_adapter
from adapters.base import AdapterInfo
from adapters.errors import ConfigError
from policies.models import Policy
from policies.store import Store


class Side(BaseModel):
    registry: str
    type: str
    endpoint: Endpoint

    @property
    def info(self) -> AdapterInfo:
        return adapter_info(self.type)


class LoadedPolicy(BaseModel):
    policy: Policy
    source: Side
    target: Side


def load_policy(name: str, store: Store | None = None) -> LoadedPolicy:
    store = store or Store()
    policy = store.policy(name)
    if not policy.enabled:
        raise ConfigError(f"policy {name!r} is disabled (regflow policy enable {name} turns it on)")
    if policy.src_registry is None or policy.dest_registry is None:
        raise ConfigError(f"policy {name!r} needs both src_registry and dest_registry")
    return LoadedPolicy(policy=policy, source=_side(store, policy.src_registry),
                        target=_side(store, policy.dest_registry))


def _side(store: Store, name: str) -> Side:
    registry = store.registry(name)
    return Side(registry=name, type=registry.type, endpoint=store.endpoint(name))


@asynccontextmanager
async def open_adapters(loaded: LoadedPolicy) -> AsyncIterator[tuple[Adapter, Adapter]]:
    source = create_adapter(loaded.source.type, loaded.source.endpoint)
    target = create_adapter(loaded.target.type, loaded.target.endpoint)
    try:
        yield source, target
    finally:
        await source.aclose()
        await target.aclose()
