"""In flight against far registries: widened by the round trip the registries show."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from adapters.distribution.auth import finished
from policies.models import Policy
from tasks.blobs import BLOB_CONCURRENCY, MAX_BLOB_CONCURRENCY, BlobCopier
from tasks.discover import LIST_CONCURRENCY, MAX_LIST_CONCURRENCY, discover
from tasks.round_trips import widened


def client(answer: float | None) -> SimpleNamespace:
    return SimpleNamespace(fastest_answer=answer, endpoint=SimpleNamespace(url="http://x"), host="x")


@pytest.mark.parametrize(("answers", "expected"), [
    ((None, None), 8),       # nothing asked yet: as on loopback
    ((0.0005, 0.001), 8),    # loopback
    ((0.002, 0.041), 24),    # the slower registry counts: 40 ms adds two steps
    ((0.08, 0.0), 32),       # capped
])
def test_the_slower_registry_sets_the_width(answers, expected) -> None:
    assert widened(8, 32, *(client(a) for a in answers)) == expected


async def test_the_blob_slots_widen_once_from_what_the_plan_saw() -> None:
    source, target = client(0.001), client(0.04)
    copier = BlobCopier(source, target)  # type: ignore[arg-type]
    copier._size_slots()
    assert copier.concurrency == min(MAX_BLOB_CONCURRENCY, 3 * BLOB_CONCURRENCY)
    target.fastest_answer = 0.001  # later answers do not narrow a run that has started
    copier._size_slots()
    assert copier.concurrency == 3 * BLOB_CONCURRENCY
    held = [copier._slots.acquire() for _ in range(copier.concurrency)]
    for h in held:
        await h
    assert copier._slots.locked()


def test_a_copier_given_its_width_keeps_it() -> None:
    copier = BlobCopier(client(0.08), client(0.08), concurrency=2)  # type: ignore[arg-type]
    copier._size_slots()
    assert copier.concurrency == 2


class _ListingSource:
    """Just enough of an adapter for discovery: a catalog, tag lists that take a while, and
    the most of them it was asked for at once."""

    def __init__(self, repositories: int, answer: float | None) -> None:
        self.names = [f"team/r{i:03d}" for i in range(repositories)]
        self.client = SimpleNamespace(fastest_answer=answer, start_prefetch_tokens=self._no_tokens)
        self.in_flight = self.peak = 0

    async def _no_tokens(self, repositories: object, actions: str) -> asyncio.Future[None]:
        return finished()

    async def list_repositories(self, names: object = None) -> AsyncIterator[str]:
        for name in self.names:
            yield name

    async def list_tags(self, repository: str) -> list[str]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return ["1.0"]


@pytest.mark.parametrize(("answer", "expected"), [
    (0.0005, LIST_CONCURRENCY),   # loopback
    (0.04, 3 * LIST_CONCURRENCY),  # 40 ms: two steps more
    (0.5, MAX_LIST_CONCURRENCY),  # capped
])
async def test_tag_listings_widen_with_the_source_round_trip(answer, expected) -> None:
    source = _ListingSource(100, answer)
    found = await discover(source, Policy(name="p", src_registry="s", dest_registry="d"))  # type: ignore[arg-type]
    assert len(found) == 100 and all(f.tags == ["1.0"] for f in found)
    assert source.peak == expected
