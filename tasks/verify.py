"""Does the target really hold what the policy selects? (Harbor #22644: executions that
"succeeded" while the target had lost blobs.)

For every tag the policy selects on the source (discovered and filtered exactly as a replication
run does): the target tag must exist and point at the source's digest, and everything the target
manifest references must be there: child manifests of an index (fetched by digest and checked in
turn) and every blob by HEAD, foreign (non-distributable) layers excepted, as the copy skips them.

A policy naming ``platforms`` expects on the target what its replication pushes, decided by the
same code (tasks/platforms.py ``choose``): a tag the platforms leave behind is not expected at
all; an index is expected at the digest pushed for it (the source's with ``platform_index:
keep``, the rewritten index's with ``rewrite``), and only its kept children are looked into.
That costs a GET of the source manifest per distinct digest, of nested indexes, and of a single
image's config. A source manifest or config that cannot be read is checked as without platforms.

Read-only and cheap: two HEADs per tag, one GET per distinct manifest, one HEAD per distinct blob
per target repository, however many tags share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Literal, TypeVar

from pydantic import BaseModel

from adapters import Adapter
from adapters.errors import ConfigError, ContentError, NotFoundError
from adapters.oci import Digest, Manifest, is_foreign_layer
from adapters.oci.platform import parse_platforms
from policies.models import Policy
from tasks.discover import RepositoryTags, Resource, discover
from tasks.plan import target_name
from tasks.platforms import Selection, choose

# Requests in flight at once, source and target together. Every request is a HEAD or a small
# manifest GET, so the registry's request handling, not bandwidth, is the limit: this is the
# planning step's budget (PLAN_CONCURRENCY), which a small registry answers without queueing.
VERIFY_CONCURRENCY = 16

ProblemKind = Literal["missing-tag", "digest-differs", "missing-blob", "missing-manifest"]
T = TypeVar("T")


class Problem(BaseModel):
    repository: str  # on the source
    target: str  # the target repository ("" when the name cannot exist on the target)
    tag: str
    kind: ProblemKind
    detail: str
    # What is wrong or absent: the missing blob or manifest, or the digest the tag should have.
    digest: Digest | None = None


class VerifyReport(BaseModel):
    ok: bool
    checked_tags: int
    checked_blobs: int  # distinct (target repository, blob) pairs asked for
    problems: list[Problem] = []
    error: str = ""  # set when verification could not finish (a registry down, credentials refused)

    def summary(self, limit: int) -> str:
        """One line: what was checked, or the count and the first ``limit`` problems."""
        if self.error:
            return f"verification could not finish: {self.error}"
        if self.ok:
            return f"verified {self.checked_tags} tags and {self.checked_blobs} blobs on the target"
        named = "; ".join(f"{p.target or p.repository}:{p.tag} {p.kind} {p.detail}"
                          for p in self.problems[:limit])
        more = f" (+{len(self.problems) - limit} more)" if len(self.problems) > limit else ""
        return f"verification found {len(self.problems)} problem(s): {named}{more}"


async def verify_policy(source: Adapter, target: Adapter, policy: Policy, *,
                        found: list[RepositoryTags] | None = None,
                        only: Sequence[Resource] | None = None) -> VerifyReport:
    """Check every tag the policy selects. ``found`` reuses a run's own discovery; ``only``
    narrows discovery as an event does. Registry failures (not absences) raise ReplicationError."""
    if found is None:
        found = await discover(source, policy, only)
    check = _Checker(source, target, policy)
    try:
        async with asyncio.TaskGroup() as group:
            check.group = group
            runs = []
            for item in found:
                dst_repo = _target_or_error(item.repository, policy, target)
                runs += [group.create_task(check.tag(item.repository, dst_repo, t)) for t in item.tags]
    except BaseExceptionGroup as failures:  # the first failure cancelled the rest: report it
        raise _first(failures) from None
    checked = [problems for run in runs if (problems := run.result()) is not None]
    problems = [p for tag_problems in checked for p in tag_problems]
    return VerifyReport(ok=not problems, checked_tags=len(checked), checked_blobs=len(check.blobs),
                        problems=problems)


def _target_or_error(repository: str, policy: Policy, target: Adapter) -> str | ConfigError:
    try:
        return target_name(repository, policy, target)
    except ConfigError as exc:
        return exc


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


class _Checker:
    def __init__(self, source: Adapter, target: Adapter, policy: Policy) -> None:
        self.source = source.client
        self.target = target.client
        self.override = policy.override
        self.platforms = parse_platforms(policy.platforms)
        self.platform_index = policy.platform_index
        self.group: asyncio.TaskGroup | None = None
        self._slots = asyncio.Semaphore(VERIFY_CONCURRENCY)
        # One request per key however many tags need it; the task shares its answer.
        self.blobs: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._manifests: dict[tuple[str, str], asyncio.Task[Manifest | str]] = {}
        # What of a source manifest travels for the policy's platforms, by (repository, digest).
        self._chosen: dict[tuple[str, str], asyncio.Task[Selection | str | None]] = {}

    async def _limited(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            return await call()

    def _once(self, cache: dict[tuple[str, str], asyncio.Task[T]], key: tuple[str, str],
              call: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        if key not in cache:
            assert self.group is not None
            cache[key] = self.group.create_task(self._limited(call))
        return cache[key]

    async def tag(self, src_repo: str, dst_repo: str | ConfigError, tag: str) -> list[Problem] | None:
        """The tag's problems; None when it left the source after listing (nothing to compare)."""
        head = await self._limited(partial(self.source.head_manifest, src_repo, tag))
        if head is None:
            return None
        if isinstance(dst_repo, ConfigError):
            return [Problem(repository=src_repo, target="", tag=tag, kind="missing-tag", digest=head.digest,
                            detail=f"no target name for {src_repo}: {dst_repo}")]
        found = await self._limited(partial(self.target.head_manifest, dst_repo, tag))

        def problem(kind: ProblemKind, detail: str, digest: Digest) -> Problem:
            return Problem(repository=src_repo, target=dst_repo, tag=tag, kind=kind, detail=detail,
                           digest=digest)

        selection = None
        if self.platforms:
            chosen = await self._chosen_for(src_repo, head.digest)
            if isinstance(chosen, str):
                return []  # the policy's platforms leave it behind: nothing to expect
            selection = chosen
        expected, wanted, absent = head.digest, f"source has {head.digest}", f"the source has {head.digest}"
        if selection is not None and selection.rewritten:
            expected = selection.pushed.digest
            wanted = absent = (f"expected {expected} (the source's {head.digest} rewritten for "
                               f"{', '.join(selection.platforms)})")
        if found is None:
            return [problem("missing-tag", f"not on the target; {absent}", expected)]
        problems = []
        if found.digest != expected:
            kept = "" if self.override else " (override is off, so replication keeps the target's)"
            problems.append(problem("digest-differs", f"{wanted}, target has {found.digest}{kept}", expected))
            selection = None  # the target's own index: every child of it is looked into
        problems += [problem(kind, detail, digest)
                     for kind, detail, digest in await self._contents(dst_repo, found.digest, selection)]
        return problems

    async def _chosen_for(self, repo: str, digest: Digest) -> Selection | str | None:
        if (repo, digest) not in self._chosen:
            assert self.group is not None
            self._chosen[(repo, digest)] = self.group.create_task(self._choose(repo, digest))
        return await self._chosen[(repo, digest)]

    async def _choose(self, repo: str, digest: Digest) -> Selection | str | None:
        """As replication decides it; None (checked as without platforms) for a source manifest
        or config that cannot be read."""
        async def fetch(ref: Digest) -> Manifest:
            return await self._limited(partial(self.source.get_manifest, repo, ref))

        try:
            manifest = await fetch(digest)
            decide = partial(choose, self.source, repo, manifest, self.platforms, self.platform_index, fetch)
            # An index's reads go through fetch, each within the bound; an image's one config read
            # is bounded here.
            return await (decide() if manifest.is_index else self._limited(decide))
        except (NotFoundError, ContentError):
            return None

    async def _contents(self, repo: str, top: Digest,
                        selection: Selection | None = None) -> list[tuple[ProblemKind, str, Digest]]:
        """What the target lacks of manifest ``top``: child manifests and blobs, each named once.
        With the ``selection`` for the policy's platforms of an index, only its kept children."""
        problems: list[tuple[ProblemKind, str, Digest]] = []
        seen: set[str] = set()
        pending: list[tuple[Digest, str, Selection | None]] = [(top, "", selection)]
        while pending:
            digest, parent, chosen = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            manifest = await self._once(self._manifests, (repo, digest), partial(self._get, repo, digest))
            if isinstance(manifest, str):
                problems.append(("missing-manifest", f"manifest {digest}{parent}: {manifest}", digest))
                continue
            if chosen is None:
                pending.extend((c.digest, f" (child of index {digest})", None) for c in manifest.children)
            else:
                for child in chosen.kept:
                    inner = chosen.nested.get(child.digest)
                    pending.append((inner.pushed.digest if inner is not None else child.digest,
                                    f" (child of index {digest})", inner))
            wanted = [b for b in manifest.blobs
                      if not is_foreign_layer(b.media_type) and b.digest not in seen]
            seen.update(b.digest for b in wanted)
            present = await asyncio.gather(*(
                self._once(self.blobs, (repo, b.digest), partial(self._has_blob, repo, b.digest))
                for b in wanted))
            problems += [("missing-blob", f"blob {b.digest} ({b.media_type}, {b.size} bytes) of manifest "
                          f"{digest}", b.digest) for b, ok in zip(wanted, present, strict=True) if not ok]
        return problems

    async def _get(self, repo: str, digest: Digest) -> Manifest | str:
        """The manifest, or why the target cannot serve it."""
        try:
            return await self.target.get_manifest(repo, digest)
        except NotFoundError:
            return "missing on the target"
        except ContentError as exc:  # served, but not what the digest names: as good as missing
            return f"unreadable on the target: {exc}"

    async def _has_blob(self, repo: str, digest: Digest) -> bool:
        return await self.target.blob_exists(repo, digest) is not None
