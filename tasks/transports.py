"""Image locations in skopeo's transport syntax, as ``regflow copy`` takes them:

    docker://HOST/REPOSITORY[:TAG|@DIGEST]   a registry (no HOST: Docker Hub, as skopeo)
    oci:DIR[:TAG]                            an OCI image layout directory
    oci-archive:FILE[:TAG]                   a tar of one

The path ends at the first ':' after the transport, as in skopeo, so it cannot hold one. A TAG
is a tag (the ``org.opencontainers.image.ref.name`` of the image in the layout); skopeo also
takes other reference names there, regflow does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from adapters.errors import ConfigError, InvalidReferenceError
from adapters.oci import Digest, Reference, validate_tag

# skopeo's registry for references without one; its adapter maps single names to library/.
DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

Transport = Literal["docker", "oci", "oci-archive"]
TRANSPORTS = ("docker://", "oci:", "oci-archive:")


class ImageLocation(BaseModel):
    model_config = ConfigDict(frozen=True)

    transport: Transport
    text: str  # as the user wrote it, for messages
    host: str = ""  # docker: host[:port]
    repository: str = ""  # docker: the repository on that registry
    path: Path | None = None  # oci, oci-archive: the directory or file
    tag: str | None = None
    digest: Digest | None = None

    @property
    def is_layout(self) -> bool:
        return self.transport != "docker"

    @property
    def reference(self) -> str | None:
        """What names the image at this location: a digest, a tag, or None (a layout's only
        image as a source; an unnamed entry as a destination)."""
        if self.digest is not None:
            return self.digest
        if self.tag is not None:
            return self.tag
        return DEFAULT_TAG if self.transport == "docker" else None


def parse_location(text: str) -> ImageLocation:
    """One SRC or DST argument; a ConfigError saying what is wrong otherwise."""
    try:
        if text.startswith("docker://"):
            return _docker(text)
        for transport in ("oci-archive", "oci"):
            if text.startswith(f"{transport}:"):
                return _layout(text, transport)
    except InvalidReferenceError as exc:
        raise ConfigError(f"{text!r}: {exc}") from None
    raise ConfigError(f"{text!r}: give a transport: {', '.join(f'{t}...' for t in TRANSPORTS)}")


def _docker(text: str) -> ImageLocation:
    reference = Reference.parse(text.removeprefix("docker://"))
    if reference.tag is not None and reference.digest is not None:
        # skopeo refuses both too: which of the two should win is ambiguous.
        raise ConfigError(f"{text!r}: give a tag or a digest, not both")
    return ImageLocation(transport="docker", text=text, host=reference.registry or DEFAULT_REGISTRY,
                         repository=reference.repository, tag=reference.tag, digest=reference.digest)


def _layout(text: str, transport: Literal["oci", "oci-archive"]) -> ImageLocation:
    path, _, tag = text.removeprefix(f"{transport}:").partition(":")
    if not path:
        what = "DIR" if transport == "oci" else "FILE"
        raise ConfigError(f"{text!r}: {transport}:{what} or {transport}:{what}:TAG needs a path")
    return ImageLocation(transport=transport, text=text, path=Path(path).expanduser().absolute(),
                         tag=validate_tag(tag) if tag else None)
