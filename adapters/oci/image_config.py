"""An image's config blob, read for the two things regflow asks of it: the platform it was built
for (``platforms``) and when it was made (``latest: {order: created}``). Pure parsing; the
fetching is tasks/image_config.py.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict

from adapters.errors import ContentError
from adapters.oci.created import parse_created
from adapters.oci.manifest import Descriptor, Manifest, Platform
from adapters.oci.mediatypes import DOCKER_CONFIG, OCI_CONFIG

IMAGE_CONFIG_TYPES: Final = frozenset({DOCKER_CONFIG, OCI_CONFIG})
# Image configs are a few KiB, with a long build history a few hundred; a bigger "config" is
# not one worth reading for two fields.
MAX_IMAGE_CONFIG_BYTES: Final = 4 * 1024 * 1024


class ImageConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    # None when the config names no os and architecture (cosign signatures write empty ones).
    platform: Platform | None = None
    # None when it names no time, or one that says nothing (adapters/oci/created.py).
    created: datetime | None = None


def image_config_of(manifest: Manifest) -> Descriptor | None:
    """The manifest's config when it is an image config worth reading; None for an index, an
    artifact (a chart, a signature) or an oversized config."""
    config = manifest.config
    if config is None or config.media_type not in IMAGE_CONFIG_TYPES or config.size > MAX_IMAGE_CONFIG_BYTES:
        return None
    return config


def parse_image_config(raw: bytes) -> ImageConfig:
    """Platform and created time of a config; ContentError when it is not JSON at all. Every
    field is optional: one of the wrong type counts as absent."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ContentError("image config is not valid JSON") from None
    if not isinstance(document, dict):
        return ImageConfig()
    return ImageConfig(platform=_platform(document), created=parse_created(document.get("created")))


def _platform(document: dict[str, object]) -> Platform | None:
    os, architecture = document.get("os"), document.get("architecture")
    if not isinstance(os, str) or not isinstance(architecture, str) or not os or not architecture:
        return None
    variant = document.get("variant")
    return Platform(os=os, architecture=architecture, variant=variant if isinstance(variant, str) else None)
