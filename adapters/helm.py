"""Helm charts as OCI artifacts: the pure mapping from a chart's metadata and files to the config,
layers and manifest that ``helm push`` writes. No I/O here.

    config   application/vnd.cncf.helm.config.v1+json             Chart.yaml as JSON
    layer 0  application/vnd.cncf.helm.chart.content.v1.tar+gzip  the chart's .tgz, byte for byte
    layer 1  application/vnd.cncf.helm.chart.provenance.v1.prov   its .prov, when it has one
    annotations                                                   org.opencontainers.image.* from
                                                                  the metadata, then the chart's own

The bytes are a function of their inputs alone (no clock, no map order): an unchanged chart maps
to the same manifest digest on every run, so a resync finds it identical on the target and skips
it. JSON is written the way Go's encoding/json writes it (compact, fields in Helm's struct order,
map keys sorted, ``<``, ``>`` and ``&`` escaped), so the bytes match what Helm itself would push
for the same inputs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.oci.digest import Digest
from adapters.oci.manifest import Manifest
from adapters.oci.mediatypes import (
    DOCKER_CONFIG,
    HELM_CHART_CONTENT,
    HELM_CHART_PROVENANCE,
    HELM_CONFIG,
    OCI_CONFIG,
    OCI_MANIFEST,
    base_type,
)

# OCI's annotation keys (image-spec annotations.md) that Helm fills from Chart.yaml.
ANNOTATION_TITLE: Final = "org.opencontainers.image.title"
ANNOTATION_VERSION: Final = "org.opencontainers.image.version"
ANNOTATION_DESCRIPTION: Final = "org.opencontainers.image.description"
ANNOTATION_URL: Final = "org.opencontainers.image.url"
ANNOTATION_SOURCE: Final = "org.opencontainers.image.source"
ANNOTATION_AUTHORS: Final = "org.opencontainers.image.authors"
ANNOTATION_CREATED: Final = "org.opencontainers.image.created"
# A chart's own annotations may not overwrite these two: they are what identifies the chart.
_IMMUTABLE_ANNOTATIONS: Final = frozenset({ANNOTATION_TITLE, ANNOTATION_VERSION})

# Go's encoding/json escapes these inside strings (HTML safety, JavaScript line terminators);
# Python's json module does not.
_GO_ESCAPES: Final = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                      ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def oci_tag(version: str) -> str:
    """The tag a chart version is stored under: OCI tags cannot hold SemVer's '+', so Helm writes
    build metadata with '_' (helm #10166) and turns it back on pull."""
    return version.replace("+", "_")


class _Lenient(BaseModel):
    # extra="ignore": Chart.yaml and index entries carry fields Helm does not put in the config.
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # YAML and Go write an empty field as null; Helm reads that as the field's zero value.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Maintainer(_Lenient):
    name: str = ""
    email: str = ""
    url: str = ""


class Dependency(_Lenient):
    name: str = ""
    version: str = ""
    repository: str = ""
    condition: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = False
    import_values: tuple[Any, ...] = Field(default=(), alias="import-values")
    export_values: tuple[Any, ...] = Field(default=(), alias="export-values")
    alias: str = ""


class ChartMetadata(_Lenient):
    """Chart.yaml, as Helm's ``chart.Metadata`` holds it (and as a chart repository lists it)."""

    name: str
    home: str = ""
    sources: tuple[str, ...] = ()
    version: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    maintainers: tuple[Maintainer, ...] = ()
    icon: str = ""
    api_version: str = Field(default="", alias="apiVersion")
    condition: str = ""
    tags: str = ""
    app_version: str = Field(default="", alias="appVersion")
    deprecated: bool = False
    annotations: dict[str, str] = Field(default_factory=dict)
    kube_version: str = Field(default="", alias="kubeVersion")
    dependencies: tuple[Dependency, ...] = ()
    type: str = ""


class ChartFile(BaseModel):
    """A file of the chart as a blob: the .tgz or the .prov."""

    model_config = ConfigDict(frozen=True)

    digest: Digest
    size: int = Field(ge=0)


class ChartArtifact(BaseModel):
    """The config and manifest bytes of one chart version; the layers are its files, unchanged."""

    model_config = ConfigDict(frozen=True)

    config: bytes
    manifest: bytes

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest)

    @property
    def config_digest(self) -> Digest:
        return Digest.of(self.config)


def config_bytes(meta: ChartMetadata) -> bytes:
    """The config blob: Chart.yaml as ``json.Marshal(chart.Metadata)`` writes it."""
    return _go_json(_omit_empty({
        "name": meta.name,
        "home": meta.home,
        "sources": list(meta.sources),
        "version": meta.version,
        "description": meta.description,
        "keywords": list(meta.keywords),
        "maintainers": [_omit_empty({"name": m.name, "email": m.email, "url": m.url})
                        for m in meta.maintainers],
        "icon": meta.icon,
        "apiVersion": meta.api_version,
        "condition": meta.condition,
        "tags": meta.tags,
        "appVersion": meta.app_version,
        "deprecated": meta.deprecated,
        "annotations": dict(sorted(meta.annotations.items())),
        "kubeVersion": meta.kube_version,
        "dependencies": [_dependency(d) for d in meta.dependencies],
        "type": meta.type,
    }))


def manifest_annotations(meta: ChartMetadata, created: datetime | None) -> dict[str, str]:
    """The manifest's annotations, as Helm derives them from the chart. ``created`` is the
    chart's own creation time (Helm would take the clock, which no resync could reproduce)."""
    found: dict[str, str] = {}
    for key, value in ((ANNOTATION_DESCRIPTION, meta.description), (ANNOTATION_TITLE, meta.name),
                       (ANNOTATION_VERSION, meta.version), (ANNOTATION_URL, meta.home),
                       (ANNOTATION_CREATED, _rfc3339(created) if created else ""),
                       (ANNOTATION_SOURCE, meta.sources[0] if meta.sources else ""),
                       (ANNOTATION_AUTHORS, _authors(meta.maintainers))):
        if value.strip():
            found[key] = _escape_non_ascii(value)
    for key, value in meta.annotations.items():
        if key not in _IMMUTABLE_ANNOTATIONS:
            found[key] = _escape_non_ascii(value)
    return dict(sorted(found.items()))


def chart_artifact(meta: ChartMetadata, chart: ChartFile, prov: ChartFile | None = None, *,
                   created: datetime | None = None) -> ChartArtifact:
    """Config and manifest for a chart whose .tgz (and .prov) are already blobs."""
    config = config_bytes(meta)
    layers = [_descriptor(HELM_CHART_CONTENT, chart.digest, chart.size)]
    if prov is not None:
        layers.append(_descriptor(HELM_CHART_PROVENANCE, prov.digest, prov.size))
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(HELM_CONFIG, Digest.of(config), len(config)),
        "layers": layers,
        "annotations": manifest_annotations(meta, created),
    }
    return ChartArtifact(config=config, manifest=_go_json(_omit_empty(document)))


def resource_types_of(manifest: Manifest) -> frozenset[str]:
    """Which of Harbor's resource filter values select this manifest: every manifest is an
    "artifact"; a Helm chart is also a "chart"; an index or a container image config an "image"."""
    config_type = base_type(manifest.config.media_type) if manifest.config is not None else ""
    if config_type == HELM_CONFIG:
        return frozenset({"chart", "artifact"})
    if manifest.is_index or config_type in (OCI_CONFIG, DOCKER_CONFIG):
        return frozenset({"image", "artifact"})
    return frozenset({"artifact"})


# -- Go's JSON, Helm's conventions -----------------------------------------------------------


def _go_json(value: object) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Safe on the whole document: these characters can only occur inside JSON strings.
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return text.encode()


def _omit_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """Go's ``omitempty``: zero values ("", false, empty list or map) are left out."""
    return {k: v for k, v in fields.items() if not _is_zero(v)}


def _is_zero(value: Any) -> bool:
    # Not ``value in (...)``: 0 == False in Python, and a size of 0 is a value.
    return value is None or value is False or value == "" or (isinstance(value, list | dict) and not value)


def _sorted_maps(value: Any) -> Any:
    # Go marshals map[string]interface{} with sorted keys, at every depth.
    if isinstance(value, dict):
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted_maps(v) for v in value]
    return value


def _dependency(d: Dependency) -> dict[str, Any]:
    # name and repository carry no omitempty in Helm's struct: they are always written.
    optional = _omit_empty({"version": d.version})
    tail = _omit_empty({
        "condition": d.condition,
        "tags": list(d.tags),
        "enabled": d.enabled,
        "import-values": _sorted_maps(d.import_values),
        "export-values": _sorted_maps(d.export_values),
        "alias": d.alias,
    })
    return {"name": d.name, **optional, "repository": d.repository, **tail}


def _descriptor(media_type: str, digest: Digest, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(digest), "size": size}


def _authors(maintainers: tuple[Maintainer, ...]) -> str:
    """``name (email), name (email)``, Helm's rendering of the maintainers list."""
    return ", ".join(m.name + (f" ({m.email})" if m.email else "") for m in maintainers)


def _rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339 of the UTC time: whole seconds and a ``Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _escape_non_ascii(value: str) -> str:
    """Helm writes non-ASCII annotation characters as ``\\uXXXX`` text (UTF-16 units), for
    registries that accept ASCII annotations only."""
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if code < 0x80:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)
