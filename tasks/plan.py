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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from adapters import Adapter
from adapters.distribution.client import ManifestHead
from adapters.errors import ConfigError, ContentError, NotFoundError, ReplicationError
from adapters.oci import Digest, Manifest, is_image_manifest, is_index, validate_repository
from adapters.oci.platform import is_attestation, matches_any, parse_platforms, platform_text
from policies.models import Policy
from policies.namespace import check_path_rule, replace_namespace
from tasks.discover import RepositoryTags, is_digest_reference
from tasks.models import TagOutcome, TagPlan, TransferSpec
from tasks.platforms import Fetch, image_platform, no_match_reason, other_platform_reason, select
from tasks.referrers import Referrer, ReferrerLookup, follow, subject_tags, subjects_of
from tasks.round_trips import widened

# HEAD requests in flight at once while planning (source and target together).
PLAN_CONCURRENCY = 16
# Repositories planned at once: enough to keep PLAN_CONCURRENCY requests in flight, few enough
# that each is done in a few round trips. With all of them at once, every repository's source
# requests queued behind every other's target HEADs: the first transfer of a 50-repository copy
# began 0.39 s into planning, 0.22 s with this (most of it the Prefect server's slots).
PLAN_REPOSITORIES_AT_ONCE = 8
# Far registries: PLAN_CONCURRENCY widens with the round trip (tasks/round_trips.py) up to this;
# HEADs cost a registry little, and over HTTP/2 they share one connection. Not higher: with
# about twice as many streams the HEAD waves were CPU-bound on both ends and a 40 ms resync got
# slower, not faster (docs/performance.md, "Plan width").
MAX_PLAN_CONCURRENCY = 64
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
    # Also a dry run's: the platforms of the images a copy would move (those of the policy's
    # platforms, or the index's all), and why none would when the policy's platforms leave it.
    platforms: list[str] = []
    platform_skip: str = ""
    manifest: Manifest | None = Field(default=None, exclude=True, repr=False)
    subject: Digest | None = None  # a referrer's subject (tasks/referrers.py)
    # What the target's tag names when the plan found it identical to the source index as the
    # policy rewrites it for its platforms (platform_index: rewrite).
    pushed_digest: Digest | None = None


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
                        manifest=t.manifest, subject=t.subject)
                for t in self.tags if t.action in ("copy", "overwrite")]
        if not work or self.error:
            return None
        return TransferSpec(source_repository=self.source_repository,
                            target_repository=self.target_repository, tags=work,
                            override=policy.override, copy_by_chunk=policy.copy_by_chunk,
                            new_on_target=self.new_on_target, platforms=policy.platforms,
                            platform_index=policy.platform_index)

    @property
    def new_on_target(self) -> bool:
        """No tag of it is on the target yet: its child manifests are not there either, most
        likely, so the transfer skips asking (a wrong guess re-sends a manifest, harmlessly)."""
        return bool(self.tags) and all(t.target_digest is None for t in self.tags)

    def settled(self) -> list[TagOutcome]:
        """The tags the plan already decided: reported, never transferred."""
        reasons = {"identical": "identical on target", "kept": "target differs and override is off"}
        return [TagOutcome(tag=t.tag, digest=t.digest, pushed_digest=t.pushed_digest, status="skipped",
                           reason=reasons[t.action])
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


async def prefetch_target_tokens(target: Adapter, policy: Policy, repositories: Iterable[str]) -> None:
    """The target's tokens for where these source repositories land, in a few fetches, under
    way when this returns (a request waits for its own batch); a name the policy cannot map is
    left to the plan, which says why."""
    found = [RepositoryTags(repository=name, tags=[]) for name in repositories]
    await target.client.start_prefetch_tokens(
        (r.target_repository for r in named(found, policy, target).repositories if not r.error), "pull,push")


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
    # Every target repository's token up front, in a few fetches (the source's came with
    # discover; the flow asks for the target's already then, and these find them fresh); then
    # as many requests in flight as the registries' round trip asks for.
    await prefetch_target_tokens(target, policy, (r.repository for r in found))
    width = widened(PLAN_CONCURRENCY, MAX_PLAN_CONCURRENCY, source.client, target.client)
    slots = asyncio.Semaphore(width)
    repositories = asyncio.Semaphore(PLAN_REPOSITORIES_AT_ONCE * width // PLAN_CONCURRENCY)

    async def plan_tag(src_repo: str, tag: str, existing: ManifestHead | None) -> PlannedTag:
        # When the target lacks the tag the transfer needs the manifest itself, so a GET here
        # replaces the HEAD and the transfer's own GET.
        manifest, head_type = None, ""
        ref = str(pinned) if pins and (pinned := pins.get(src_repo, {}).get(tag)) else tag
        async with slots:
            if existing is None:
                head_digest, manifest = await _source_manifest(source, src_repo, ref)
            else:
                head = await source.client.head_manifest(src_repo, ref)
                head_digest, head_type = (head.digest, head.media_type) if head else (None, "")
        if head_digest is None:
            raise ReplicationError(f"{src_repo}:{tag} ({ref}) vanished from the source" if ref != tag
                                   else f"{src_repo}:{tag} vanished from the source")
        action: Action = "copy"
        pushed = None
        if existing is not None:
            action = "identical" if existing.digest == head_digest else (
                "overwrite" if policy.override else "kept")
        if (existing is not None and action != "identical" and policy.platforms
                and policy.platform_index == "rewrite" and not is_image_manifest(head_type)):
            # The target may hold the index as this policy rewrites it: then the tag is identical.
            manifest, pushed = await _as_rewritten(source_get(src_repo), head_digest, policy)
            if pushed == existing.digest:
                action = "identical"
        measured = Measured(None, [])
        if measure and action in ("copy", "overwrite"):
            async with slots:
                measured = await _manifest_bytes(source, src_repo, head_digest, manifest, policy)
        keep = manifest if manifest is not None and len(manifest.raw) <= KEEP_MANIFEST_BYTES else None
        return PlannedTag(tag=tag, digest=head_digest, action=action, bytes=measured.bytes, manifest=keep,
                          target_digest=existing.digest if existing else None,
                          platforms=measured.platforms, platform_skip=measured.skip,
                          pushed_digest=pushed if action == "identical" else None)

    def source_get(src_repo: str) -> Fetch:
        async def get(ref: Digest) -> Manifest:
            async with slots:
                return await source.client.get_manifest(src_repo, ref)
        return get

    async def plan_repository(i: int, item: RepositoryTags) -> tuple[int, PlannedRepository]:
        async with repositories:
            return i, await plan_one(item)

    async def plan_one(item: RepositoryTags) -> PlannedRepository:
        repository = _named(item, policy, target)
        if repository.error:
            return repository
        names = subject_tags(item.tags, policy.referrers)
        try:
            # The target first, for every tag: what it lacks decides what to ask the source.
            existing = await _on_target(target, slots, repository.target_repository, names)
            tags = list(await asyncio.gather(*(plan_tag(item.repository, t, existing[t]) for t in names)))
            if policy.referrers:
                # One a retry named by its digest is planned once, as the referrer it is.
                referrers = await plan_referrers(item, repository.target_repository, tags)
                tags = [t for t in tags if t.tag not in {r.tag for r in referrers}] + referrers
        except ReplicationError as exc:
            # Planning failures surface as a failed task for this repository, not a dead run.
            repository.error = str(exc)
            repository.error_class, repository.error_transient = type(exc).__name__, exc.transient
            return repository
        repository.tags = tags
        return repository

    async def plan_referrers(item: RepositoryTags, target_repository: str,
                             subjects: list[PlannedTag]) -> list[PlannedTag]:
        """The referrers of the tags planned to be on the target, as planned tags of their own."""
        pool = item.referrer_tags
        if pool is None:  # the tag list was not read: read it once, here
            async with slots:
                pool = await source.client.list_tags(item.repository)
        lookup = ReferrerLookup(source.client, target.client, item.repository, target_repository,
                                [*pool, *item.tags], slots)
        on_target = {t.digest for t in subjects if t.digest and t.action != "kept"}
        # A fallback-schema tag the filters selected brings its subject's referrers when that
        # subject is on the target already; without it, it would be an orphan.
        for subject in subjects_of(item.tags) - on_target:
            if await lookup.on_target(subject):
                on_target.add(subject)

        async def plan_referrer(referrer: Referrer) -> PlannedTag:
            if referrer.tag is not None:
                async with slots:
                    existing = await target.client.head_manifest(target_repository, referrer.tag)
                planned = await plan_tag(item.repository, referrer.tag, existing)
                return planned.model_copy(update={"subject": referrer.subject})
            assert referrer.digest is not None
            size = None
            if measure and not referrer.on_target:
                async with slots:
                    size = (await _manifest_bytes(source, item.repository, referrer.digest)).bytes
            return PlannedTag(tag=str(referrer.digest), digest=referrer.digest, subject=referrer.subject,
                              target_digest=referrer.digest if referrer.on_target else None, bytes=size,
                              action="identical" if referrer.on_target else "copy")

        return await follow(lookup, on_target, plan_referrer, lambda t: t.digest)

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
    """What each tag points at on the target; None where the target lacks it. A digest (an
    untagged manifest, a referrer) is always asked by digest: a target without a single tag may
    still hold it untagged, so "no tag at all" says nothing about it."""
    async def head(tag: str) -> ManifestHead | None:
        async with slots:
            return await target.client.head_manifest(repository, tag)

    async def heads(refs: list[str]) -> dict[str, ManifestHead | None]:
        return dict(zip(refs, await asyncio.gather(*map(head, refs)), strict=True))

    async def any_tag() -> bool:
        async with slots:
            try:
                return await target.client.has_tags(repository)
            except ReplicationError:
                return True  # a registry that will not list tags (or not now): ask tag by tag

    names = [t for t in tags if not is_digest_reference(t)]
    digests = [t for t in tags if is_digest_reference(t)]
    if len(names) <= ASK_FOR_ANY_TAG_ABOVE:
        return await heads(tags)
    first = await head(names[0])
    if first is None and not await any_tag():
        return dict.fromkeys(names) | await heads(digests)
    return {names[0]: first} | await heads(names[1:] + digests)


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


async def _as_rewritten(get: Fetch, digest: Digest, policy: Policy) -> tuple[Manifest | None, Digest | None]:
    """The source manifest and the digest a ``platform_index: rewrite`` policy pushes for it
    (nested indexes read as the transfer reads them, at most MAX_INDEX_DEPTH deep); no digest
    when none can be said here (unreadable, or nothing of the platforms in it): the transfer
    decides such a tag and says why."""
    try:
        manifest = await get(digest)
        if not manifest.is_index:
            return manifest, digest
        selection = await select(manifest, parse_platforms(policy.platforms), "rewrite", get)
    except (NotFoundError, ContentError):
        return None, None
    return manifest, None if selection.nothing_chosen else selection.pushed.digest


class Measured(NamedTuple):
    """What a dry run says a tag's copy would move."""

    bytes: int | None
    platforms: list[str]
    skip: str = ""  # why nothing would: the policy's platforms leave the tag behind


async def _manifest_bytes(source: Adapter, repository: str, digest: Digest,
                          fetched: Manifest | None = None, policy: Policy | None = None) -> Measured:
    """Bytes a copy would move at most: blobs of the manifest (and its children), counted once,
    only of the policy's platforms when it names some. ``fetched`` is the top manifest when the
    plan has read it already."""
    async def get(ref: Digest) -> Manifest:
        if fetched is not None and fetched.digest == ref:
            return fetched
        return await source.client.get_manifest(repository, ref)

    specs = parse_platforms(policy.platforms) if policy is not None else ()
    top = await get(digest)
    if not specs or not top.is_index:
        platforms: set[str] = set()
        if specs:
            found = await image_platform(source.client, repository, top)
            if found is not None and not matches_any(specs, found):
                return Measured(0, [], other_platform_reason(specs, found))
            platforms.update([platform_text(found)] if found is not None else [])
        return Measured(await _blob_bytes(get, [digest], platforms), sorted(platforms))
    assert policy is not None
    selection = await select(top, specs, policy.platform_index, get)
    if selection.nothing_chosen:
        return Measured(0, [], no_match_reason(specs, selection))
    total, images, pending = 0, [], [selection]
    while pending:
        level = pending.pop()
        total += level.pushed.size
        images += [c.digest for c in level.kept if c.digest not in level.nested]
        pending.extend(level.nested.values())
    return Measured(total + await _blob_bytes(get, images, set()), list(selection.platforms))


async def _blob_bytes(get: Callable[[Digest], Awaitable[Manifest]], roots: list[Digest],
                      platforms: set[str]) -> int:
    """Sizes of the manifests from ``roots`` down and of their blobs, each once; the platforms
    of the images listed on the way go into ``platforms``."""
    seen: set[str] = set()
    total = 0
    pending = list(roots)
    while pending:
        manifest = await get(pending.pop())
        total += manifest.size
        pending.extend(c.digest for c in manifest.children)
        platforms.update(platform_text(c) for c in manifest.children
                         if c.platform is not None and not is_attestation(c) and not is_index(c.media_type))
        for blob in manifest.blobs:
            if blob.digest not in seen:
                seen.add(blob.digest)
                total += blob.size
    return total
