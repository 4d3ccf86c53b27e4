"""Copy one repository's tags from a source to a target (Harbor's "task").

Per tag: find the source digest (pinned at plan time, or one GET), HEAD the target tag (same
digest → skip; different and no override → skip with the reason), copy children first (index →
child manifests by digest → blobs), and push the manifest bytes exactly as pulled, last. A tag
that fails leaves no manifest behind on the target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable

from adapters.distribution.client import DistributionClient
from adapters.errors import CancelledReplication, ContentError, RegistryError, ReplicationError, is_transient
from adapters.oci import Descriptor, Manifest, is_foreign_layer
from adapters.oci.platform import parse_platforms
from tasks.blobs import BlobCopier
from tasks.models import TagOutcome, TagPlan, TransferResult, TransferSpec
from tasks.platforms import MANIFEST_BLOB_UNKNOWN, Selection, choose, sparse_index_refused
from tasks.referrers import list_on_target, push_order, subject_missing

# An index whose children are indexes again is legal; a loop of them is not. Real images nest
# at most two deep (index → manifest), artifacts a little more.
MAX_MANIFEST_DEPTH = 8
# Tags of one repository copied at once. Tags mostly share layers, so the second tag waits on
# the first one's upload of a shared blob and then mounts it; the gain is in overlapping the
# round trips of manifests and mounts.
TAG_CONCURRENCY = 4


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
    slots = asyncio.Semaphore(TAG_CONCURRENCY)
    outcomes: dict[int, TagOutcome] = {}

    async def in_turn(plans: list[tuple[int, TagPlan]]) -> None:
        for i, plan in plans:
            async with slots:
                if blobs.stop.is_set:
                    outcomes[i] = TagOutcome(tag=plan.tag, digest=plan.digest, status="stopped",
                                             reason=blobs.stop.reason)
                elif missing := subject_missing(plan, spec.tags, outcomes):
                    outcomes[i] = TagOutcome(tag=plan.tag, digest=plan.digest, status="skipped",
                                             reason=missing)
                else:
                    outcomes[i] = await copier.copy_tag(plan)

    # Tags naming one digest (``latest`` and ``1.2``) go one after the other: distribution
    # rewrites a manifest's link files in place on every PUT, and a concurrent PUT that reads
    # them meanwhile fails with MANIFEST_BLOB_UNKNOWN (seen in the benchmark). copy_tag turns
    # every replication error into an outcome, so gather loses nothing.
    # Referrers go after their subject, turn by turn: `cosign verify` on the target must never
    # meet a signature whose image is not there yet.
    turns = push_order(spec.tags)
    for turn in sorted(set(turns)):
        groups: dict[str, list[tuple[int, TagPlan]]] = {}
        for i, plan in enumerate(spec.tags):
            key = str(plan.digest) if plan.digest else f"tag:{plan.tag}"
            if turns[i] == turn:
                groups.setdefault(key, []).append((i, plan))
        await asyncio.gather(*(in_turn(g) for g in groups.values()))
    await list_on_target(target, spec.target_repository, spec.tags, outcomes)
    for i in range(len(spec.tags)):
        result.tags.append(outcomes[i])
        result.bytes += outcomes[i].bytes
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
        self.platforms = parse_platforms(spec.platforms)
        self._present: set[str] = set()  # manifest digests known to be on the target repo
        self._children: dict[str, asyncio.Future[int]] = {}  # child manifests being copied
        # The target refused an index some of whose children it lacks (platform_index: keep):
        # the next such tag fails before sending anything.
        self._sparse_refused = False

    async def copy_tag(self, plan: TagPlan) -> TagOutcome:
        digest = plan.digest
        try:
            manifest = plan.manifest  # fetched by the plan, or None
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
            selection: Selection | None = None
            if self.platforms:
                # The platforms decide what goes under the tag, so they come before the target's.
                manifest = manifest or await self.source.get_manifest(self.src_repo, digest)
                chosen = await self._chosen(manifest)
                if isinstance(chosen, str):
                    return TagOutcome(tag=plan.tag, digest=digest, status="skipped", reason=chosen)
                selection = chosen
            if selection is not None and existing == selection.pushed.digest:
                # The reason as for any identical tag: per-tag tables leave those out.
                return TagOutcome(tag=plan.tag, digest=digest, pushed_digest=existing, status="skipped",
                                  reason="identical on target")
            if existing is not None and not self.spec.override:
                return TagOutcome(tag=plan.tag, digest=digest, status="skipped",
                                  reason=f"target has {existing} and override is off")
            if manifest is None:
                manifest = await self.source.get_manifest(self.src_repo, digest)
            pushed = selection.pushed if selection is not None else manifest
            if selection is not None:
                sent = await self._copy_selected(selection, depth=0)
                self.blobs.stop.check()
                await self._put_index(plan.tag, selection)
            else:
                sent = await self._copy_contents(manifest, depth=0)
                self.blobs.stop.check()
                await self.blobs.put_manifest(self.dst_repo, plan.tag, manifest)
            self._present.add(pushed.digest)
        except CancelledReplication as exc:
            return TagOutcome(tag=plan.tag, digest=digest, status="stopped", reason=str(exc))
        except ReplicationError as exc:
            return TagOutcome(tag=plan.tag, digest=digest, status="failed",
                              reason=f"{type(exc).__name__}: {exc}", transient=is_transient(exc))
        return TagOutcome(tag=plan.tag, digest=digest, status="copied", bytes=sent,
                          pushed_digest=pushed.digest if pushed.digest != digest else None,
                          reason=self._narrowed(selection))

    async def _chosen(self, manifest: Manifest) -> Selection | str | None:
        """The selection of an index for the policy's platforms, None for an image of one of
        them (or of none: an artifact), or why the tag stays behind."""
        chosen = await choose(self.source, self.src_repo, manifest, self.platforms, self.spec.platform_index,
                              lambda d: self.source.get_manifest(self.src_repo, d))
        if (isinstance(chosen, Selection) and self._sparse_refused and not chosen.rewritten
                and _sparse(chosen)):
            raise sparse_index_refused()  # the target refused one such index already
        return chosen

    def _narrowed(self, selection: Selection | None) -> str:
        """The copied outcome's reason when the tag's index travelled in part."""
        if selection is None or not _sparse(selection):
            return ""
        wanted = ", ".join(selection.platforms)
        if selection.rewritten:
            return f"index rewritten for {wanted}: {selection.pushed.digest}"
        return f"only {wanted} copied; the source index pushed as is (other platforms absent)"

    async def _put_index(self, ref: str, selection: Selection) -> None:
        try:
            await self.blobs.put_manifest(self.dst_repo, ref, selection.pushed)
        except RegistryError as exc:
            if selection.rewritten or not _sparse(selection) or MANIFEST_BLOB_UNKNOWN not in exc.codes:
                raise
            self._sparse_refused = True
            raise sparse_index_refused() from exc

    async def _copy_selected(self, selection: Selection, depth: int) -> int:
        """The kept children of an index, a nested index with its own selection."""
        if depth > MAX_MANIFEST_DEPTH:
            raise ContentError(f"manifests nest deeper than {MAX_MANIFEST_DEPTH} levels")
        return await _all(self._copy_child(c, depth + 1, selection.nested.get(c.digest))
                          for c in selection.kept)

    async def _copy_contents(self, manifest: Manifest, depth: int) -> int:
        """Everything the manifest points at, so that pushing it next cannot fail for a missing
        reference."""
        if depth > MAX_MANIFEST_DEPTH:
            raise ContentError(f"manifests nest deeper than {MAX_MANIFEST_DEPTH} levels")
        if manifest.is_index:
            return await _all(self._copy_child(c, depth + 1) for c in manifest.children)
        wanted = [b for b in manifest.blobs if not is_foreign_layer(b.media_type)]
        return await _all(self.blobs.ensure(self.src_repo, self.dst_repo, b, chunked=self.spec.copy_by_chunk)
                          for b in wanted)

    async def _copy_child(self, child: Descriptor, depth: int, selection: Selection | None = None) -> int:
        """Copy a child manifest once: two indexes (or two tags of one index) that share it
        wait for the first copy instead of PUTting the same manifest at the same time. A nested
        index narrowed to the policy's platforms comes with its ``selection``."""
        digest = selection.pushed.digest if selection is not None else child.digest
        if digest in self._present:
            return 0
        first = self._children.get(digest)
        if first is not None:
            await asyncio.shield(first)  # its failure is ours too: the child is not there
            return 0
        copying = asyncio.ensure_future(self._place_child(child, depth, selection))
        self._children[digest] = copying
        return await copying

    async def _place_child(self, child: Descriptor, depth: int, selection: Selection | None) -> int:
        digest = selection.pushed.digest if selection is not None else child.digest
        # A repository none of whose tags was on the target (new_on_target) holds none of the
        # children either, most likely: a HEAD per child would be wasted.
        if (not self.spec.new_on_target
                and await self.target.head_manifest(self.dst_repo, digest) is not None):
            self._present.add(digest)
            return 0
        if selection is not None:
            sent = await self._copy_selected(selection, depth)
            self.blobs.stop.check()
            await self._put_index(digest, selection)
            self._present.add(digest)
            return sent
        manifest = await self.source.get_manifest(self.src_repo, child.digest)
        if manifest.size != child.size:
            raise ContentError(f"child manifest {child.digest} is {manifest.size} bytes, "
                               f"the index says {child.size}")
        sent = await self._copy_contents(manifest, depth)
        self.blobs.stop.check()
        await self.blobs.put_manifest(self.dst_repo, child.digest, manifest)
        self._present.add(child.digest)
        return sent


def _sparse(selection: Selection) -> bool:
    """Some child of the index (or of a nested one) stays behind."""
    return bool(selection.dropped) or any(_sparse(s) for s in selection.nested.values())


async def _all(jobs: Iterable[Awaitable[int]]) -> int:
    """Run ``jobs`` together and sum their bytes. Every job runs to its end (a half-copied
    sibling is not abandoned mid-stream); then a stop is reported first, else the first failure."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in sorted(errors, key=lambda e: not isinstance(e, CancelledReplication)):
        raise error
    return sum(r for r in results if isinstance(r, int))
