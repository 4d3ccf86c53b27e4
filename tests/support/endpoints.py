"""Turn a test registry into what the product takes: an Endpoint and an open client."""

from __future__ import annotations

from pydantic import SecretStr

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from tests.support.registry import RegistryProcess


def endpoint_for(registry: RegistryProcess) -> Endpoint:
    password = SecretStr(registry.password) if registry.password else None
    return Endpoint(url=registry.url, username=registry.username, password=password)


def client_for(registry: RegistryProcess) -> DistributionClient:
    return DistributionClient(endpoint_for(registry))
