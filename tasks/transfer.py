"""Copy one repository's tags from a source to a target (Harbor's "task").

Per tag: find the source digest (pinned at plan time, or one GET), HEAD the target tag (same
digest → skip; different and no override → skip with the reason), copy children first (index →
child manifests by digest → blobs), and push the manifest bytes exactly as pulled, last. A tag
that fails leaves no manifest behind on the target.
"""

from __future__ import annotations

import asyncio
import time

from adapters.distribution.client import DistributionClient
from adapters.errors import CancelledReplication, ContentError, ReplicationError
from adapters.oci import Descriptor, Manifest, is_foreign_layer
from tasks.blobs import BlobCopier
from tasks.models import TagOutcome, TagPlan, TransferResult, TransferSpec

# An index whose children are indexes again is legal; a loop of them is not. Real images nest
# at most two deep (index → manifest), artifacts a little more.
MAX_MANIFEST_DEPTH = 8


async def transfer_repository(
    source: DistributionClient,
    target: DistributionClient,
    spec: TransferSpec,
    blobs: BlobCopier,
) -> TransferResult:
    started = time.monotonic()
    result = TransferResult(source_repository=spec.source_repository,
                            target_repository=spec.target_repository)
    copier = _RepositoryCopy(source, target, spec, blobs)
    for plan in spec.tags:
        if blobs.stop.is_set:
            result.tags.append(TagOutcome(tag=plan.tag, digest=plan.digest, status="stopped",
                                          reason=blobs.stop.reason))
            continue
        outcome = await copier.copy_tag(plan)
        result.tags.append(outcome)
        result.bytes += outcome.bytes
    result.seconds = round(time.monotonic() - started, 3)
    return result


class _RepositoryCopy:
    def __init__(self, source: DistributionClient, target: DistributionClient, spec: TransferSpec,
                 blobs: BlobCopier) -> None:
        self.source = source
        self.target = target
        self.spec = spec
        self.blobs = blobs
        self.src_repo = spec.source_repository
        self.dst_repo = spec.target_repository
        self._present: set[str] = set()  # manifest digests known to be on the target repo

    async def copy_tag(self, plan: TagPlan) -> TagOutcome:
        digest = plan.digest
        try:
            manifest = None
            if digest is None:
                manifest = await self.source.get_manifest(self.src_repo, plan.tag)
                digest = manifest.digest
            existing = plan.target_digest
            if not plan.checked_target:
                head = await self.target.head_manifest(self.dst_repo, plan.tag)
                existing = head.digest if head is not None else None
            if existing == digest:
                return TagOutcome(tag=plan.tag, digest=digest, status="skipped",
                                  reason="identical on target")
            if existing is not None and not self.spec.override:
                return TagOutcome(tag=plan.tag, digest=digest, status="skipped",
                                  reason=f"target has {existing} and override is off")
            if manifest is None:
                manifest = await self.source.get_manifest(self.src_repo, digest)
            sent = await self._copy_contents(manifest, depth=0)
            self.blobs.stop.check()
            await self.blobs.put_manifest(self.dst_repo, plan.tag, manifest)
            self._present.add(manifest.digest)
        except CancelledReplication as exc:
            return TagOutcome(tag=plan.tag, digest=digest, status="stopped", reason=str(exc))
        except ReplicationError as exc:
            return TagOutcome(tag=plan.tag, digest=digest, status="failed",
                              reason=f"{type(exc).__name__}: {exc}", transient=exc.transient)
        return TagOutcome(tag=plan.tag, digest=digest, status="copied", bytes=sent)

    async def _copy_contents(self, manifest: Manifest, depth: int) -> int:
        """Everything the manifest points at, so that pushing it next cannot fail for a missing
        reference."""
        if depth > MAX_MANIFEST_DEPTH:
            raise ContentError(f"manifests nest deeper than {MAX_MANIFEST_DEPTH} levels")
        if manifest.is_index:
            total = 0
            for child in manifest.children:
                total += await self._copy_child(child, depth + 1)
            return total
        wanted = [b for b in manifest.blobs if not is_foreign_layer(b.media_type)]
        results = await asyncio.gather(*(
            self.blobs.ensure(self.src_repo, self.dst_repo, b, chunked=self.spec.copy_by_chunk)
            for b in wanted), return_exceptions=True)
        # Every blob ran to its end; report a stop first, then the first real failure.
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in sorted(errors, key=lambda e: not isinstance(e, CancelledReplication)):
            raise error
        return sum(r for r in results if isinstance(r, int))

    async def _copy_child(self, child: Descriptor, depth: int) -> int:
        if child.digest in self._present:
            return 0
        if await self.target.head_manifest(self.dst_repo, child.digest) is not None:
            self._present.add(child.digest)
            return 0
        manifest = await self.source.get_manifest(self.src_repo, child.digest)
        if manifest.size != child.size:
            raise ContentError(f"child manifest {child.digest} is {manifest.size} bytes, "
                               f"the index says {child.size}")
        sent = await self._copy_contents(manifest, depth)
        self.blobs.stop.check()
        await self.blobs.put_manifest(self.dst_repo, child.digest, manifest)
        self._present.add(child.digest)
        return sent
