"""Step 4: pin every tag to a digest, map source names to target names, and set aside what is
already identical on the target, so that transfers only see real work.

A repository whose every tag is identical gets no transfer task at all: a no-change resync of
a large registry costs two HEADs per tag and nothing else. A tag the target lacks costs a HEAD
there and a GET of its manifest here, which the transfer then uses instead of fetching it again;
a repository the target has no tag of at all costs two requests there, not one per tag.
The plan comes out one repository at a time, as each is known, so the flow can start copying
the first while it plans the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Literal

from pydantic import BaseModel, Field

from adapters import Adapter
from adapters.distribution.client import ManifestHead
from adapters.errors import ConfigError, ContentError, NotFoundError, ReplicationError
from adapters.oci import Digest, Manifest, validate_repository
from policies.models import Policy
from policies.namespace import check_path_rule, replace_namespace
from tasks.discover import RepositoryTags
from tasks.models import TagOutcome, TagPlan, TransferSpec

# HEAD requests in flight at once while planning (source and target together).
PLAN_CONCURRENCY = 16
# Repositories planned at once: enough to keep PLAN_CONCURRENCY requests in flight, few enough
# that each is done in a few round trips. With all of them at once, every repository's source
# requests queued behind every other's target HEADs: the first transfer of a 50-repository copy
# began 0.39 s into planning, 0.22 s with this (most of it the Prefect server's slots).
PLAN_REPOSITORIES_AT_ONCE = 8
# A manifest the plan fetched rides along to the transfer when it is at most this big (images'
# are 0.5-4 KiB): a full copy of 2,000 repositories x 5 tags then holds ~40 MiB of them, and a
# rare huge index is simply fetched again.
KEEP_MANIFEST_BYTES = 16 * 1024
# A repository with more tags than this whose first tag the target lacks: ask the target once
# whether the repository has any tag before a HEAD per tag. New on the target, it then costs
# two requests there instead of one per tag; otherwise one more request than the HEADs alone.
ASK_FOR_ANY_TAG_ABOVE = 2

Action = Literal["copy", "overwrite", "identical", "kept"]
# A retry's pins: repository -> tag -> the digest the first execution planned for it.
Pins = Mapping[str, Mapping[str, Digest]]


class PlannedTag(BaseModel):
    tag: str
    digest: Digest | None
    target_digest: Digest | None
    action: Action
    bytes: int | None = None  # filled only for a dry run, which reads the manifests
    manifest: Manifest | None = Field(default=None, exclude=True, repr=False)


class PlannedRepository(BaseModel):
    source_repository: str
    target_repository: str
    tags: list[PlannedTag]
    error: str = ""
    # Why planning this repository failed, for the failed-images report (tasks/report.py).
    error_class: str = ""
    error_transient: bool = False

    def spec(self, policy: Policy) -> TransferSpec | None:
        work = [TagPlan(tag=t.tag, digest=t.digest, target_digest=t.target_digest, checked_target=True,
                        manifest=t.manifest)
                for t in self.tags if t.action in ("copy", "overwrite")]
        if not work or self.error:
            return None
        return TransferSpec(source_repository=self.source_repository,
                            target_repository=self.target_repository, tags=work,
                            override=policy.override, copy_by_chunk=policy.copy_by_chunk,
                            new_on_target=self.new_on_target)

    @property
    def new_on_target(self) -> bool:
        """No tag of it is on the target yet: its child manifests are not there either, most
        likely, so the transfer skips asking (a wrong guess re-sends a manifest, harmlessly)."""
        return bool(self.tags) and all(t.target_digest is None for t in self.tags)

    def settled(self) -> list[TagOutcome]:
        """The tags the plan already decided: reported, never transferred."""
        reasons = {"identical": "identical on target", "kept": "target differs and override is off"}
        return [TagOutcome(tag=t.tag, digest=t.digest, status="skipped", reason=reasons[t.action])
                for t in self.tags if t.action in reasons]


class Plan(BaseModel):
    repositories: list[PlannedRepository]

    def specs(self, policy: Policy) -> list[TransferSpec]:
        return [s for r in self.repositories if (s := r.spec(policy)) is not None]


def target_name(repository: str, policy: Policy, target: Adapter) -> str:
    name = replace_namespace(repository, policy.dest_namespace, policy.dest_namespace_replace_count)
    validate_repository(name)
    check_path_rule(name, target.info.min_path_components, target.info.max_path_components)
    return name


def named(found: list[RepositoryTags], policy: Policy, target: Adapter) -> Plan:
    """Where each repository lands, before any request: enough to prepare the target."""
    return Plan(repositories=[_named(item, policy, target) for item in found])


def _named(item: RepositoryTags, policy: Policy, target: Adapter) -> PlannedRepository:
    try:
        return PlannedRepository(source_repository=item.repository,
                                 target_repository=target_name(item.repository, policy, target), tags=[])
    except ConfigError as exc:
        return PlannedRepository(source_repository=item.repository, target_repository="", tags=[],
                                 error=str(exc), error_class=type(exc).__name__)


async def make_plan(source: Adapter, target: Adapter, policy: Policy, found: list[RepositoryTags], *,
                    measure: bool = False, pins: Pins | None = None) -> Plan:
    planned: dict[int, PlannedRepository] = {}
    async for i, repository in plan_each(source, target, policy, found, measure=measure, pins=pins):
        planned[i] = repository
    return Plan(repositories=[planned[i] for i in range(len(found))])


async def plan_each(source: Adapter, target: Adapter, policy: Policy, found: list[RepositoryTags], *,
                    measure: bool = False, pins: Pins | None = None,
                    ) -> AsyncIterator[tuple[int, PlannedRepository]]:
    """Each repository's plan with its index in ``found``, in the order they complete.

    A tag in ``pins`` is read from the source by that digest, not by its name: a retry copies
    what the first execution planned even if the tag has moved since."""
    slots = asyncio.Semaphore(PLAN_CONCURRENCY)
    repositories = asyncio.Semaphore(PLAN_REPOSITORIES_AT_ONCE)

    async def plan_tag(src_repo: str, tag: str, existing: ManifestHead | None) -> PlannedTag:
        # When the target lacks the tag the transfer needs the manifest itself, so a GET here
        # replaces the HEAD and the transfer's own GET.
        manifest = None
        ref = str(pinned) if pins and (pinned := pins.get(src_repo, {}).get(tag)) else tag
        async with slots:
            if existing is None:
                head_digest, manifest = await _source_manifest(source, src_repo, ref)
            else:
                head = await source.client.head_manifest(src_repo, ref)
                head_digest = head.digest if head else None
        if head_digest is None:
            raise ReplicationError(f"{src_repo}:{tag} ({ref}) vanished from the source" if ref != tag
                                   else f"{src_repo}:{tag} vanished from the source")
        action: Action = "copy"
        if existing is not None:
            action = "identical" if existing.digest == head_digest else (
                "overwrite" if policy.override else "kept")
        size = None
        if measure and action in ("copy", "overwrite"):
            async with slots:
                size = await _manifest_bytes(source, src_repo, head_digest, manifest)
        keep = manifest if manifest is not None and len(manifest.raw) <= KEEP_MANIFEST_BYTES else None
        return PlannedTag(tag=tag, digest=head_digest, action=action, bytes=size, manifest=keep,
                          target_digest=existing.digest if existing else None)

    async def plan_repository(i: int, item: RepositoryTags) -> tuple[int, PlannedRepository]:
        async with repositories:
            return i, await plan_one(item)

    async def plan_one(item: RepositoryTags) -> PlannedRepository:
        repository = _named(item, policy, target)
        if repository.error:
            return repository
        try:
            # The target first, for every tag: what it lacks decides what to ask the source.
            existing = await _on_target(target, slots, repository.target_repository, item.tags)
            tags = await asyncio.gather(*(plan_tag(item.repository, t, existing[t]) for t in item.tags))
        except ReplicationError as exc:
            # Planning failures surface as a failed task for this repository, not a dead run.
            repository.error = str(exc)
            repository.error_class, repository.error_transient = type(exc).__name__, exc.transient
            return repository
        repository.tags = list(tags)
        return repository

    pending = [asyncio.ensure_future(plan_repository(i, item)) for i, item in enumerate(found)]
    try:
        for next_done in asyncio.as_completed(pending):
            yield await next_done
    finally:
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _on_target(target: Adapter, slots: asyncio.Semaphore, repository: str,
                     tags: list[str]) -> dict[str, ManifestHead | None]:
    """What each tag points at on the target; None where the target lacks it."""
    async def head(tag: str) -> ManifestHead | None:
        async with slots:
            return await target.client.head_manifest(repository, tag)

    async def any_tag() -> bool:
        async with slots:
            try:
                return await target.client.has_tags(repository)
            except ReplicationError:
                return True  # a registry that will not list tags (or not now): ask tag by tag

    if len(tags) <= ASK_FOR_ANY_TAG_ABOVE:
        return dict(zip(tags, await asyncio.gather(*map(head, tags)), strict=True))
    first = await head(tags[0])
    if first is None and not await any_tag():
        return dict.fromkeys(tags)
    rest = await asyncio.gather(*map(head, tags[1:]))
    return {tags[0]: first, **dict(zip(tags[1:], rest, strict=True))}


async def _source_manifest(source: Adapter, repository: str,
                           tag: str) -> tuple[Digest | None, Manifest | None]:
    """The tag's digest and manifest; a manifest regflow does not copy (schema1, too large, not
    what it claims) still gets its digest, so the transfer fails that tag alone, with the reason."""
    try:
        manifest = await source.client.get_manifest(repository, tag)
    except NotFoundError:
        return None, None
    except ContentError:
        head = await source.client.head_manifest(repository, tag)
        return (head.digest if head else None), None
    return manifest.digest, manifest


async def _manifest_bytes(source: Adapter, repository: str, digest: Digest,
                          fetched: Manifest | None = None) -> int:
    """Bytes a copy would move at most: blobs of the manifest (and its children), counted once.
    ``fetched`` is the top manifest when the plan has read it already."""
    seen: set[str] = set()
    total = 0
    pending = [digest]
    while pending:
        ref = pending.pop()
        manifest = (fetched if fetched is not None and fetched.digest == ref
                    else await source.client.get_manifest(repository, ref))
        total += manifest.size
        pending.extend(c.digest for c in manifest.children)
        for blob in manifest.blobs:
            if blob.digest not in seen:
                seen.add(blob.digest)
                total += blob.size
    return total
