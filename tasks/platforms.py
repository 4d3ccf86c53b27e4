"""Which part of a tag travels when a policy names ``platforms`` (issue 17).

Of an index (a Docker manifest list or an OCI index): the children of a named platform; the
attestation manifests BuildKit adds (``unknown/unknown``, annotated with the digest of the image
they describe) along with that image; nested indexes looked into the same way, and kept when
anything in them is. ``platform_index: keep`` pushes the source index byte for byte (digest and
signatures stay valid, the other platforms' images are absent on the target); ``rewrite`` pushes
a new index listing only what is kept (same media type and other fields, a new digest).

An index none of whose children names a platform is no multi-platform image (a referrers
fallback index, a set of artifacts) and travels whole; in one that does, a child naming none is
of no platform and stays behind. A single image's platform is in its config blob, read only
when the policy names platforms; an image of another platform is skipped with the reason. An
image whose config names no platform (an artifact: a chart, a signature) is no image of another
platform and travels.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.distribution.client import DistributionClient
from adapters.errors import ConfigError, ContentError
from adapters.oci import Descriptor, Digest, Manifest, Platform, is_index, parse_manifest
from adapters.oci.platform import PlatformSpec, described_image, is_attestation, matches_any, platform_text
from tasks.image_config import read_image_config

IndexMode = Literal["keep", "rewrite"]
# As tasks/transfer.py: real images nest at most two deep, artifacts a little more.
MAX_INDEX_DEPTH: Final = 8
# distribution's answer to an index naming a child the repository lacks. 2.x always checks
# every child; 3.x does unless its validation.manifests.indexes.platforms says otherwise.
MANIFEST_BLOB_UNKNOWN: Final = "MANIFEST_BLOB_UNKNOWN"

Fetch = Callable[[Digest], Awaitable[Manifest]]


class Selection(BaseModel):
    """What of one index travels: ``kept`` of its children (as the source lists them), the
    selections of kept nested indexes, and ``pushed``, the bytes that go under its reference."""

    model_config = ConfigDict(frozen=True)

    source: Manifest = Field(repr=False)
    pushed: Manifest = Field(repr=False)
    kept: tuple[Descriptor, ...]
    nested: dict[str, Selection] = {}
    dropped: int = 0
    # Platforms of the images kept and of those in the index, nested ones included.
    platforms: tuple[str, ...] = ()
    offered: tuple[str, ...] = ()

    @property
    def rewritten(self) -> bool:
        return self.pushed.digest != self.source.digest

    @property
    def nothing_chosen(self) -> bool:
        """The index has children and none of them travels: the tag stays behind."""
        return not self.kept and bool(self.source.children)


async def select(index: Manifest, specs: Sequence[PlatformSpec], mode: IndexMode, fetch: Fetch,
                 depth: int = 0) -> Selection:
    """The children of ``index`` that travel for ``specs``; ``fetch`` reads a nested index by
    its digest from the source. Nothing kept: ``kept`` is empty (the caller says why)."""
    if depth > MAX_INDEX_DEPTH:
        raise ContentError(f"indexes nest deeper than {MAX_INDEX_DEPTH} levels")
    if not any(c.platform is not None or is_index(c.media_type) for c in index.children):
        # No image of any platform in it: an artifact index (a referrers fallback tag's, an
        # SBOM set) travels whole.
        return Selection(source=index, pushed=index, kept=index.children)
    kept: dict[int, Descriptor] = {}
    nested: dict[str, Selection] = {}
    platforms: set[str] = set()
    offered: set[str] = set()
    attestations: list[tuple[int, Descriptor]] = []
    for i, child in enumerate(index.children):
        if is_attestation(child):
            attestations.append((i, child))
        elif is_index(child.media_type):
            inner = await select(await _fetched(fetch, child), specs, mode, fetch, depth + 1)
            offered.update(inner.offered)
            if inner.kept:
                kept[i] = child
                nested[child.digest] = inner
                platforms.update(inner.platforms)
        else:
            offered.add(platform_text(child))
            if matches_any(specs, child):
                kept[i] = child
                platforms.add(platform_text(child))
    chosen = {c.digest for c in kept.values()}
    for i, child in attestations:
        if described_image(child) in chosen:
            kept[i] = child
    order = sorted(kept)
    pushed = index
    if mode == "rewrite" and kept and (len(kept) < len(index.children)
                                        or any(s.rewritten for s in nested.values())):
        pushed = _rewritten(index, order, nested)
    return Selection(source=index, pushed=pushed, kept=tuple(kept[i] for i in order), nested=nested,
                     dropped=len(index.children) - len(kept), platforms=tuple(sorted(platforms)),
                     offered=tuple(sorted(offered)))


def no_match_reason(specs: Sequence[PlatformSpec], selection: Selection) -> str:
    offered = ", ".join(selection.offered) or "none"
    return f"no image for platforms {', '.join(map(str, specs))} in the index (it has: {offered})"


def other_platform_reason(specs: Sequence[PlatformSpec], found: Platform) -> str:
    return (f"image is {platform_text(found)}, not one of the policy's platforms "
            f"{', '.join(map(str, specs))}")


def sparse_index_refused() -> ConfigError:
    """platform_index: keep on a target that accepts no index without every child: the tag
    fails (nothing of the index is pushed) rather than change its digest unasked."""
    return ConfigError("the target refuses an index whose other platforms' images it lacks "
                       f"({MANIFEST_BLOB_UNKNOWN}), so the source index cannot be kept byte for byte "
                       "there: set platform_index: rewrite for this policy, or drop platforms",
                       field="platform_index")


async def image_platform(client: DistributionClient, repository: str, manifest: Manifest) -> Platform | None:
    """The platform an image's config names; None for an artifact whose config is no image
    config (or names no os and architecture)."""
    config = await read_image_config(client, repository, manifest)
    return config.platform if config is not None else None


async def choose(client: DistributionClient, repository: str, manifest: Manifest,
                 specs: Sequence[PlatformSpec], mode: IndexMode, fetch: Fetch) -> Selection | str | None:
    """What of a tag travels for ``specs`` (not empty): the selection of an index; None for an
    image of one of them, or of none (an artifact), which travels whole; or, as text, why the
    tag stays behind. ``fetch`` reads nested indexes from the source; ``client`` the config of
    a single image. The plan, the transfer and verification all decide by this."""
    if manifest.is_index:
        selection = await select(manifest, specs, mode, fetch)
        return no_match_reason(specs, selection) if selection.nothing_chosen else selection
    found = await image_platform(client, repository, manifest)
    if found is not None and not matches_any(specs, found):
        return other_platform_reason(specs, found)
    return None


async def _fetched(fetch: Fetch, child: Descriptor) -> Manifest:
    manifest = await fetch(child.digest)
    if manifest.size != child.size:
        raise ContentError(f"child manifest {child.digest} is {manifest.size} bytes, "
                           f"the index says {child.size}")
    return manifest


def _rewritten(index: Manifest, order: list[int], nested: dict[str, Selection]) -> Manifest:
    """The index's JSON listing only children ``order`` (a nested index as rewritten), every
    other field as it was."""
    document: dict[str, Any] = json.loads(index.raw.decode("utf-8"))
    entries = document["manifests"]
    listed = []
    for i in order:
        entry = dict(entries[i])
        inner = nested.get(index.children[i].digest)
        if inner is not None and inner.rewritten:
            entry["digest"], entry["size"] = str(inner.pushed.digest), inner.pushed.size
        listed.append(entry)
    document["manifests"] = listed
    raw = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return parse_manifest(raw, index.media_type)
