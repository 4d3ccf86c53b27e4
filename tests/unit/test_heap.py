"""The CLI's start-up heap: collected rarely while the command imports, frozen once it has."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from regflow_cli import heap


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    heap._defaults = None


def test_start_up_collects_rarely_then_freezes_what_it_built_and_collects_as_before() -> None:
    before = gc.get_threshold()
    heap.starting()
    assert gc.get_threshold() == (heap.START_UP_THRESHOLD, *before[1:])
    built = [[] for _ in range(10)]  # a stand-in for the command's imports
    assert any(o is built for o in gc.get_objects())
    heap.started()
    assert gc.get_threshold() == before
    # Frozen: out of every generation the collector passes over.
    assert not any(o is built for o in gc.get_objects())
    assert gc.isenabled()


def test_started_without_starting_freezes_nothing() -> None:
    # In-process callers (tests, the service) never called starting(): their heaps stay collectable.
    assert gc.get_freeze_count() == 0
    heap.started()
    assert gc.get_freeze_count() == 0


def test_starting_twice_keeps_the_first_defaults() -> None:
    before = gc.get_threshold()
    heap.starting()
    heap.starting()
    heap.started()
    assert gc.get_threshold() == before
