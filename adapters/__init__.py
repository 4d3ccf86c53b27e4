"""Registry adapters, looked up by Harbor's registry type strings.

``ADAPTERS`` is written out by hand: importing this package registers nothing behind your back.
Plugins add their own type with ``register_adapter``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from adapters.acr import AcrAdapter
from adapters.aliacr import AliAcrAdapter
from adapters.artifactory import ArtifactoryAdapter
from adapters.base import Adapter, AdapterFactory, AdapterInfo, Health
from adapters.chartmuseum import ChartMuseumAdapter
from adapters.dockerhub import DockerHubAdapter
from adapters.dtr import DtrAdapter
from adapters.ecr import EcrAdapter
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError
from adapters.gcr import GcrAdapter
from adapters.ghcr import GhcrAdapter
from adapters.gitlab import GitLabAdapter
from adapters.harbor import HarborAdapter
from adapters.native import NativeAdapter
from adapters.oci_layout import OciLayoutAdapter
from adapters.quay import QuayAdapter
from adapters.swr import SwrAdapter
from adapters.tcr import TcrAdapter
from adapters.volcengine import VolcengineAdapter

ADAPTERS: dict[str, AdapterFactory] = {
    "docker-registry": NativeAdapter,
    "harbor": HarborAdapter,
    "docker-hub": DockerHubAdapter,
    "github-ghcr": GhcrAdapter,
    "quay": QuayAdapter,
    "gitlab": GitLabAdapter,
    "jfrog-artifactory": ArtifactoryAdapter,
    "azure-acr": AcrAdapter,
    "google-gcr": GcrAdapter,
    "aws-ecr": EcrAdapter,
    "huawei-SWR": SwrAdapter,
    "ali-acr": AliAcrAdapter,
    "tencent-tcr": TcrAdapter,
    "volcengine-cr": VolcengineAdapter,
    "dtr": DtrAdapter,
    # Not a Harbor type: a read-only source that turns a ChartMuseum repository into OCI charts.
    "chartmuseum": ChartMuseumAdapter,
    # Not a Harbor type: a directory of OCI image layouts (file:///path), source or target.
    "oci-layout": OciLayoutAdapter,
}

# Harbor's fifteen registry type strings, all in ADAPTERS, so that a Harbor user's
# configuration (and `regflow import harbor`) carries over unchanged.
HARBOR_TYPES: tuple[str, ...] = (
    "docker-registry", "harbor", "docker-hub", "github-ghcr", "quay", "gitlab",
    "jfrog-artifactory", "azure-acr", "google-gcr", "aws-ecr", "huawei-SWR", "ali-acr",
    "tencent-tcr", "volcengine-cr", "dtr",
)


def register_adapter(type_: str, factory: AdapterFactory) -> None:
    if type_ in ADAPTERS:
        raise ConfigError(f"adapter type {type_!r} is already registered")
    ADAPTERS[type_] = factory


def adapter_info(type_: str) -> AdapterInfo:
    return _factory(type_).info


def create_adapter(type_: str, endpoint: Endpoint) -> Adapter:
    factory = _factory(type_)
    check_options(type_, endpoint.options)
    # The options are keyword arguments of this factory's constructor (checked just above).
    construct = cast(Callable[..., Adapter], factory)
    return construct(endpoint, **endpoint.options)


def check_options(type_: str, options: Mapping[str, object]) -> None:
    allowed = _factory(type_).info.options
    for name in options:
        if name not in allowed:
            takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes none"
            raise ConfigError(f"registry type {type_!r} has no option {name!r} ({takes})",
                              field=f"options.{name}")


def _factory(type_: str) -> AdapterFactory:
    try:
        return ADAPTERS[type_]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError(f"registry type {type_!r} is not supported (supported: {known})",
                          field="type") from None


__all__ = ["ADAPTERS", "HARBOR_TYPES", "Adapter", "AdapterInfo", "Endpoint", "Health",
           "adapter_info", "check_options", "create_adapter", "register_adapter"]
