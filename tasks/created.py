"""When each tag's image was made, for ``latest: {order: created}`` on a source without an
artifacts API: the ``created`` field of the image's config, read over the distribution API.

That costs a tag two requests (its manifest, then its config blob), an index three: of an index
the first child that is a platform's image is read (an attestation, ``unknown/unknown``, is
passed over), since the children of one index are built together and reading every one would
cost a pair of requests per platform. Tags naming one manifest share its reads. A tag whose
time cannot be known (gone, not an image, no ``created``) gets None and ranks last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from adapters.distribution.client import DistributionClient
from adapters.errors import ContentError, NotFoundError
from adapters.oci import Manifest
from adapters.oci.platform import is_attestation
from tasks.image_config import read_image_config

logger = logging.getLogger(__name__)

# Manifest and config reads in flight at once for one discovery: as many as its tag listings.
CREATED_CONCURRENCY: Final = 16
# Indexes of indexes exist (artifacts), but never deeper than this for an image.
MAX_INDEX_DEPTH: Final = 4


async def created_times(client: DistributionClient, repository: str, tags: Sequence[str],
                        slots: asyncio.Semaphore) -> dict[str, datetime | None]:
    """Each tag's image config ``created``; ``slots`` bounds the requests in flight."""
    manifests = await asyncio.gather(*(_manifest(client, repository, tag, slots) for tag in tags))
    unique = {m.digest: m for m in manifests if m is not None}
    times = await asyncio.gather(*(_created(client, repository, m, slots, 0) for m in unique.values()))
    by_digest = dict(zip(unique, times, strict=True))
    return {tag: by_digest[m.digest] if m is not None else None
            for tag, m in zip(tags, manifests, strict=True)}


async def _manifest(client: DistributionClient, repository: str, ref: str,
                    slots: asyncio.Semaphore) -> Manifest | None:
    try:
        async with slots:
            return await client.get_manifest(repository, ref)
    except (NotFoundError, ContentError) as exc:
        # Gone since listing, or not something regflow copies: the plan reports it.
        logger.debug("%s:%s has no readable manifest for its created time: %s", repository, ref, exc)
        return None


async def _created(client: DistributionClient, repository: str, manifest: Manifest,
                   slots: asyncio.Semaphore, depth: int) -> datetime | None:
    if manifest.is_index:
        child = next((c for c in manifest.children if not is_attestation(c)), None)
        if child is None or depth >= MAX_INDEX_DEPTH:
            return None
        found = await _manifest(client, repository, child.digest, slots)
        return None if found is None else await _created(client, repository, found, slots, depth + 1)
    try:
        async with slots:
            config = await read_image_config(client, repository, manifest)
    except (NotFoundError, ContentError) as exc:
        logger.debug("%s: config of %s unreadable for its created time: %s", repository, manifest.digest, exc)
        return None
    return config.created if config is not None else None
