"""Step 4: pin every tag to a digest, map source names to target names, and set aside what is
already identical on the target, so that transfers only see real work.

A repository whose every tag is identical gets no transfer task at all: a no-change resync of
a large registry costs two HEADs per tag and nothing else.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel

from adapters import Adapter
from adapters.errors import ConfigError, ReplicationError
from adapters.oci import Digest, validate_repository
from policies.models import Policy
from policies.namespace import check_path_rule, replace_namespace
from tasks.discover import RepositoryTags
from tasks.models import TagOutcome, TagPlan, TransferSpec

# HEAD requests in flight at once while planning (source and target together).
PLAN_CONCURRENCY = 16

Action = Literal["copy", "overwrite", "identical", "kept"]


class PlannedTag(BaseModel):
    tag: str
    digest: Digest | None
    target_digest: Digest | None
    action: Action
    bytes: int | None = None  # filled only for a dry run, which reads the manifests


class PlannedRepository(BaseModel):
    source_repository: str
    target_repository: str
    tags: list[PlannedTag]
    error: str = ""

    def spec(self, policy: Policy) -> TransferSpec | None:
        work = [TagPlan(tag=t.tag, digest=t.digest, target_digest=t.target_digest, checked_target=True)
                for t in self.tags if t.action in ("copy", "overwrite")]
        if not work or self.error:
            return None
        return TransferSpec(source_repository=self.source_repository,
                            target_repository=self.target_repository, tags=work,
                            override=policy.override, copy_by_chunk=policy.copy_by_chunk)

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


async def make_plan(source: Adapter, target: Adapter, policy: Policy, found: list[RepositoryTags], *,
                    measure: bool = False) -> Plan:
    slots = asyncio.Semaphore(PLAN_CONCURRENCY)

    async def plan_tag(src_repo: str, dst_repo: str, tag: str) -> PlannedTag:
        async with slots:
            head = await source.client.head_manifest(src_repo, tag)
        if head is None:
            raise ReplicationError(f"{src_repo}:{tag} vanished from the source")
        async with slots:
            existing = await target.client.head_manifest(dst_repo, tag)
        action: Action = "copy"
        if existing is not None:
            action = "identical" if existing.digest == head.digest else (
                "overwrite" if policy.override else "kept")
        size = None
        if measure and action in ("copy", "overwrite"):
            async with slots:
                size = await _manifest_bytes(source, src_repo, head.digest)
        return PlannedTag(tag=tag, digest=head.digest, action=action, bytes=size,
                          target_digest=existing.digest if existing else None)

    async def plan_repository(item: RepositoryTags) -> PlannedRepository:
        try:
            dst_repo = target_name(item.repository, policy, target)
        except ConfigError as exc:
            return PlannedRepository(source_repository=item.repository, target_repository="",
                                     tags=[], error=str(exc))
        try:
            tags = await asyncio.gather(*(plan_tag(item.repository, dst_repo, t) for t in item.tags))
        except ReplicationError as exc:
            # Planning failures surface as a failed task for this repository, not a dead run.
            return PlannedRepository(source_repository=item.repository, target_repository=dst_repo,
                                     tags=[], error=str(exc))
        return PlannedRepository(source_repository=item.repository, target_repository=dst_repo,
                                 tags=list(tags))

    return Plan(repositories=list(await asyncio.gather(*(plan_repository(i) for i in found))))


async def _manifest_bytes(source: Adapter, repository: str, digest: Digest) -> int:
    """Bytes a copy would move at most: blobs of the manifest (and its children), counted once."""
    seen: set[str] = set()
    total = 0
    pending = [digest]
    while pending:
        manifest = await source.client.get_manifest(repository, pending.pop())
        total += manifest.size
        pending.extend(c.digest for c in manifest.children)
        for blob in manifest.blobs:
            if blob.digest not in seen:
                seen.add(blob.digest)
                total += blob.size
    return total
