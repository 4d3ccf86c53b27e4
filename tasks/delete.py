"""Deletion replicated from the source (event-based, ``replicate_deletion``): the target
manifest is deleted by digest, since distribution refuses deletion by tag and copies are
byte-exact, so the digest is the same on both sides."""

from __future__ import annotations

from pydantic import BaseModel

from adapters import Adapter
from adapters.errors import ConfigError, ReplicationError
from adapters.oci import Digest
from policies.filters import select_repositories, select_tags
from policies.models import Policy
from tasks.discover import Resource
from tasks.models import TagOutcome, TransferResult
from tasks.plan import target_name


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


async def delete_manifest(target: Adapter, spec: DeleteSpec) -> TransferResult:
    label = spec.tag or str(spec.digest)
    result = TransferResult(source_repository=spec.source_repository,
                            target_repository=spec.target_repository)
    try:
        digest = spec.digest
        if digest is None and spec.tag is not None:
            head = await target.client.head_manifest(spec.target_repository, spec.tag)
            digest = head.digest if head is not None else None
        if digest is None:
            outcome = TagOutcome(tag=label, status="skipped", reason="not on target")
        elif await target.client.delete_manifest(spec.target_repository, digest):
            outcome = TagOutcome(tag=label, digest=digest, status="deleted", reason="deleted on source")
        else:
            outcome = TagOutcome(tag=label, digest=digest, status="skipped", reason="not on target")
    except ReplicationError as exc:
        outcome = TagOutcome(tag=label, status="failed", reason=f"{type(exc).__name__}: {exc}",
                             transient=exc.transient)
    result.tags.append(outcome)
    return result
