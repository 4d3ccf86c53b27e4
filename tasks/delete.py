"""Deletion replicated from the source (event-based, ``replicate_deletion``), exact: one event
removes at most what the source lost, never a bystander.

For a deleted tag: nothing happens while the source still has the tag (a late or replayed
event). Otherwise the one tag goes, by OCI 1.1 tag deletion where the target does it. Where it
deletes only by digest (CNCF distribution), the manifest goes only when no other tag of the
repository still points at it or, through an index, contains it; else it stays and the outcome
says why. For a manifest deleted by digest: it goes from the target unless the source still
has it. ``delete_tag`` is that one exact tag deletion; the mirror prune (tasks/prune.py) uses it
too.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from pydantic import BaseModel

from adapters import Adapter
from adapters.distribution.client import DistributionClient
from adapters.errors import ConfigError, RegistryError, ReplicationError
from adapters.oci import Digest
from adapters.oci.mediatypes import is_index
from policies.filters import select_repositories, select_tags
from policies.models import Policy
from tasks.discover import Resource
from tasks.models import TagOutcome, TransferResult
from tasks.plan import target_name

# Other tags read (a HEAD each, a GET for an index) before a manifest is deleted by digest: a
# deletion must not cost a crawl of a huge repository. Past it the manifest stays, and the
# outcome says so.
MAX_TAGS_CHECKED = 500
# Answers to a tag deletion that mean "not by tag here": distribution 2.x sends 400 or 405
# (UNSUPPORTED); a 404 for a tag just seen is read the same way, never as "gone".
TAG_DELETE_REFUSED = frozenset({400, 404, 405})
# The outcome of a deletion that found nothing to delete.
NOT_ON_TARGET = "not on target"


class DeleteSpec(BaseModel):
    source_repository: str
    target_repository: str
    tag: str | None
    digest: Digest | None


def delete_specs(resources: list[Resource], policy: Policy, target: Adapter) -> list[DeleteSpec]:
    """The deletions this policy replicates: filters apply as they do to copies."""
    specs = []
    for r in resources:
        if not select_repositories([r.repository], policy.filters):
            continue
        if r.tag is not None and not select_tags([r.tag], policy.filters):
            continue
        try:
            name = target_name(r.repository, policy, target)
        except ConfigError:
            continue  # a name the target could never have held
        specs.append(DeleteSpec(source_repository=r.repository, target_repository=name, tag=r.tag,
                                digest=r.digest))
    return specs


async def delete_manifest(target: Adapter, spec: DeleteSpec, source: Adapter | None = None) -> TransferResult:
    """``source`` is asked first whether it still has what the event says it deleted; without
    it (a caller that cannot reach the source) nothing is deleted."""
    label = spec.tag or str(spec.digest)
    result = TransferResult(source_repository=spec.source_repository,
                            target_repository=spec.target_repository)
    try:
        if source is None:
            outcome = TagOutcome(tag=label, status="skipped",
                                 reason="the source was not asked whether it still has it: nothing deleted")
        elif spec.tag is not None:
            outcome = await _delete_tag(source.client, target, spec, spec.tag)
        elif spec.digest is not None:
            outcome = await _delete_digest(source.client, target.client, spec, spec.digest)
        else:
            outcome = TagOutcome(tag=label, status="skipped", reason="the event names no tag nor digest")
    except ReplicationError as exc:
        outcome = TagOutcome(tag=label, status="failed", reason=f"{type(exc).__name__}: {exc}",
                             transient=exc.transient)
    result.tags.append(outcome)
    return result


async def _delete_tag(source: DistributionClient, target_adapter: Adapter, spec: DeleteSpec,
                      tag: str) -> TagOutcome:
    on_source = await source.head_manifest(spec.source_repository, tag)
    if on_source is not None:
        return TagOutcome(tag=tag, digest=on_source.digest, status="skipped",
                          reason=f"the source still has {tag} (at {on_source.digest})")
    outcome = await delete_tag(target_adapter, spec.target_repository, tag, reason="deleted on source")
    if outcome.digest is None:
        outcome.digest = spec.digest
    return outcome


async def delete_tag(target_adapter: Adapter, repository: str, tag: str, *, reason: str,
                     same_manifest: Collection[str] = (), manifest_stays: str = "") -> TagOutcome:
    """The exact deletion of one target tag, whoever decided it must go (a replicated deletion,
    a mirror prune): the tag alone where the target deletes tags; else its manifest, only when
    no other tag points at it or at an index holding it. ``same_manifest`` names tags that go
    in the same run and point at the same manifest: they do not keep it. ``manifest_stays``
    says why the manifest must not go at all: then only the tag alone may."""
    target = target_adapter.client
    on_target = await target.head_manifest(repository, tag)
    if on_target is None:
        return TagOutcome(tag=tag, status="skipped", reason=NOT_ON_TARGET)
    digest = on_target.digest
    if await _untag(target_adapter, repository, tag):
        return TagOutcome(tag=tag, digest=digest, status="deleted", reason=reason)
    if manifest_stays:
        return TagOutcome(tag=tag, digest=digest, status="skipped",
                          reason=f"kept: {target.host} deletes only by digest, and {manifest_stays}")
    sharing = await other_references(target, repository, digest, besides={tag, *same_manifest})
    if sharing is None:
        return TagOutcome(tag=tag, digest=digest, status="failed", reason=(
            f"not deleted: {target.host} deletes only by digest, and the repository has more than "
            f"{MAX_TAGS_CHECKED} other tags to check for {digest}"))
    if sharing:
        named = ", ".join(sharing[:5]) + (f" and {len(sharing) - 5} more" if len(sharing) > 5 else "")
        return TagOutcome(tag=tag, digest=digest, status="skipped", reason=(
            f"kept: {target.host} deletes only by digest, and {named} still use {digest}"))
    if await target.delete_manifest(repository, digest):
        return TagOutcome(tag=tag, digest=digest, status="deleted",
                          reason=f"{reason} (its manifest, which no other tag uses)")
    return TagOutcome(tag=tag, digest=digest, status="skipped", reason=NOT_ON_TARGET)


async def _delete_digest(source: DistributionClient, target: DistributionClient, spec: DeleteSpec,
                         digest: Digest) -> TagOutcome:
    if await source.head_manifest(spec.source_repository, digest) is not None:
        return TagOutcome(tag=str(digest), digest=digest, status="skipped",
                          reason=f"the source still has {digest}")
    if await target.delete_manifest(spec.target_repository, digest):
        return TagOutcome(tag=str(digest), digest=digest, status="deleted", reason="deleted on source")
    return TagOutcome(tag=str(digest), digest=digest, status="skipped", reason=NOT_ON_TARGET)


async def _untag(target: Adapter, repository: str, tag: str) -> bool:
    """Removes the tag alone, if the target can: through its vendor API where the adapter has
    one (``delete_tag``), else by OCI 1.1 tag deletion (``DELETE /v2/<name>/manifests/<tag>``).
    False when it deletes only by digest."""
    delete_tag = getattr(target, "delete_tag", None) or getattr(target.client, "delete_tag", None)
    try:
        if delete_tag is not None:
            deleted = bool(await delete_tag(repository, tag))
        else:
            # The same request as a deletion by digest, with the tag as its reference.
            deleted = await target.client.delete_manifest(repository, cast(Digest, tag))
    except RegistryError as exc:
        if exc.status in TAG_DELETE_REFUSED or "UNSUPPORTED" in exc.codes:
            return False
        raise
    return deleted


async def other_references(client: DistributionClient, repository: str, digest: Digest, *,
                           besides: Collection[str]) -> list[str] | None:
    """The tags, other than ``besides``, that point at ``digest`` or at an index containing
    it; None when there are more than MAX_TAGS_CHECKED to look at."""
    others = [t for t in await client.list_tags(repository) if t not in besides]
    if len(others) > MAX_TAGS_CHECKED:
        return None
    sharing = []
    for other in others:
        head = await client.head_manifest(repository, other)
        if head is None:
            continue  # deleted meanwhile
        if head.digest == digest:
            sharing.append(other)
        elif is_index(head.media_type):
            index = await client.get_manifest(repository, str(head.digest))
            if any(child.digest == digest for child in index.children):
                sharing.append(f"{other} (an index holding it)")
    return sharing
