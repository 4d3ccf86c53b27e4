"""Bursts of events into few runs: trailing-edge windows per (policy, repository, action)."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.coalesce import COALESCE_WINDOW_SECONDS, Coalescer
from tasks.discover import Resource

# Short enough for a fast suite, long enough that a loaded CI machine keeps the order of events.
WINDOW = 0.3


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments import coalesce

    monkeypatch.setattr(coalesce, "START_RETRY_SECONDS", (0.01, 0.01, 0.01))


class Starts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Resource], str, str, float]] = []

    async def __call__(self, policy: str, resources: list[Resource], action: str, event_id: str) -> None:
        self.calls.append((policy, resources, action, event_id, time.monotonic()))

    def tags(self, index: int = 0) -> list[str | None]:
        return [r.tag for r in self.calls[index][1]]


def push(tag: str | None, repository: str = "team/app") -> Resource:
    return Resource(repository=repository, tag=tag)


async def test_a_burst_of_20_pushes_is_one_run() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    opened = time.monotonic()
    for i in range(20):
        await coalescer.add("mirror", "push", push(f"v{i}"), f"ev-{i}")
        await asyncio.sleep(WINDOW / 100)
    assert coalescer.pending() == 1
    await asyncio.sleep(WINDOW * 1.5)
    assert len(starts.calls) == 1
    policy, resources, action, event_id, started = starts.calls[0]
    assert (policy, action, event_id) == ("mirror", "push", "ev-0")
    assert [r.tag for r in resources] == [f"v{i}" for i in range(20)]
    assert {r.repository for r in resources} == {"team/app"}
    # Trailing edge: the run starts one window after the first event, not before.
    assert started - opened >= WINDOW * 0.95
    assert coalescer.pending() == 0


async def test_pushes_spread_over_one_and_a_half_windows_are_at_most_two_runs() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    first = time.monotonic()
    for i in range(20):
        await coalescer.add("mirror", "push", push(f"v{i}"), f"ev-{i}")
        span = time.monotonic() - first
        await asyncio.sleep(WINDOW * 1.5 / 19)
    await coalescer.drain()
    if span >= 2 * WINDOW:
        pytest.skip(f"the machine stretched the burst to {span:.2f} s, over two windows")
    assert len(starts.calls) == 2
    # Every tag is copied exactly once, in the order pushed.
    assert starts.tags(0) + starts.tags(1) == [f"v{i}" for i in range(20)]
    assert starts.calls[1][3] == f"ev-{len(starts.tags(0))}"


async def test_no_run_starts_before_the_window_closes() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await asyncio.sleep(WINDOW / 3)
    assert starts.calls == []
    await asyncio.sleep(WINDOW)
    assert len(starts.calls) == 1


async def test_pushes_and_deletions_are_not_merged() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "delete", push("v0"), "ev-2")
    await coalescer.add("mirror", "push", push("v2"), "ev-3")
    assert coalescer.pending() == 2
    await coalescer.drain()
    by_action = {call[2]: [r.tag for r in call[1]] for call in starts.calls}
    assert by_action == {"push": ["v1", "v2"], "delete": ["v0"]}


async def test_policies_and_repositories_have_their_own_windows() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.add("backup", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "push", push("v1", repository="team/other"), "ev-2")
    assert coalescer.pending() == 3
    await coalescer.drain()
    assert sorted((c[0], c[1][0].repository) for c in starts.calls) == [
        ("backup", "team/app"), ("mirror", "team/app"), ("mirror", "team/other"),
    ]


async def test_repeated_tags_are_listed_once() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    for tag in ["v1", "latest", "v1", "latest", "v2"]:
        await coalescer.add("mirror", "push", push(tag), "ev")
    await coalescer.drain()
    assert starts.tags() == ["v1", "latest", "v2"]


async def test_a_push_without_a_tag_means_the_whole_repository() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "push", push(None), "ev-2")
    await coalescer.add("mirror", "push", push("v2"), "ev-3")
    await coalescer.drain()
    assert starts.tags() == [None]


async def test_a_push_by_digest_is_not_the_whole_repository() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    by_digest = Resource(repository="team/app", digest="sha256:" + "f6" * 32)  # type: ignore[arg-type]
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "push", by_digest, "ev-2")
    await coalescer.drain()
    assert starts.calls[0][1] == [push("v1"), by_digest]


async def test_a_deletion_without_a_tag_does_not_swallow_the_others() -> None:
    starts = Starts()
    coalescer = Coalescer(WINDOW, starts)
    await coalescer.add("mirror", "delete", push("v1"), "ev-1")
    await coalescer.add("mirror", "delete", push(None), "ev-2")
    await coalescer.add("mirror", "delete", push("v2"), "ev-3")
    await coalescer.drain()
    assert starts.tags() == ["v1", None, "v2"]


async def test_drain_starts_everything_now_and_nothing_later() -> None:
    starts = Starts()
    coalescer = Coalescer(10.0, starts)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "delete", push("v0"), "ev-2")
    assert await coalescer.drain() == 2
    assert len(starts.calls) == 2
    assert coalescer.pending() == 0
    assert await coalescer.drain() == 0
    assert len(starts.calls) == 2


async def test_drain_waits_for_starts_already_under_way() -> None:
    finished: list[str] = []

    async def slow_start(policy: str, resources: list[Resource], action: str, event_id: str) -> None:
        await asyncio.sleep(WINDOW)
        finished.append(event_id)

    coalescer = Coalescer(0.0, slow_start)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await asyncio.sleep(0.01)  # the window has closed: the start is running
    assert coalescer.pending() == 0
    await coalescer.drain()
    assert finished == ["ev-1"]


async def test_a_failing_start_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    started: list[str] = []

    async def start(policy: str, resources: list[Resource], action: str, event_id: str) -> None:
        if policy == "broken":
            raise RuntimeError("no such deployment")
        started.append(policy)

    coalescer = Coalescer(WINDOW, start)
    await coalescer.add("broken", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.drain()
    assert started == ["mirror"]
    assert "ev-1" in caplog.text


@pytest.mark.parametrize("window", [-1.0, float("nan"), float("inf")])
def test_window_must_be_a_finite_non_negative_number(window: float) -> None:
    with pytest.raises(ValueError):
        Coalescer(window, Starts())


def test_default_window() -> None:
    assert COALESCE_WINDOW_SECONDS == 2.0


async def test_a_failed_start_is_tried_again_and_a_lasting_failure_gives_up() -> None:
    failures = {"team/app": 2, "team/down": 99}
    attempts: list[str] = []

    async def start(policy: str, resources: list[Resource], action: str, event_id: str) -> None:
        repository = resources[0].repository
        attempts.append(repository)
        if failures[repository]:
            failures[repository] -= 1
            raise RuntimeError("database is locked")

    coalescer = Coalescer(WINDOW, start)
    await coalescer.add("mirror", "push", push("v1"), "ev-1")
    await coalescer.add("mirror", "push", push("v1", "team/down"), "ev-2")
    assert await coalescer.drain() == 2
    # Two failures, then started; the other gave up after its retries, and drain did not hang.
    assert attempts.count("team/app") == 3
    assert attempts.count("team/down") == 4
