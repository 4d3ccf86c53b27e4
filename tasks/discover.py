"""Step 2 and 3: list what the source holds and keep what the policy's filters select.

A policy whose name filters are literal (``team-a/app`` or ``{a,b}``) never walks the catalog.
An event-triggered run names its single resource and skips listing altogether.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import BaseModel

from adapters import Adapter
from adapters.errors import NotFoundError
from adapters.oci import Digest
from policies.filters import literal_names, select_repositories, select_tags
from policies.models import Policy

# Tag listings in flight at once: one request each, cheap for the registry, and 8 keeps a
# 2,000-repository catalog to seconds without flooding a small registry.
LIST_CONCURRENCY = 8


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
    slots = asyncio.Semaphore(LIST_CONCURRENCY)

    async def tags_of(repository: str) -> RepositoryTags:
        if repository in wanted_tags:
            tags = list(dict.fromkeys(wanted_tags[repository]))
        else:
            async with slots:
                try:
                    tags = await source.list_tags(repository)
                except NotFoundError:
                    tags = []  # a literal name that does not exist on the source
        return RepositoryTags(repository=repository, tags=select_tags(tags, policy.filters))

    found = await asyncio.gather(*(tags_of(r) for r in sorted(set(repositories))))
    return [f for f in found if f.tags]
