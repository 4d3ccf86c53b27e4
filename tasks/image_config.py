"""Reading an image's config blob from a registry: one GET, no longer than its manifest says,
checked against its digest, within the deadline of a small read. The one reader behind
``platforms`` (tasks/platforms.py) and ``latest: {order: created}`` (tasks/created.py).
"""

from __future__ import annotations

from adapters.bounded import NON_BLOB_DEADLINE_SECONDS, within
from adapters.distribution.client import DistributionClient
from adapters.errors import ContentError
from adapters.oci import DigestVerifier, Manifest
from adapters.oci.image_config import ImageConfig, image_config_of, parse_image_config


async def read_image_config(client: DistributionClient, repository: str,
                            manifest: Manifest) -> ImageConfig | None:
    """The image's config; None when the manifest has no image config to read (an index, an
    artifact). Raises NotFoundError for a config the registry lacks, ContentError for one that
    is not what its digest names or not JSON."""
    config = image_config_of(manifest)
    if config is None:
        return None
    what = f"image config {config.digest} of {repository}"
    raw = bytearray()
    verifier = DigestVerifier(config.digest, what=what)
    async with within(NON_BLOB_DEADLINE_SECONDS, what=what), \
            client.open_blob(repository, config.digest) as stream:
        async for chunk in stream.chunks():
            raw += chunk
            verifier.update(chunk)
            if len(raw) > config.size:
                raise ContentError(f"{what} is longer than the {config.size} bytes its manifest says")
    verifier.verify()
    return parse_image_config(bytes(raw))
