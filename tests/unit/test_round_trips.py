"""In flight against far registries: widened by the round trip the registries show."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tasks.blobs import BLOB_CONCURRENCY, MAX_BLOB_CONCURRENCY, BlobCopier
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
