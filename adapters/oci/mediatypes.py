"""Media types of the manifests and blobs regflow meets, and how to tell them apart."""

from __future__ import annotations

from typing import Final

# Manifests we copy.
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_V2: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"

# Docker schema1: named only so it can be recognised and refused with a clear reason.
DOCKER_SCHEMA1_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Configs.
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
# The config of OCI artifacts that carry no config of their own.
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"

# Layers.
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE_LAYER: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER_GZIP: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDISTRIBUTABLE_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Helm charts as OCI artifacts (helm push): an image manifest whose config is the chart's
# metadata, its first layer the chart's .tgz and an optional second layer its provenance file.
HELM_CONFIG: Final = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART_CONTENT: Final = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
HELM_CHART_PROVENANCE: Final = "application/vnd.cncf.helm.chart.provenance.v1.prov"

# Sent as the Accept header of manifest requests. OCI comes first so that a registry holding
# both forms of an image answers with the OCI one.
MANIFEST_ACCEPT: Final[tuple[str, ...]] = (
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
)

INDEX_TYPES: Final[frozenset[str]] = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES: Final[frozenset[str]] = frozenset({OCI_MANIFEST, DOCKER_MANIFEST_V2})
SCHEMA1_TYPES: Final[frozenset[str]] = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED_MANIFEST})

# Layers whose bytes the registry may not hold (their descriptor points elsewhere via ``urls``),
# so a copy must not insist on transferring them.
FOREIGN_LAYER_TYPES: Final[frozenset[str]] = frozenset(
    {
        DOCKER_FOREIGN_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    }
)


def base_type(media_type: str) -> str:
    """The media type without parameters, lower-cased.

    Content-Type headers may carry ``; charset=utf-8`` and media types compare
    case-insensitively (RFC 6838), so comparisons go through this.
    """
    return media_type.split(";", 1)[0].strip().lower()


def is_index(media_type: str) -> bool:
    return base_type(media_type) in INDEX_TYPES


def is_image_manifest(media_type: str) -> bool:
    return base_type(media_type) in IMAGE_MANIFEST_TYPES


def is_schema1(media_type: str) -> bool:
    return base_type(media_type) in SCHEMA1_TYPES


def is_foreign_layer(media_type: str) -> bool:
    return base_type(media_type) in FOREIGN_LAYER_TYPES
