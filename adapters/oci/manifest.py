"""Manifests and descriptors: what a registry serves under ``/manifests/``, parsed but kept raw.

A manifest's digest is the hash of the exact bytes the registry served, so those bytes are
what we push; the parsed fields only tell us which blobs and children to copy first.
"""

from __future__ import annotations

import json
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.errors import ContentError, ManifestTooLargeError, UnsupportedMediaTypeError
from adapters.oci import mediatypes
from adapters.oci.digest import Digest, DigestVerifier

# distribution refuses to read a manifest body over 4 MiB (its maxManifestBodySize), so no
# registry built on it can serve or accept a larger one; the cap also bounds what we buffer.
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024

# Longest excerpt of untrusted text (bodies, media types) put into an error message.
_MAX_REASON: Final = 200

# Content-Types that say nothing about the manifest kind; some registries send them anyway.
_GENERIC_CONTENT_TYPES: Final = frozenset({"", "application/json", "application/octet-stream", "text/plain"})


def _short(text: str, limit: int = _MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Platform(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    architecture: str
    os: str
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: tuple[str, ...] | None = Field(default=None, alias="os.features")
    variant: str | None = None
    features: tuple[str, ...] | None = None


class Descriptor(BaseModel):
    """A pointer to content: its media type, digest and size, plus optional metadata."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    media_type: str = Field(alias="mediaType")
    digest: Digest
    # strict: a size of "12" or 12.5 in a manifest is corrupt content, not something to coerce.
    size: int = Field(ge=0, strict=True)
    urls: tuple[str, ...] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")

    def __hash__(self) -> int:
        # The generated hash would fail on the annotations dict; descriptors that compare
        # equal always share these three fields, so hashing them alone stays consistent.
        return hash((self.media_type, self.digest, self.size))


class Manifest(BaseModel):
    """A parsed manifest that keeps the exact bytes it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    raw: bytes = Field(repr=False)
    media_type: str
    digest: Digest
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @model_validator(mode="after")
    def _check_digest(self) -> Self:
        if self.digest != Digest.of(self.raw):
            raise ValueError("digest is not the sha256 of raw")
        return self

    @property
    def is_index(self) -> bool:
        return mediatypes.is_index(self.media_type)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """The blobs this manifest needs in the repository, config first."""
        return (self.config, *self.layers) if self.config is not None else self.layers

    @property
    def size(self) -> int:
        return len(self.raw)


class _ImageBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")


class _IndexBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")


_SCHEMA1_REFUSAL: Final = (
    "Docker schema1 manifests are not copied; "
    "re-push the image with a current Docker or another OCI tool to convert it"
)


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        # Decoded by hand: manifests are UTF-8, and json.loads(bytes) would also accept UTF-16/32.
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ContentError(_short(f"manifest is not valid JSON: {exc}")) from None
    if not isinstance(document, dict):
        raise ContentError(f"manifest is not a JSON object (got {type(document).__name__})")
    return document


def _media_type(document: dict[str, Any], content_type: str | None) -> str:
    """The body's mediaType, else a meaningful Content-Type, else the kind the keys imply."""
    body_type = document.get("mediaType")
    if body_type is not None:
        if not isinstance(body_type, str):
            raise ContentError("manifest mediaType is not a string")
        return body_type
    header_type = mediatypes.base_type(content_type or "")
    if header_type not in _GENERIC_CONTENT_TYPES:
        return header_type
    # OCI makes mediaType optional, so such bodies are OCI by definition.
    if "manifests" in document:
        return mediatypes.OCI_INDEX
    if "layers" in document and "config" in document:
        return mediatypes.OCI_MANIFEST
    raise ContentError("cannot tell the manifest kind: no mediaType and neither manifests nor layers")


def _validation_reason(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "manifest"
    message = error["msg"].removeprefix("Value error, ")
    return _short(f"invalid manifest: {where}: {message}")


def parse_manifest(
    raw: bytes, content_type: str | None = None, *, expected_digest: Digest | None = None
) -> Manifest:
    """Parse a manifest body, refusing what we cannot copy faithfully.

    ``content_type`` is the response's Content-Type; it is only consulted when the body has
    no ``mediaType``. With ``expected_digest`` (the digest the manifest was fetched by), the
    bytes are also checked against it.

    Raises ManifestTooLargeError, UnsupportedMediaTypeError (schema1, unknown kinds),
    DigestMismatchError, or ContentError for anything malformed: all ContentError.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestTooLargeError(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
    document = _load_object(raw)

    schema_version = document.get("schemaVersion")
    if schema_version == 1 and type(schema_version) is int:
        raise UnsupportedMediaTypeError(_SCHEMA1_REFUSAL)
    media_type = _media_type(document, content_type)
    if mediatypes.is_schema1(media_type):
        raise UnsupportedMediaTypeError(_SCHEMA1_REFUSAL)
    if media_type not in mediatypes.MANIFEST_ACCEPT:
        raise UnsupportedMediaTypeError(
            _short(f"manifest media type {media_type!r} is not one regflow copies")
        )
    # type() not isinstance(): JSON true would pass as 1-valued int otherwise.
    if type(schema_version) is not int or schema_version != 2:
        raise ContentError(_short(f"manifest schemaVersion must be 2, got {schema_version!r}"))

    if expected_digest is not None:
        verifier = DigestVerifier(expected_digest, what="manifest")
        verifier.update(raw)
        verifier.verify()

    # model_construct: _parsed_fields has validated everything, and Manifest's own validator
    # would only hash raw a second time.
    return Manifest.model_construct(
        raw=raw, media_type=media_type, digest=Digest.of(raw), **_parsed_fields(document, media_type)
    )


def _parsed_fields(document: dict[str, Any], media_type: str) -> dict[str, Any]:
    """Manifest's parsed fields, from a body already known to be of ``media_type``."""
    # A body that reads both as an index and as an image is ambiguous: two clients could copy
    # different content under one digest (CVE-2021-41190), so it is refused outright.
    is_index = mediatypes.is_index(media_type)
    if is_index and ("layers" in document or "config" in document):
        raise ContentError("manifest is an index but also has layers or config")
    if not is_index and "manifests" in document:
        raise ContentError("manifest is an image manifest but also has manifests")
    try:
        if is_index:
            index = _IndexBody.model_validate(document)
            return {
                "children": index.manifests,
                "subject": index.subject,
                "artifact_type": index.artifact_type,
            }
        image = _ImageBody.model_validate(document)
    except ValidationError as exc:
        raise ContentError(_validation_reason(exc)) from None
    return {
        "config": image.config,
        "layers": image.layers,
        "subject": image.subject,
        "artifact_type": image.artifact_type,
    }
