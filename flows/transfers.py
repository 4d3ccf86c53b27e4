"""The transfer task (one per source repository: one Harbor task) and the lanes that run a
run's transfers a few at a time. Shared by the ``replicate`` flow, which runs them itself, and
by the ``replicate-part`` flow, which runs one share of a spread execution on another worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from adapters import Adapter
from adapters.errors import ReplicationError, is_transient
from flows import runtime
from tasks.blobs import BLOB_ATTEMPTS, BlobCopier
from tasks.models import TransferResult, TransferSpec
from tasks.round_trips import widened
from tasks.stop import StopSignal
from tasks.transfer import transfer_repository

# Repositories transferred at once in one run. The run moves at most BLOB_CONCURRENCY blobs at
# once whatever the repositories; four lanes of up to TAG_CONCURRENCY tags keep them all busy
# on the 2-core reference machine (six lanes were not faster).
TRANSFER_CONCURRENCY = 4
# Far registries: each repository waits round trips per tag (manifests, then its blobs, then the
# manifest PUT), so more of them run at once the longer the round trip (tasks/round_trips.py), up
# to the registries' cross-run slots, one of which every lane holds anyway.
MAX_TRANSFER_CONCURRENCY = runtime.REGISTRY_HOST_SLOTS
# The task level of the retry table (docs/decisions.md): a transfer whose failures are all
# transient runs again, up to this many more times, a few seconds apart; its blobs' own attempts
# (BLOB_ATTEMPTS) come first, inside each run of it.
TRANSFER_RETRIES = 2
TRANSFER_BACKOFF = exponential_backoff(backoff_factor=2)  # 2 s, then 4 s (+ up to half, jitter)
# The most times one blob is tried in one policy run: the two levels multiply, nothing else adds.
MAX_ATTEMPTS_PER_BLOB = BLOB_ATTEMPTS * (1 + TRANSFER_RETRIES)
# Every transfer says where it ran (its result's ``machine``, the task table's column, its log
# line): a spread execution's parts run on several workers. Not a task run tag: Prefect asks
# its server for a tag's concurrency slot on every task run that has tags. REGFLOW_MACHINE
# names a machine whose host name says too little (a container's); the host name otherwise.
MACHINE_ENV = "REGFLOW_MACHINE"


def machine_name() -> str:
    return os.environ.get(MACHINE_ENV, "").strip() or socket.gethostname()


MACHINE = machine_name()


@dataclass
class Run:
    source: Adapter
    target: Adapter
    blobs: BlobCopier


# Task inputs stay small pydantic models; the open clients reach the task through this.
RUN: contextvars.ContextVar[Run] = contextvars.ContextVar("regflow_run")


class TransferIncomplete(ReplicationError):
    """A transfer ended with failures; carries its result so the summary loses nothing."""

    def __init__(self, result: TransferResult, *, transient: bool) -> None:
        super().__init__(f"{result.count('failed')} tag(s) failed: {result.error}", transient=transient)
        self.result = result


def retry_transient(task: object, task_run: object, state: State) -> bool:
    """Prefect's retry_condition_fn: the task level asks the same one rule as the blob level."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


@task(name="transfer", task_run_name="{spec.source_repository}", retries=TRANSFER_RETRIES,
      retry_delay_seconds=TRANSFER_BACKOFF, retry_jitter_factor=0.5,
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE, persist_result=False)
async def transfer(spec: TransferSpec) -> TransferResult:
    run = RUN.get()
    result = await transfer_repository(run.source.client, run.target.client, spec, run.blobs)
    result.machine = MACHINE
    return settle(_logged(result))


def _logged(result: TransferResult) -> TransferResult:
    """One line per task, and one per tag not copied: what `regflow executions logs --task`
    shows."""
    logger = get_run_logger()
    logger.info("%s -> %s: %d copied, %d skipped, %d failed, %d stopped, %d bytes, on %s",
                result.source_repository, result.target_repository, result.count("copied"),
                result.count("skipped"), result.count("failed"), result.count("stopped"), result.bytes,
                result.machine)
    for t in result.tags:
        if t.status in ("failed", "stopped"):
            logger.warning("%s:%s %s: %s", result.source_repository, t.tag, t.status, t.reason)
    return result


def settle(result: TransferResult) -> TransferResult:
    """A task with failed tags fails, transient when every failure was (Prefect then retries
    it while it has retries left)."""
    if result.status == "Failed":
        raise TransferIncomplete(result, transient=result.retryable)
    return result


class Lanes:
    """Runs transfers TRANSFER_CONCURRENCY at a time (more for far registries), each lane
    holding one slot of both registries' cross-run limits for its whole life: asking Prefect's
    server per task cost ~2 s a task (measured), more than most transfers. Direct task calls in
    lanes, not Prefect's .map of async tasks (~10x the cost per task); a lane starts with the
    first spec it can take, so a run with nothing to copy starts none."""

    def __init__(self, run: Run, stop: StopSignal, progress: runtime.Progress) -> None:
        self.run, self.stop, self.progress = run, stop, progress
        # Sized at the first spec, from the round trips the plan has seen by then.
        self._width: int | None = None
        self.results: dict[str, TransferResult | BaseException] = {}
        self.begun: set[str] = set()  # repositories whose transfer task run was started
        self._waiting: asyncio.Queue[TransferSpec | None] = asyncio.Queue()
        self._lanes: list[asyncio.Task[None]] = []
        RUN.set(run)

    async def put(self, spec: TransferSpec) -> None:
        if not self._lanes and not self._waiting.qsize():
            await runtime.ensure_registry_limits(self.run.source.client.host, self.run.target.client.host)
        self.progress.expect()
        self._waiting.put_nowait(spec)
        if self._width is None:
            self._width = widened(TRANSFER_CONCURRENCY, MAX_TRANSFER_CONCURRENCY,
                                 self.run.source.client, self.run.target.client)
        if len(self._lanes) < self._width:
            self._lanes.append(asyncio.create_task(self._lane()))

    @property
    def started(self) -> int:
        return len(self.begun)

    def drop_waiting(self) -> None:
        """Start nothing more than what lanes hold already (planning broke off)."""
        while not self._waiting.empty():
            self._waiting.get_nowait()

    async def close(self) -> dict[str, TransferResult | BaseException]:
        for _ in self._lanes:
            self._waiting.put_nowait(None)
        await asyncio.gather(*self._lanes)
        return self.results

    async def _lane(self) -> None:
        async with runtime.registry_slots(self.run.source.client.host, self.run.target.client.host):
            while (spec := await self._waiting.get()) is not None:
                self.results[spec.source_repository] = await self._one(spec)

    async def _one(self, spec: TransferSpec) -> TransferResult | BaseException:
        if self.stop.is_set:
            return ReplicationError(f"not started: {self.stop.reason}")
        self.begun.add(spec.source_repository)
        # quote: Prefect would otherwise walk every field of the spec (its manifests' layers
        # included) twice per task run looking for futures; the task gets the spec itself.
        state: State = await transfer(quote(spec), return_state=True)  # type: ignore[misc]
        self.progress.advance()
        data = await state.aresult(raise_on_failure=False)
        if isinstance(data, TransferIncomplete):
            return data.result
        if isinstance(data, TransferResult | BaseException):
            return data
        return ReplicationError(f"transfer ended {state.type.value}: {state.message}")
