"""The replicate flow's plan-to-transfer hand-off and its progress artifact, without a registry
or a Prefect server: the steps they call are replaced by fakes that record what happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.utilities.annotations import quote

import flows.replicate as replicate
import flows.runtime as runtime
import flows.transfers as transfers
from adapters.errors import ReplicationError
from policies.models import Policy
from tasks.discover import RepositoryTags
from tasks.models import TransferResult, TransferSpec
from tasks.plan import PlannedRepository, PlannedTag
from tasks.stop import StopSignal

POLICY = Policy(name="p", src_registry="s", dest_registry="d")
DIGEST = "sha256:" + "a" * 64


def planned(name: str, action: str = "copy") -> PlannedRepository:
    return PlannedRepository(source_repository=name, target_repository=name, tags=[
        PlannedTag(tag="1.0", digest=DIGEST, target_digest=None, action=action)])


class _State:
    def __init__(self, result: TransferResult) -> None:
        self.result = result

    async def aresult(self, raise_on_failure: bool = False) -> TransferResult:
        return self.result


class World:
    """Fakes for everything the hand-off talks to, and what each saw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                 round_trip: float | None = None) -> None:
        self.started: list[str] = []
        self.first_started = asyncio.Event()
        self.lanes = 0
        self.limits = 0
        self.artifacts: list[tuple[str, float, str]] = []
        self.fail_artifacts = False
        monkeypatch.setenv("REGFLOW_HOME", str(tmp_path))
        monkeypatch.setattr(transfers, "transfer", self._transfer)
        monkeypatch.setattr(runtime, "registry_slots", self._slots)
        monkeypatch.setattr(runtime, "ensure_registry_limits", self._limits)
        monkeypatch.setattr(runtime, "acreate_progress_artifact", self._create)
        monkeypatch.setattr(runtime, "aupdate_progress_artifact", self._update)
        # round_trip: the quickest answer the plan saw (None: none yet, as before any request).
        client = SimpleNamespace(host="registry.test", endpoint=SimpleNamespace(url="http://registry.test"),
                                 fastest_answer=round_trip)
        self.source = SimpleNamespace(client=client)
        self.target = SimpleNamespace(client=client, info=SimpleNamespace(supports_mount=True))

    async def _transfer(self, quoted: quote[TransferSpec], return_state: bool = True) -> _State:
        spec = quoted.unquote()  # as Prefect hands it to the task
        self.started.append(spec.source_repository)
        self.first_started.set()
        await asyncio.sleep(0)
        return _State(TransferResult(source_repository=spec.source_repository,
                                     target_repository=spec.target_repository))

    @asynccontextmanager
    async def _slots(self, *hosts: str) -> AsyncIterator[None]:
        self.lanes += 1
        yield

    async def _limits(self, *hosts: str) -> None:
        self.limits += 1

    async def _create(self, percent: float, key: str, description: str) -> str:
        return await self._update("artifact", percent, description)

    async def _update(self, artifact: Any, percent: float, description: str) -> str:
        await asyncio.sleep(0.01)  # a round trip: advances meanwhile must coalesce
        if self.fail_artifacts:
            raise RuntimeError("API down")
        self.artifacts.append((str(artifact), percent, description))
        return "artifact"

    async def run(self, plans: AsyncIterator[tuple[int, PlannedRepository]], found: list[RepositoryTags],
                  monkeypatch: pytest.MonkeyPatch, stop: StopSignal | None = None) -> Any:
        async def plan_each(*args: object, **kwargs: object) -> AsyncIterator[tuple[int, PlannedRepository]]:
            async for item in plans:
                yield item
        monkeypatch.setattr(replicate, "plan_each", plan_each)
        return await replicate._plan_and_transfer(self.source, self.target, POLICY,  # type: ignore[arg-type]
                                                  found, stop or StopSignal())


def found_of(*names: str) -> list[RepositoryTags]:
    return [RepositoryTags(repository=n, tags=["1.0"]) for n in names]


async def test_a_transfer_starts_before_the_rest_is_planned(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        yield 1, planned("b")
        # Planning "a" finishes only once "b" is being transferred: without the overlap this waits forever.
        await asyncio.wait_for(world.first_started.wait(), timeout=5)
        yield 0, planned("a")

    done = await world.run(plans(), found_of("a", "b"), monkeypatch)

    assert world.started == ["b", "a"]
    assert [r.source_repository for r in done.plan.repositories] == ["a", "b"]  # the order found
    assert set(done.results) == {"a", "b"}
    assert all(isinstance(r, TransferResult) for r in done.results.values())
    assert done.started == 2


async def test_a_no_change_resync_starts_no_lane_and_asks_for_no_limit(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        for i, name in enumerate("abc"):
            yield i, planned(name, action="identical")

    done = await world.run(plans(), found_of("a", "b", "c"), monkeypatch)

    assert (done.results, done.started) == ({}, 0)
    assert len(done.plan.repositories) == 3
    assert (world.lanes, world.limits, world.started, world.artifacts) == (0, 0, [], [])


async def test_lanes_never_exceed_the_limit_and_every_spec_is_transferred(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)
    names = [f"r{i}" for i in range(replicate.TRANSFER_CONCURRENCY * 3)]

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        for i, name in enumerate(names):
            yield i, planned(name)

    results = (await world.run(plans(), found_of(*names), monkeypatch)).results

    assert world.lanes == replicate.TRANSFER_CONCURRENCY
    assert world.limits == 1
    assert sorted(world.started) == sorted(names)
    assert set(results) == set(names)
    # Coalesced while in flight, but the last write is the whole count.
    assert world.artifacts[-1][1:] == (100.0, f"{len(names)} of {len(names)} repositories transferred")
    assert len(world.artifacts) < len(names)


@pytest.mark.parametrize(("round_trip", "lanes"), [
    (0.0005, transfers.TRANSFER_CONCURRENCY),  # loopback
    (0.04, transfers.MAX_TRANSFER_CONCURRENCY),  # far: as many as the registries' slots
])
async def test_far_registries_get_more_lanes_up_to_the_registry_slots(monkeypatch, tmp_path, round_trip,
                                                                      lanes):
    world = World(monkeypatch, tmp_path, round_trip=round_trip)
    names = [f"r{i}" for i in range(transfers.MAX_TRANSFER_CONCURRENCY * 3)]

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        for i, name in enumerate(names):
            yield i, planned(name)

    results = (await world.run(plans(), found_of(*names), monkeypatch)).results

    assert transfers.MAX_TRANSFER_CONCURRENCY == runtime.REGISTRY_HOST_SLOTS > transfers.TRANSFER_CONCURRENCY
    assert world.lanes == lanes
    assert set(results) == set(names)


async def test_a_stopped_run_starts_no_more_transfers(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)
    stop = StopSignal()
    stop.set("stopped by user")

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        yield 0, planned("a")

    done = await world.run(plans(), found_of("a"), monkeypatch, stop=stop)

    assert world.started == []
    assert isinstance(done.results["a"], ReplicationError)
    assert "stopped by user" in str(done.results["a"])
    assert done.started == 0  # no task run for ``replicate`` to wait on being recorded


async def test_planning_that_breaks_off_queues_nothing_more_and_raises(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        yield 0, planned("a")
        raise RuntimeError("a bug in planning")

    with pytest.raises(RuntimeError, match="a bug in planning"):
        await world.run(plans(), found_of("a", "b"), monkeypatch)
    assert world.started in ([], ["a"])  # the one queued may have started; nothing after it


async def test_a_failing_progress_artifact_does_not_fail_the_run(monkeypatch, tmp_path):
    world = World(monkeypatch, tmp_path)
    world.fail_artifacts = True

    async def plans() -> AsyncIterator[tuple[int, PlannedRepository]]:
        yield 0, planned("a")
        yield 1, planned("b")

    results = (await world.run(plans(), found_of("a", "b"), monkeypatch)).results

    assert sorted(world.started) == ["a", "b"]
    assert all(isinstance(r, TransferResult) for r in results.values())
    assert world.artifacts == []


async def test_progress_reports_to_its_listener_at_once(monkeypatch, tmp_path):
    World(monkeypatch, tmp_path)
    seen: list[tuple[int, int]] = []
    token = runtime.progress_listener.set(lambda done, total: seen.append((done, total)))
    try:
        progress = runtime.Progress()
        progress.expect()
        progress.expect()
        progress.advance()
        assert seen == [(0, 0), (0, 1), (0, 2), (1, 2)]  # before any write reached the server
        await progress.flush()
    finally:
        runtime.progress_listener.reset(token)
