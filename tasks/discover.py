"""Step 2 and 3: list what the source holds and keep what the policy's filters select.

A policy whose name filters are literal (``team-a/app`` or ``{a,b}``) never walks the catalog.
An event-triggered run names its single resource and skips listing altogether, unless
``latest`` has to rank the tags it names among the repository's others.

A source that lists artifacts (Harbor) is asked for them instead of its tag list: label and
resource filters apply there, and each selected artifact brings its accessories (cosign
signatures, attestations, SBOMs) under cosign's tags, whatever the tag filters say, so that
``cosign verify`` on the target finds them; with ``referrers: false`` only those the tag
filters select.

After the filters, ``latest`` keeps the newest N tags of each repository (policies/versions.py):
by version, or by the time each image was made (the artifact listing's, else the image config's,
tasks/created.py); with ``referrers``, signature and referrer-index tags are not counted. With
``untagged``, digest-only artifacts of an artifact listing travel too, each under its digest
(``sha256:...``) where a tag would stand: the plan and the transfer address a manifest by digest
as they do by tag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from pydantic import BaseModel

from adapters import Adapter
from adapters.base import ArtifactLister
from adapters.errors import ConfigError, NotFoundError
from adapters.oci import Digest
from adapters.oci.referrers import is_referrer_tag
from policies.filters import (
    has_label_filters,
    literal_names,
    select_artifacts,
    select_repositories,
    select_tags,
)
from policies.models import Latest, Policy
from policies.versions import newest_by_time, newest_by_version
from tasks.created import CREATED_CONCURRENCY, created_times
from tasks.round_trips import widened

logger = logging.getLogger(__name__)

# Tag listings in flight at once: one request each, cheap for the registry; enough to list a
# 2,000-repository catalog in seconds without flooding a small registry.
LIST_CONCURRENCY = 16
# Far registries: the listings go in waves of LIST_CONCURRENCY, a round trip each, before the plan
# can start, so more go at once the longer the source's round trip (tasks/round_trips.py).
MAX_LIST_CONCURRENCY = 64


class Resource(BaseModel):
    """One repository (and optionally one tag or digest) an event or a user named."""

    repository: str
    tag: str | None = None
    digest: Digest | None = None


class RepositoryTags(BaseModel):
    repository: str
    tags: list[str]
    # The source's tags of the referrers' fallback schemas (tasks/referrers.py), from the full
    # tag list; None where that list was not read (an event's tags, an artifact listing).
    referrer_tags: list[str] | None = None


async def discover(source: Adapter, policy: Policy, only: Sequence[Resource] | None = None, *,
                   on_selected: Callable[[list[str]], object] | None = None) -> list[RepositoryTags]:
    """``on_selected`` hears the selected repositories' names as soon as the catalog gives them,
    before their tags are listed (the flow starts the target's token fetches then)."""
    names = list(dict.fromkeys(r.repository for r in only)) if only is not None else \
        literal_names(policy.filters)
    listed = [name async for name in source.list_repositories(names)]
    repositories = select_repositories(listed, policy.filters)
    # A few token fetches, not one each; each tag list waits for its own batch's token only.
    tokens = await source.client.start_prefetch_tokens(repositories, "pull")
    if on_selected is not None:
        on_selected(repositories)
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
    if policy.untagged and lister is None:
        logger.info("policy %s: %r cannot list untagged artifacts (an artifacts API such as "
                    "Harbor's can), so untagged: true copies none from it", policy.name, source)
    slots = asyncio.Semaphore(widened(LIST_CONCURRENCY, MAX_LIST_CONCURRENCY, source.client))
    reads = asyncio.Semaphore(CREATED_CONCURRENCY)
    latest = policy.latest

    async def tags_of(repository: str) -> RepositoryTags:
        wanted = wanted_tags.get(repository)
        # A digest a retry names was selected by the first execution's discovery: it is pinned.
        pinned = [ref for ref in wanted or () if is_digest_reference(ref)]
        named = None if wanted is None else [ref for ref in wanted if not is_digest_reference(ref)]
        every: list[str] | None = None
        async with slots:
            try:
                if named == []:
                    tags = []  # only digests a retry pinned
                elif lister is not None:
                    tags = await _artifact_tags(source, lister, repository, policy, named)
                elif named is not None and latest is None:
                    tags = select_tags(dict.fromkeys(named), policy.filters)
                else:
                    # latest ranks an event's tags among all of the repository's.
                    tags = select_tags(every := await source.list_tags(repository), policy.filters)
            except NotFoundError:
                tags = []  # a literal name that does not exist on the source
        if latest is not None and lister is None and tags:
            # A fallback-schema tag (a signature's) is no image of its own: not worth its reads.
            times = await created_times(source.client, repository,
                                        [t for t in tags if not is_referrer_tag(t)], reads) \
                if latest.order == "created" else {}
            newest = keep_newest(latest, tags, times, referrers=policy.referrers)
            # A signature an event names (cosign signs after the push) is no image to rank: the
            # plan takes it only when its subject is on the target.
            tags = newest if named is None else [
                t for t in tags if t in named and (t in newest or (policy.referrers and is_referrer_tag(t)))]
        tags += [ref for ref in dict.fromkeys(pinned) if ref not in tags]
        return RepositoryTags(repository=repository, tags=tags,
                              referrer_tags=every and [t for t in every if is_referrer_tag(t)])

    found = await asyncio.gather(*(tags_of(r) for r in sorted(set(repositories))))
    await tokens  # ended already unless a batch's repositories had no tag to list
    return [f for f in found if f.tags]


def is_digest_reference(ref: str) -> bool:
    """Whether a tag-list entry is a digest-only manifest's digest: a tag never holds ':'."""
    return ":" in ref


def keep_newest(latest: Latest, tags: list[str], created: Mapping[str, datetime | None], *,
                referrers: bool = False) -> list[str]:
    """The tags ``latest`` keeps, in their given order. By version, tags that are no version
    are dropped; by time, ``created`` holds each tag's (None: unknown, ranked last).

    With ``referrers``, a fallback-schema tag (``sha256-<hex>[.sig|.att|.sbom]``) is no image:
    it is neither counted (signed after its image, it would rank newest) nor kept. The kept
    tags' referrers travel anyway (the plan finds them, tasks/referrers.py); an older image's
    stay behind with it, as any filter leaves them."""
    ranked = [t for t in tags if not is_referrer_tag(t)] if referrers else tags
    if latest.order == "semver":
        kept = set(newest_by_version(ranked, latest.count))
    else:
        kept = set(newest_by_time({t: created.get(t) for t in ranked}, latest.count))
    return [t for t in tags if t in kept]


async def _artifact_tags(source: Adapter, lister: ArtifactLister, repository: str, policy: Policy,
                         wanted: list[str] | None) -> list[str]:
    """The selected artifacts' tags (the newest of them with ``latest``, each artifact's time
    its listing's), then their accessories' cosign tags, then with ``untagged`` the digests of
    the selected artifacts without a tag.

    With ``referrers: false`` an accessory's tag is taken only when the tag filters select it.
    An accessory is taken only when the source holds it under that tag (cosign pushes it so;
    Harbor's own SBOMs and notation signatures are untagged and found only by referrers):
    the plan reads every tag from the source. An accessory is never taken as an untagged
    artifact of its own: it travels with its subject or not at all.
    """
    artifacts = await lister.list_artifacts(repository)
    selected = select_artifacts(artifacts, policy.filters, untagged=policy.untagged)
    accessories = {a.digest for artifact in artifacts for a in artifact.accessories}
    times = {t: a.created for a in selected for t in a.tags}
    kept = set(keep_newest(policy.latest, list(times), times, referrers=policy.referrers)
               if policy.latest else times)
    tags: list[str] = []
    untagged: list[str] = []
    attached: list[str] = []
    for artifact in selected:
        # An event or a retry names its tags: untagged artifacts travel with whole-repository runs.
        digest_only = not artifact.tags and wanted is None and artifact.digest not in accessories
        if digest_only:
            untagged.append(str(artifact.digest))
        elif not any(t in kept for t in artifact.tags):
            continue
        chosen = [t for t in artifact.tags if t in kept and (wanted is None or t in wanted)]
        tags.extend(chosen)
        # An event may name the accessory itself (cosign signs after the push). With referrers
        # off an accessory's tag is a tag like any other: the tag filters decide.
        attached.extend(tag for a in artifact.accessories if (tag := a.cosign_tag) is not None
                        and (chosen or digest_only or (wanted is not None and tag in wanted))
                        and (policy.referrers or select_tags([tag], policy.filters)))
    if attached:
        on_source = set(await source.list_tags(repository))
        missing = [t for t in attached if t not in on_source]
        if missing:
            logger.info("%s: %d accessories have no tag on the source and stay behind: %s",
                        repository, len(missing), ", ".join(missing[:5]))
        tags.extend(t for t in attached if t in on_source)
    return list(dict.fromkeys(tags)) + untagged
