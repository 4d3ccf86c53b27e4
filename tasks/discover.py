"""Step 2 and 3: list what the source holds and keep what the policy's filters select.

A policy whose name filters are literal (``team-a/app`` or ``{a,b}``) never walks the catalog.
An event-triggered run names its single resource and skips listing altogether.

A source that lists artifacts (Harbor) is asked for them instead of its tag list: label and
resource filters apply there, and each selected artifact brings its accessories (cosign
signatures, attestations, SBOMs) under cosign's tags, whatever the tag filters say, so that
``cosign verify`` on the target finds them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pydantic import BaseModel

from adapters import Adapter
from adapters.base import ArtifactLister
from adapters.errors import ConfigError, NotFoundError
from adapters.oci import Digest
from policies.filters import (
    has_label_filters,
    literal_names,
    select_artifacts,
    select_repositories,
    select_tags,
)
from policies.models import Policy

logger = logging.getLogger(__name__)

# Tag listings in flight at once: one request each, cheap for the registry, and 8 keeps a
# 2,000-repository catalog to seconds without flooding a small registry.
LIST_CONCURRENCY = 16


class Resource(BaseModel):
    """One repository (and optionally one tag or digest) an event or a user named."""

    repository: str
    tag: str | None = None
    digest: Digest | None = None


class RepositoryTags(BaseModel):
    repository: str
    tags: list[str]


async def discover(source: Adapter, policy: Policy,
                   only: Sequence[Resource] | None = None) -> list[RepositoryTags]:
    names = list(dict.fromkeys(r.repository for r in only)) if only is not None else \
        literal_names(policy.filters)
    listed = [name async for name in source.list_repositories(names)]
    repositories = select_repositories(listed, policy.filters)
    # Tags an event named, per repository; a resource without a tag means the whole repository.
    whole = {r.repository for r in only or () if r.tag is None}
    wanted_tags: dict[str, list[str]] = {}
    for r in only or ():
        if r.tag is not None and r.repository not in whole:
            wanted_tags.setdefault(r.repository, []).append(r.tag)
    lister = source if isinstance(source, ArtifactLister) else None
    if lister is None and has_label_filters(policy.filters):
        # Store validation refuses this already; a label filter must never silently select all.
        raise ConfigError(f"{source!r} has no labels, so the policy's label filters cannot apply",
                          field="filters")
    slots = asyncio.Semaphore(LIST_CONCURRENCY)

    async def tags_of(repository: str) -> RepositoryTags:
        wanted = wanted_tags.get(repository)
        async with slots:
            try:
                if lister is not None:
                    tags = await _artifact_tags(source, lister, repository, policy, wanted)
                elif wanted is not None:
                    tags = select_tags(dict.fromkeys(wanted), policy.filters)
                else:
                    tags = select_tags(await source.list_tags(repository), policy.filters)
            except NotFoundError:
                tags = []  # a literal name that does not exist on the source
        return RepositoryTags(repository=repository, tags=tags)

    found = await asyncio.gather(*(tags_of(r) for r in sorted(set(repositories))))
    return [f for f in found if f.tags]


async def _artifact_tags(source: Adapter, lister: ArtifactLister, repository: str, policy: Policy,
                         wanted: list[str] | None) -> list[str]:
    """The selected artifacts' tags, then their accessories' cosign tags.

    An accessory is taken only when the source holds it under that tag (cosign pushes it so;
    Harbor's own SBOMs and notation signatures are untagged and found only by referrers):
    the plan reads every tag from the source.
    """
    tags: list[str] = []
    attached: list[str] = []
    for artifact in select_artifacts(await lister.list_artifacts(repository), policy.filters):
        chosen = [t for t in artifact.tags if wanted is None or t in wanted]
        tags.extend(chosen)
        # An event may name the accessory itself (cosign signs after the push).
        attached.extend(tag for a in artifact.accessories if (tag := a.cosign_tag) is not None
                        and (chosen or (wanted is not None and tag in wanted)))
    if attached:
        on_source = set(await source.list_tags(repository))
        missing = [t for t in attached if t not in on_source]
        if missing:
            logger.info("%s: %d accessories have no tag on the source and stay behind: %s",
                        repository, len(missing), ", ".join(missing[:5]))
        tags.extend(t for t in attached if t in on_source)
    return list(dict.fromkeys(tags))
