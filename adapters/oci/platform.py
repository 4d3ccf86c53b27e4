"""Platforms as users name them, ``os/architecture[/variant]`` or ``os/*``, and which of an
index's descriptors they select.

One implementation for ``regflow copy --platform`` and a policy's ``platforms``. Names are
compared lower-case, and the spellings ``uname -m`` and distributions use (x86_64, aarch64,
armhf, ...) read as the OCI names, as containerd's platform parser does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Self

from pydantic import BaseModel, ConfigDict

from adapters.errors import ConfigError
from adapters.oci.manifest import Descriptor, Platform

ANY_ARCHITECTURE: Final = "*"
# BuildKit's marks on the provenance/SBOM manifests it adds to an index: the type, and the
# digest of the image each describes. Their platform is unknown/unknown.
REFERENCE_TYPE: Final = "vnd.docker.reference.type"
ATTESTATION_MANIFEST: Final = "attestation-manifest"
REFERENCE_DIGEST: Final = "vnd.docker.reference.digest"
_UNKNOWN: Final = "unknown"
# One element of a platform: what OCI's values use (linux, amd64, ppc64le, v7, ...), bounded so
# that a pasted mistake cannot become a long error line.
_PART_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# Other names of OCI architectures, with the variant each implies.
_ARCHITECTURE_ALIASES: Final[dict[str, tuple[str, str | None]]] = {
    "x86_64": ("amd64", None), "x86-64": ("amd64", None), "aarch64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armhf": ("arm", "v7"), "armv6l": ("arm", "v6"), "armel": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None),
}
# arm64's only variant is v8: an index may name it or leave it out.
_DEFAULT_VARIANTS: Final[dict[str, str]] = {"arm64": "v8"}
_FORM: Final = "is not OS/ARCH, OS/ARCH/VARIANT or OS/*, e.g. linux/arm64"


class PlatformSpec(BaseModel):
    """A platform to select; ``architecture`` ``*`` is any architecture of ``os``."""

    model_config = ConfigDict(frozen=True)

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str, *, field: str | None = "platform") -> Self:
        """``os/arch``, ``os/arch/variant`` or ``os/*``; ConfigError (one line) otherwise."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(_PART_RE.fullmatch(p) or p == ANY_ARCHITECTURE for p in parts):
            raise ConfigError(f"platform {text!r} {_FORM}", field=field)
        os, architecture = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else None
        if ANY_ARCHITECTURE in (os, variant) or (architecture == ANY_ARCHITECTURE and variant):
            raise ConfigError(f"platform {text!r}: only the architecture may be '*', and then alone "
                              "(os/*)", field=field)
        return cls.of_machine(architecture, os=os, variant=variant)

    @classmethod
    def of_machine(cls, machine: str, *, os: str = "linux", variant: str | None = None) -> Self:
        """The platform of an architecture as ``uname -m`` or a distribution names it."""
        architecture, implied = _ARCHITECTURE_ALIASES.get(machine.lower(), (machine.lower(), None))
        return cls(os=os, architecture=architecture, variant=variant or implied)

    def matches(self, found: Platform | Descriptor | None) -> bool:
        """Whether a descriptor (or its ``platform``) is of this platform; no platform never is."""
        if isinstance(found, Descriptor):
            found = found.platform
        if found is None or found.os.lower() != self.os:
            return False
        architecture = found.architecture.lower()
        if self.architecture == ANY_ARCHITECTURE:
            return True
        if architecture != self.architecture:
            return False
        if self.variant is None:
            return True
        return (found.variant or _DEFAULT_VARIANTS.get(architecture, "")).lower() == self.variant


def parse_platforms(texts: Iterable[str], *, field: str | None = "platforms") -> tuple[PlatformSpec, ...]:
    """Every spec of a list, in order, each parsed once; the first bad one raises."""
    specs: list[PlatformSpec] = []
    for text in texts:
        spec = PlatformSpec.parse(text, field=field)
        if spec not in specs:
            specs.append(spec)
    return tuple(specs)


def matches_any(specs: Iterable[PlatformSpec], found: Platform | Descriptor | None) -> bool:
    return any(spec.matches(found) for spec in specs)


def platform_text(found: Platform | Descriptor | None) -> str:
    """``os/arch[/variant]`` of a descriptor or platform; ``unknown`` when it has none."""
    if isinstance(found, Descriptor):
        found = found.platform
    if found is None:
        return "unknown"
    return "/".join(p for p in (found.os, found.architecture, found.variant) if p)


def is_attestation(child: Descriptor) -> bool:
    """An attestation manifest of an index: annotated as BuildKit does, or of the platform
    unknown/unknown that builders give those and nothing else. No image of a platform."""
    if (child.annotations or {}).get(REFERENCE_TYPE) == ATTESTATION_MANIFEST:
        return True
    found = child.platform
    return found is not None and found.os == _UNKNOWN and found.architecture == _UNKNOWN


def described_image(attestation: Descriptor) -> str | None:
    """The digest of the image an attestation describes, as its annotation names it."""
    return (attestation.annotations or {}).get(REFERENCE_DIGEST)
