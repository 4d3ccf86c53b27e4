"""What every adapter offers the replication tasks, and what it declares about itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.oci import Digest


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
    # False for read-only sources (ChartMuseum): a policy may not name them as dest_registry.
    can_be_target: bool = True
    # Keyword options of the adapter's constructor that a registry's ``options:`` may set
    # (API URL overrides, namespaces to list, ...). Secrets never go here.
    options: tuple[str, ...] = ()


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    reason: str = ""


class Adapter(Protocol):
    info: AdapterInfo

    # Read-only here, so that an adapter may hold a client subclass (ChartMuseum's virtual one).
    @property
    def client(self) -> DistributionClient: ...

    async def health(self) -> Health: ...

    def list_repositories(self, names: Sequence[str] | None = None) -> AsyncIterator[str]: ...

    async def list_tags(self, repository: str) -> list[str]: ...

    async def prepare_for_push(self, repositories: Sequence[str]) -> None: ...

    async def aclose(self) -> None: ...


# cosign's tag for what it attaches to ``<alg>:<hex>``: ``<alg>-<hex>.<suffix>``. Registries
# without the OCI referrers API (distribution 2.8 among them) are searched only there by
# ``cosign verify`` / ``verify-attestation`` / ``download sbom``.
COSIGN_SIGNATURE_SUFFIX = "sig"
COSIGN_ATTESTATION_SUFFIX = "att"
COSIGN_SBOM_SUFFIX = "sbom"


class Accessory(BaseModel):
    """Something attached to an artifact rather than tagged for its own sake (Harbor's word):
    a cosign signature, an attestation, an SBOM. It travels with its subject."""

    model_config = ConfigDict(frozen=True)

    # Harbor's accessory type: signature.cosign, attestation.intoto, harbor.sbom, signature.notation, ...
    type: str
    digest: Digest
    subject_digest: Digest

    @property
    def cosign_tag(self) -> str | None:
        """The tag cosign gives this accessory, or None for kinds cosign does not tag (notation
        signatures, Nydus accelerations), which only the referrers API can find."""
        kind = self.type.lower()
        if kind == "signature.cosign":
            suffix = COSIGN_SIGNATURE_SUFFIX
        elif kind.startswith("attestation."):
            suffix = COSIGN_ATTESTATION_SUFFIX
        elif "sbom" in kind:
            suffix = COSIGN_SBOM_SUFFIX
        else:
            return None
        return f"{self.subject_digest.algorithm}-{self.subject_digest.hex}.{suffix}"


class Artifact(BaseModel):
    """One manifest of a repository as a registry with an artifact API describes it."""

    model_config = ConfigDict(frozen=True)

    digest: Digest
    # Harbor's artifact type: IMAGE, CHART, CNAB, ... (upper case there; compare without case).
    type: str = "IMAGE"
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    accessories: tuple[Accessory, ...] = ()
    # When it was made, as the registry says without another request: its image config's
    # ``created``, else its push time; None when it says neither (``latest: order: created``).
    created: datetime | None = None


@runtime_checkable
class ArtifactLister(Protocol):
    """What an adapter offers on top of :class:`Adapter` when its registry knows artifacts, not
    only tags (Harbor: labels, types, accessories). Discovery uses it when present."""

    async def list_artifacts(self, repository: str) -> list[Artifact]: ...


class AdapterFactory(Protocol):
    info: AdapterInfo

    def __call__(self, endpoint: Endpoint) -> Adapter: ...
