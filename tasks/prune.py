"""Mirror prune (``prune: true``): after a successful run over the whole policy, delete the
target tags inside the policy's scope that the source no longer has.

Scope: for each source repository the run selected, the target repository it maps to; and,
where the namespace mapping can be undone (``dest_namespace_replace_count`` 0, or -1 without a
namespace) or the name filters are literal, the target repositories of source repositories the
name filters select but the source no longer holds. Inside one, a candidate is a tag that
passes the tag filters, is not among the tags the run selected, and either is gone from the
source or, with ``latest``, is older than the newest N. A fallback-schema tag
(``sha256-<hex>[.sig|.att|.sbom]``) goes only with its subject: when every tag of the subject
goes in this run and no other tag (or index) still holds it. Digests and untagged manifests
are never candidates; with ``untagged: true``, a tag's manifest the source still holds stays.
With label or resource filters, which a target tag cannot be judged by, only tags gone from the
source are candidates.

At most ``prune_limit`` deletions per run: with more candidates nothing is deleted unless the
run is forced. Each deletion is tasks/delete.py's exact tag deletion, never a bystander's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Final

from pydantic import BaseModel

from adapters import Adapter
from adapters.errors import ConfigError, NotFoundError, ReplicationError
from adapters.oci import Digest
from adapters.oci.referrers import parse_referrer_tag
from policies.filters import (
    has_label_filters,
    literal_names,
    resource_types,
    select_repositories,
    select_tags,
)
from policies.models import Policy
from tasks.delete import NOT_ON_TARGET, delete_tag, other_references
from tasks.discover import RepositoryTags
from tasks.models import TagOutcome, TransferResult
from tasks.plan import target_name
from tasks.stop import StopSignal

# Target repositories looked at at once: one tag listing each, a HEAD per candidate.
PRUNE_CONCURRENCY: Final = 16
# Any tag shaped like a referrers fallback-schema tag, whole digest or not: never pruned for
# itself (a truncated sha512 one names no subject, and so is never pruned at all).
FALLBACK_LIKE_RE: Final = re.compile(r"(?:sha256|sha512)-[0-9a-f]+(?:\.sig|\.att|\.sbom)?")


class PruneTag(BaseModel):
    tag: str
    digest: Digest | None = None  # what it pointed at on the target when planned
    reason: str
    # Gone from the source: asked again right before the deletion.
    recheck_source: bool = False
    # A fallback-schema tag: the tags of its subject that go in this run (it goes after them).
    subject_tags: list[str] = []


class PruneRepository(BaseModel):
    sources: list[str]  # more than one when a flattening namespace maps several onto it
    target_repository: str
    tags: list[PruneTag]

    @property
    def source_repository(self) -> str:
        return ", ".join(self.sources)


class PrunePlan(BaseModel):
    limit: int
    forced: bool = False
    # The policy copies untagged artifacts: a manifest the source still holds stays.
    untagged: bool = False
    repositories: list[PruneRepository] = []
    # What the prune could not look at, one line each (shown by --dry-run and in the log).
    notes: list[str] = []

    @property
    def count(self) -> int:
        return sum(len(r.tags) for r in self.repositories)

    @property
    def refused(self) -> str:
        """One line when the limit stops this prune, else empty."""
        if self.count <= self.limit or self.forced:
            return ""
        return (f"prune refused: {self.count} tags to delete, more than prune_limit {self.limit}; "
                "nothing deleted (regflow replicate --force, or the run parameter force_prune, deletes them)")


class PruneReport(BaseModel):
    """What a run's prune step did; ``problem`` fails the execution."""

    plan: PrunePlan | None = None
    results: list[TransferResult] = []
    error: str = ""  # planning failed: nothing deleted

    @property
    def problem(self) -> str:
        if self.error:
            return f"prune failed, nothing deleted: {self.error}"
        return self.plan.refused if self.plan is not None else ""


def can_undo_mapping(policy: Policy) -> bool:
    """Whether a target path names its source path: the namespace is only prefixed (count 0)
    or nothing is changed (-1 without a namespace). Dropping or flattening loses components."""
    count = policy.dest_namespace_replace_count
    return count == 0 or (count < 0 and not policy.dest_namespace.strip("/"))


def source_of(target_repository: str, policy: Policy, target: Adapter) -> str | None:
    """The source repository that lands on ``target_repository``, when the mapping can be
    undone and the name filters select it; else None."""
    if not can_undo_mapping(policy):
        return None
    namespace = policy.dest_namespace.strip("/")
    name = target_repository
    if namespace:
        if not target_repository.startswith(namespace + "/"):
            return None
        name = target_repository[len(namespace) + 1:]
    if not select_repositories([name], policy.filters):
        return None
    try:
        mapped = target_name(name, policy, target)
    except ConfigError:
        return None
    return name if mapped == target_repository else None


def _judged_by_name(policy: Policy) -> bool:
    """Whether the tag filters alone say if a target tag is selected: label and resource
    filters look at the source's artifacts, which a target tag does not show."""
    return not has_label_filters(policy.filters) and resource_types(policy.filters) is None


async def _scope(source: Adapter, target: Adapter, policy: Policy,
                 found: Sequence[RepositoryTags], notes: list[str]) -> dict[str, tuple[list[str], set[str]]]:
    """Target repository -> (its source repositories, the tags the run selected for it)."""
    scope: dict[str, tuple[list[str], set[str]]] = {}

    def add(source_repository: str, tags: Sequence[str]) -> None:
        try:
            name = target_name(source_repository, policy, target)
        except ConfigError:
            return  # never copied there, so nothing of it to prune
        sources, selected = scope.setdefault(name, ([], set()))
        sources.append(source_repository)
        selected.update(tags)

    for item in found:
        add(item.repository, item.tags)
    seen = {item.repository for item in found}
    literal = literal_names(policy.filters)
    if literal is not None:
        for name in literal:
            if name not in seen:
                add(name, [])
    elif can_undo_mapping(policy):
        try:
            async for name in target.list_repositories(None):
                if (origin := source_of(name, policy, target)) is not None and origin not in seen:
                    add(origin, [])
        except ReplicationError as exc:
            notes.append(f"repositories gone from the source not looked for: listing the target's "
                         f"repositories failed: {exc}")
    else:
        notes.append("repositories gone from the source not looked for: dest_namespace_replace_count "
                     f"{policy.dest_namespace_replace_count} cannot be undone from a target path")
    return scope


async def plan_prune(source: Adapter, target: Adapter, policy: Policy, found: Sequence[RepositoryTags], *,
                     force: bool = False) -> PrunePlan:
    """The tags a prune after this selection would delete; reads only. ``found`` is what the
    run selected from the source (tasks/discover.py), for the whole policy."""
    plan = PrunePlan(limit=policy.prune_limit, forced=force, untagged=policy.untagged)
    scope = await _scope(source, target, policy, found, plan.notes)
    slots = asyncio.Semaphore(PRUNE_CONCURRENCY)

    async def one(name: str) -> PruneRepository | None:
        sources, selected = scope[name]
        async with slots:
            return await _plan_repository(source, target, policy, sources, name, selected)

    planned = await asyncio.gather(*(one(name) for name in sorted(scope)))
    plan.repositories = [r for r in planned if r is not None and r.tags]
    return plan


async def _tags_or_none(adapter: Adapter, repository: str) -> list[str]:
    try:
        return await adapter.list_tags(repository)
    except NotFoundError:
        return []


async def _plan_repository(source: Adapter, target: Adapter, policy: Policy, sources: list[str],
                           name: str, selected: set[str]) -> PruneRepository | None:
    on_target = await _tags_or_none(target, name)
    fallback = [t for t in on_target if FALLBACK_LIKE_RE.fullmatch(t)]
    unselected = [t for t in select_tags(on_target, policy.filters)
                  if t not in selected and t not in fallback]
    if not unselected:
        return None
    on_source: set[str] = set()
    for origin in sources:
        on_source.update(await _tags_or_none(source, origin))
    older = f"not among the newest {policy.latest.count}" if policy.latest is not None else ""
    repository = PruneRepository(sources=sources, target_repository=name, tags=[])
    for tag in unselected:
        if tag not in on_source:
            reason, recheck = "gone from the source", True
        elif older and _judged_by_name(policy):
            reason, recheck = older, False
        else:
            continue  # the source has it and the run left it out for a reason prune does not judge
        head = await target.client.head_manifest(name, tag)
        if head is not None:
            repository.tags.append(PruneTag(tag=tag, digest=head.digest, reason=reason,
                                            recheck_source=recheck))
    for tag in fallback:
        if (schema := parse_referrer_tag(tag)) is None:
            continue
        going = [t.tag for t in repository.tags if t.digest == schema.subject]
        if not going:
            continue  # its subject keeps every tag, or has none this prune removes
        others = await other_references(target.client, name, schema.subject, besides={tag, *going})
        if others == []:
            head = await target.client.head_manifest(name, tag)
            repository.tags.append(PruneTag(tag=tag, digest=head.digest if head else None,
                                            reason=f"attached to {', '.join(going)}", subject_tags=going))
    return repository


async def prune(source: Adapter, target: Adapter, plan: PrunePlan,
                stop: StopSignal | None = None) -> list[TransferResult]:
    """Carry out ``plan``; nothing when the limit refuses it. One result per target repository."""
    if plan.refused:
        return []
    results = []
    for repository in plan.repositories:
        result = TransferResult(source_repository=repository.source_repository,
                                target_repository=repository.target_repository)
        result.tags = await _prune_repository(source, target, repository, stop, untagged=plan.untagged)
        results.append(result)
    return results


async def _prune_repository(source: Adapter, target: Adapter, repository: PruneRepository,
                            stop: StopSignal | None, *, untagged: bool) -> list[TagOutcome]:
    outcomes: dict[str, TagOutcome] = {}
    subjects = [t for t in repository.tags if not t.subject_tags]
    # Every question to the source before any deletion: a manifest deleted by digest takes the
    # tags sharing it, so which of them go must be known first.
    held: set[Digest] = set()
    sources = repository.sources
    for t in subjects:
        try:
            back = await _back_on_source(source, sources, t.tag) if t.recheck_source else None
            # An untagged artifact the policy copies is never pruned, even as a tag's manifest.
            if untagged and t.digest is not None and await _back_on_source(source, sources, t.digest):
                held.add(t.digest)
        except ReplicationError as exc:
            outcomes[t.tag] = TagOutcome(tag=t.tag, digest=t.digest, status="failed", transient=exc.transient,
                                         reason=f"not deleted: the source could not be asked: {exc}")
            continue
        if back is not None:
            outcomes[t.tag] = TagOutcome(tag=t.tag, digest=t.digest, status="skipped",
                                         reason=f"kept: the source has {t.tag} again (at {back})")
    going = [t for t in subjects if t.tag not in outcomes]
    for t in going:
        same = [o.tag for o in going if o.digest == t.digest and o.tag != t.tag]
        stays = f"the source still holds {t.digest} (untagged: true copies it)" if t.digest in held else ""
        outcome = await _delete(target, repository.target_repository, t, stop, same, stays)
        gone_with = [s for s in same if s in outcomes and outcomes[s].status == "deleted"]
        if outcome.status == "skipped" and outcome.reason == NOT_ON_TARGET and gone_with:
            outcome = TagOutcome(tag=t.tag, digest=t.digest, status="deleted",
                                 reason=f"pruned: {t.reason} (its manifest went with {gone_with[0]})")
        outcomes[t.tag] = outcome
    for t in repository.tags:
        if not t.subject_tags:
            continue
        kept = [s for s in t.subject_tags if outcomes[s].status != "deleted"]
        outcomes[t.tag] = TagOutcome(tag=t.tag, digest=t.digest, status="skipped",
                                     reason=f"kept: its subject's tag {kept[0]} was not deleted") if kept \
            else await _delete(target, repository.target_repository, t, stop, [], "")
    return [outcomes[t.tag] for t in repository.tags]


async def _back_on_source(source: Adapter, sources: list[str], ref: str) -> Digest | None:
    for origin in sources:
        head = await source.client.head_manifest(origin, ref)
        if head is not None:
            return head.digest
    return None


async def _delete(target: Adapter, repository: str, t: PruneTag, stop: StopSignal | None,
                  same: list[str], manifest_stays: str) -> TagOutcome:
    if stop is not None and stop.is_set:
        return TagOutcome(tag=t.tag, digest=t.digest, status="stopped", reason=f"not deleted: {stop.reason}")
    try:
        return await delete_tag(target, repository, t.tag, reason=f"pruned: {t.reason}", same_manifest=same,
                                manifest_stays=manifest_stays)
    except ReplicationError as exc:
        return TagOutcome(tag=t.tag, digest=t.digest, status="failed", reason=f"{type(exc).__name__}: {exc}",
                          transient=exc.transient)


async def prune_after_run(source: Adapter, target: Adapter, policy: Policy,
                          found: Sequence[RepositoryTags], *, force: bool = False,
                          stop: StopSignal | None = None) -> PruneReport:
    """The flow's prune step: plan, then delete within the limit. A failure to plan (a listing
    refused) deletes nothing and is the report's ``error``."""
    try:
        plan = await plan_prune(source, target, policy, found, force=force)
    except ReplicationError as exc:
        return PruneReport(error=f"{type(exc).__name__}: {exc}")
    return PruneReport(plan=plan, results=await prune(source, target, plan, stop))
