"""The tags under which registries without the referrers API keep a manifest's referrers.

Two schemas share the ``sha256-<hex>`` prefix (the subject's digest, ``:`` made ``-``):

- OCI distribution 1.1's fallback: the tag ``sha256-<hex>`` holds an OCI index whose
  ``manifests`` are the descriptors of the manifests whose ``subject`` is that digest;
- cosign's own: ``sha256-<hex>.sig`` (signatures), ``.att`` (attestations), ``.sbom``.

Pure values, no I/O: the plan reads these tags, the transfer writes the OCI index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from adapters.errors import ContentError, InvalidReferenceError
from adapters.oci.digest import Digest
from adapters.oci.manifest import Manifest, parse_manifest
from adapters.oci.mediatypes import OCI_INDEX

COSIGN_SUFFIXES: Final[tuple[str, ...]] = (".sig", ".att", ".sbom")
# Tags are at most 128 characters (distribution's tag grammar); the OCI schema truncates there.
MAX_TAG_LENGTH: Final = 128

_SCHEMA_TAG: Final = re.compile(r"(sha256|sha512)-([0-9a-f]{64,121})(\.sig|\.att|\.sbom)?")


@dataclass(frozen=True)
class ReferrerTag:
    """A tag of one of the fallback schemas, read back: whose referrers it holds, and how."""

    subject: Digest
    # "" for the OCI fallback index, else cosign's ".sig", ".att" or ".sbom".
    suffix: str

    @property
    def is_index(self) -> bool:
        return self.suffix == ""


def fallback_tag(subject: Digest) -> str:
    """The OCI 1.1 fallback tag of ``subject``'s referrers index."""
    algorithm, _, hex_part = subject.partition(":")
    return f"{algorithm}-{hex_part}"[:MAX_TAG_LENGTH]


def cosign_tag(subject: Digest, suffix: str) -> str:
    """cosign's tag for ``subject``'s signature (``.sig``), attestation or SBOM."""
    if suffix not in COSIGN_SUFFIXES:
        raise ValueError(f"cosign tags end in one of {COSIGN_SUFFIXES}, not {suffix!r}")
    return fallback_tag(subject) + suffix


def parse_referrer_tag(tag: str) -> ReferrerTag | None:
    """The subject and schema of a fallback-schema tag; None for any other tag (and for a
    sha512 index tag, whose truncated name no longer holds the whole digest)."""
    match = _SCHEMA_TAG.fullmatch(tag)
    if match is None:
        return None
    algorithm, hex_part, suffix = match.group(1), match.group(2), match.group(3) or ""
    try:
        return ReferrerTag(subject=Digest(f"{algorithm}:{hex_part}"), suffix=suffix)
    except InvalidReferenceError:
        return None  # the hex is not a whole digest of that algorithm


def is_referrer_tag(tag: str) -> bool:
    return parse_referrer_tag(tag) is not None


def referrer_descriptor(manifest: Manifest) -> dict[str, Any]:
    """The descriptor of ``manifest`` as a referrers index lists it: its artifactType (or its
    config's media type, as the spec says) and its own annotations."""
    descriptor: dict[str, Any] = {"mediaType": manifest.media_type, "digest": str(manifest.digest),
                                  "size": manifest.size}
    artifact_type = manifest.artifact_type or (manifest.config.media_type if manifest.config else None)
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    annotations = json.loads(manifest.raw).get("annotations")
    if isinstance(annotations, dict) and annotations:
        descriptor["annotations"] = annotations
    return descriptor


def merged_index(existing: Manifest | None, additions: Sequence[dict[str, Any]]) -> Manifest | None:
    """The fallback index ``existing`` (None: there is none yet) with ``additions`` appended,
    or None when it lists every one of them already. Entries already there stay exactly as they
    are, in their order: another writer's referrers are never dropped."""
    if existing is not None and not existing.is_index:
        raise ContentError(f"the referrers tag holds a {existing.media_type}, not an index; left as it is")
    document: dict[str, Any] = (json.loads(existing.raw) if existing is not None
                                else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    listed = {str(c.digest) for c in existing.children} if existing is not None else set()
    new: list[dict[str, Any]] = []
    for descriptor in additions:
        if descriptor["digest"] not in listed:
            listed.add(descriptor["digest"])
            new.append(descriptor)
    if not new:
        return None
    document["manifests"] = [*document.get("manifests", []), *new]
    raw = json.dumps(document, separators=(",", ":")).encode()
    return parse_manifest(raw, OCI_INDEX)
