"""Referrers travel with their subject: signatures, attestations and SBOMs of every manifest a
policy copies, from any registry.

Where they are found on the source, per subject digest:
- the referrers API (``GET /v2/<name>/referrers/<digest>``) where the source serves it, else the
  OCI fallback index under the tag ``sha256-<hex>``: digest-only referrers, copied by digest;
- cosign's tags ``sha256-<hex>.sig`` / ``.att`` / ``.sbom`` from the repository's tag list
  (cosign writes them even to registries with the API): copied as tags like any other.
Their own referrers (a signature of an SBOM) follow, up to MAX_REFERRER_DEPTH levels.

A tag of those schemas is never selected on its own by the policy's tag filters: it travels
when its subject does, or when its subject is on the target already. With ``referrers: false``
none of this happens and they are ordinary tags again, filtered like any other.

On a target without the API the digest-only referrers are listed in its own ``sha256-<hex>``
index as well (``write_fallback_index``), merged with what it lists already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel

from adapters.distribution.client import DistributionClient
from adapters.errors import NotFoundError, ReplicationError, is_transient
from adapters.oci import Descriptor, Digest, Manifest
from adapters.oci.referrers import fallback_tag, merged_index, parse_referrer_tag, referrer_descriptor
from tasks.models import TagOutcome, TagPlan

logger = logging.getLogger(__name__)

# Levels of referrers followed below a copied manifest: image → SBOM → the SBOM's signature is
# two; the bound ends a chain no tool makes (or a hostile one) after a few requests.
MAX_REFERRER_DEPTH = 3

T = TypeVar("T")


class Referrer(BaseModel):
    """One manifest whose subject is ``subject``: under a cosign tag, or by digest alone."""

    subject: Digest
    tag: str | None = None
    digest: Digest | None = None  # known for digest-only referrers
    # Digest-only: the target already lists it among the subject's referrers (its API or its
    # fallback index); the manifest alone, unlisted, does not count.
    on_target: bool = False


def subject_tags(tags: Sequence[str], referrers: bool) -> list[str]:
    """The tags planned for themselves: with referrers on, the fallback-schema tags come only
    with their subject."""
    return list(tags) if not referrers else [t for t in tags if parse_referrer_tag(t) is None]


def subjects_of(tags: Iterable[str]) -> set[Digest]:
    """The subjects of those of ``tags`` that follow a fallback schema."""
    return {parsed.subject for t in tags if (parsed := parse_referrer_tag(t)) is not None}


class ReferrerLookup:
    """What one repository's source offers and its target lists as referrers of a digest."""

    def __init__(self, source: DistributionClient, target: DistributionClient, source_repository: str,
                 target_repository: str, tags: Iterable[str], slots: asyncio.Semaphore) -> None:
        self.source, self.target = source, target
        self.src_repo, self.dst_repo = source_repository, target_repository
        self.slots = slots
        self.tags: dict[Digest, list[str]] = {}  # the source's fallback-schema tags by subject
        self.indexes: set[Digest] = set()  # subjects the source has an OCI fallback index for
        for tag in dict.fromkeys(tags):
            parsed = parse_referrer_tag(tag)
            if parsed is None:
                continue
            if parsed.is_index:
                self.indexes.add(parsed.subject)
            else:
                self.tags.setdefault(parsed.subject, []).append(tag)

    async def on_target(self, digest: Digest) -> bool:
        async with self.slots:
            return await self.target.head_manifest(self.dst_repo, digest) is not None

    async def of(self, subject: Digest) -> list[Referrer]:
        found = [Referrer(subject=subject, tag=t) for t in self.tags.get(subject, ())]
        descriptors = await self._on_source(subject)
        if descriptors:
            listed = await self.listed_on_target(subject)
            found.extend(Referrer(subject=subject, digest=d, on_target=d in listed)
                         for d in dict.fromkeys(descriptors))
        return found

    async def _on_source(self, subject: Digest) -> list[Digest]:
        async with self.slots:
            api = await self.source.referrers(self.src_repo, subject)
        if api is not None:
            return [d.digest for d in api]
        if subject not in self.indexes:
            return []
        return [c.digest for c in await self._index(self.source, self.src_repo, subject)]

    async def listed_on_target(self, subject: Digest) -> set[Digest]:
        async with self.slots:
            api = await self.target.referrers(self.dst_repo, subject)
        if api is not None:
            return {d.digest for d in api}
        return {c.digest for c in await self._index(self.target, self.dst_repo, subject)}

    async def _index(self, client: DistributionClient, repository: str,
                     subject: Digest) -> tuple[Descriptor, ...]:
        try:
            async with self.slots:
                index = await client.get_manifest(repository, fallback_tag(subject))
        except NotFoundError:
            return ()
        return index.children if index.is_index else ()


async def follow(lookup: ReferrerLookup, subjects: Iterable[Digest], plan: Callable[[Referrer], Awaitable[T]],
                 digest_of: Callable[[T], Digest | None]) -> list[T]:
    """Every referrer of ``subjects``, level by level, each planned once by ``plan``; a planned
    referrer's digest is the next level's subject."""
    level = list(dict.fromkeys(subjects))
    asked: set[Digest] = set(level)  # subjects whose referrers were looked up
    taken: set[str] = set()  # referrers planned: their tag, or their digest when they have none
    planned: list[T] = []
    for _ in range(MAX_REFERRER_DEPTH):
        if not level:
            break
        found = await asyncio.gather(*(lookup.of(d) for d in level))
        todo: list[Referrer] = []
        for referrer in (r for group in found for r in group):
            key = referrer.tag if referrer.tag is not None else str(referrer.digest)
            if key not in taken and referrer.digest not in asked:  # a subject is not its own referrer
                taken.add(key)
                todo.append(referrer)
        done = await asyncio.gather(*(plan(r) for r in todo))
        planned.extend(done)
        level = list(dict.fromkeys(d for p in done if (d := digest_of(p)) is not None and d not in asked))
        asked.update(level)
    return planned


async def write_fallback_index(target: DistributionClient, repository: str, subject: Digest,
                               referrers: Sequence[Digest]) -> bool:
    """List ``referrers`` (on the target already) in the target's ``sha256-<hex>`` index of
    ``subject``, when the target has no referrers API; True when that index was written.

    The entries already there stay: the index may list referrers of other sources too."""
    if await target.referrers(repository, subject) is not None:
        return False  # the registry keeps its own index of what was pushed
    tag = fallback_tag(subject)
    try:
        existing: Manifest | None = await target.get_manifest(repository, tag)
    except NotFoundError:
        existing = None
    listed = {c.digest for c in existing.children} if existing is not None and existing.is_index else set()
    # Read back from the target, where they were just pushed: only the new ones cost a GET.
    additions = [referrer_descriptor(await target.get_manifest(repository, d))
                 for d in dict.fromkeys(referrers) if d not in listed]
    index = merged_index(existing, additions)
    if index is None:
        return False
    await target.put_manifest(repository, tag, index)
    logger.info("%s: %s lists %d more referrers", repository, tag, len(additions))
    return True



def push_order(plans: Sequence[TagPlan]) -> list[int]:
    """Each plan's turn: 0 for manifests of their own, one more than its subject's for a
    referrer whose subject this same transfer pushes (a subject outside it is on the target)."""
    by_digest = {p.digest: i for i, p in enumerate(plans) if p.digest is not None}
    turns: list[int] = []
    for plan in plans:
        turn, subject = 0, plan.subject
        while subject is not None and subject in by_digest and turn < len(plans):  # a cycle ends
            turn += 1
            subject = plans[by_digest[subject]].subject
        turns.append(turn)
    return turns


def subject_missing(plan: TagPlan, plans: Sequence[TagPlan], outcomes: Mapping[int, TagOutcome]) -> str:
    """Why ``plan`` must not be pushed: its subject was to be pushed by this transfer and is not
    on the target; "" otherwise."""
    if plan.subject is None:
        return ""
    mine = [outcomes[i] for i, p in enumerate(plans) if p.digest == plan.subject and i in outcomes]
    if mine and not any(o.status in ("copied", "skipped") for o in mine):
        return f"its subject {plan.subject} was not copied"
    return ""


async def list_on_target(target: DistributionClient, repository: str, plans: Sequence[TagPlan],
                         outcomes: dict[int, TagOutcome]) -> None:
    """Write the target's fallback indexes for the digest-only referrers this transfer copied
    (a no-op on a target with the referrers API); a failure fails those referrers' outcomes."""
    copied: dict[Digest, dict[int, Digest]] = {}
    for i, plan in enumerate(plans):
        if (plan.subject is not None and plan.digest is not None and plan.tag == plan.digest
                and outcomes[i].status == "copied"):
            copied.setdefault(plan.subject, {})[i] = plan.digest
    for subject, indexes in copied.items():
        try:
            await write_fallback_index(target, repository, subject, list(indexes.values()))
        except ReplicationError as exc:
            for i in indexes:
                reason = f"pushed, but not listed in {fallback_tag(subject)}: {type(exc).__name__}: {exc}"
                outcomes[i] = outcomes[i].model_copy(
                    update={"status": "failed", "reason": reason, "transient": is_transient(exc)})
