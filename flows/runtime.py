"""Where the replicate flow meets Prefect's server: run labels, the stop watcher, per-registry
concurrency slots, progress and the summary artifacts. Nothing here moves image bytes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from uuid import UUID

from prefect import get_client
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, StateType
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import flow_run

from flows.liveness import crash_if_silent
from tasks.stop import StopSignal
from tasks.summary import Execution, human_bytes

# How often a run asks the server whether it was cancelled. Stop takes at most this long to
# notice, plus one chunk of the blob stream in flight.
CANCEL_POLL_SECONDS = 1.0
# Transfers touching one registry host at once, across every run sharing a Prefect server: a
# small registry falls over long before its network does. Created on first use; raise it with
# `prefect gcl update registry-<host> --limit N`.
REGISTRY_HOST_SLOTS = 8
# A run renews its slots' lease while it lives; a killed run's slots come back once the lease
# runs out (plus the server's 15 s sweep). The server's minimum: the shortest wait for them.
REGISTRY_SLOT_LEASE_SECONDS = 60
# Running executions of one policy read at once: single_active keeps it at one, more are
# leftovers of dead processes, crashed a batch at a time.
ACTIVE_RUNS_READ = 20

# The tag that says how many transfer task runs the run started, ``task-runs:<n>``: readers of
# the execution wait for the server to have recorded that many (flows/history.py). A tag, not
# a flow run label: the server took ~2 s to answer a label update (measured, Prefect 3.9).
TASK_RUNS_TAG = "task-runs:"

_known_limits: set[str] = set()
logger = logging.getLogger(__name__)

# A local observer of progress (the CLI's progress bar); runs started elsewhere have none.
progress_listener: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar(
    "regflow_progress_listener", default=None)


def effective_trigger(trigger: str) -> str:
    """How this run was started: the caller says "event"; a schedule's runs carry Prefect's
    ``auto-scheduled`` tag; anything else (UI, CLI, API) is manual."""
    if trigger == "manual" and "auto-scheduled" in (flow_run.tags or []):
        return "schedule"
    return trigger


def run_name() -> str:
    params = flow_run.parameters
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    trigger = effective_trigger(str(params.get("trigger", "manual")))
    return f"{params.get('policy', 'replicate')}-{trigger}-{stamp}"


def current_run_id() -> str | None:
    run_id = flow_run.id
    return str(run_id) if run_id else None


def policy_tag(policy: str) -> str:
    return f"policy:{policy}"


async def label_run(policy: str, trigger: str, event_id: str | None, task_runs: int | None = None) -> None:
    """Tags make executions findable by policy and show how each one was started; once it
    ends, how many task runs it started (``TASK_RUNS_TAG``). Derived from the tags the run was
    created with each time, so the last call needs no read of the run."""
    run_id = flow_run.id
    if not run_id:
        return
    kept = [t for t in flow_run.tags if not t.startswith(("trigger:", TASK_RUNS_TAG))]
    labels = {policy_tag(policy), f"trigger:{trigger}", *kept}
    if event_id:
        labels.add(f"event:{event_id}")
    if task_runs is not None:
        labels.add(f"{TASK_RUNS_TAG}{task_runs}")
    async with get_client() as client:
        await client.update_flow_run(UUID(run_id), tags=sorted(labels))


async def active_run_of(policy: str) -> str | None:
    """Another running execution of this policy, if any (single_active_replication). One whose
    heartbeats stopped is marked Crashed on the way (flows/liveness.py) and does not count."""
    own = flow_run.id
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[policy_tag(policy)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
        ), limit=ACTIVE_RUNS_READ)
        for run in runs:
            if str(run.id) != own and not await crash_if_silent(client, run, seen_by=own):
                return str(run.id)
    return None


@asynccontextmanager
async def watch_cancellation(stop: StopSignal, *also: str) -> AsyncIterator[None]:
    """Polls the run's state and sets ``stop`` once it is Cancelling: works for runs started by
    a runner or worker and for runs cancelled from the UI while the CLI executes them. ``also``:
    other runs whose cancelling stops this one too (a part's execution)."""
    watched = [UUID(i) for i in (flow_run.id, *also) if i]

    async def poll() -> None:
        async with get_client() as client:
            while True:
                await asyncio.sleep(CANCEL_POLL_SECONDS)
                with suppress(Exception):  # a flaky API must not end the run; next poll retries
                    runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=watched)))
                    if any(r.state is not None and r.state.type in (StateType.CANCELLING, StateType.CANCELLED)
                           for r in runs):
                        stop.set("stopped by user")
                        return

    watcher = asyncio.create_task(poll()) if watched else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher


def limit_name(host: str) -> str:
    return "registry-" + re.sub(r"[^A-Za-z0-9.-]", "-", host)


async def host_slots(host: str) -> int | None:
    """The cross-run limit of transfers touching ``host`` (None: not created yet)."""
    async with get_client() as client:
        try:
            return (await client.read_global_concurrency_limit_by_name(limit_name(host))).limit
        except ObjectNotFound:
            return None


async def ensure_registry_limits(*hosts: str) -> None:
    """Create the per-host limits once per process, before any transfer asks for a slot."""
    missing = sorted({limit_name(h) for h in hosts} - _known_limits)
    if not missing:
        return
    async with get_client() as client:
        for name in missing:
            try:
                await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):  # another run created it meanwhile
                    await client.upsert_global_concurrency_limit_by_name(name, REGISTRY_HOST_SLOTS)
            _known_limits.add(name)


@asynccontextmanager
async def registry_slots(*hosts: str) -> AsyncIterator[None]:
    run_id = flow_run.id
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    async with concurrency(sorted({limit_name(h) for h in hosts}), occupy=1, strict=False,
                           lease_duration=REGISTRY_SLOT_LEASE_SECONDS, holder=holder):
        yield


class Progress:
    """The run's progress artifact: moves as each transfer task ends. The server hears of it in
    the background, one write at a time and the latest count winning, so a transfer lane never
    waits on the API for it (awaited per task, it cost each lane ~25 ms a repository)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.done = 0
        self._artifact: UUID | None = None
        self._writer: asyncio.Task[None] | None = None
        self._written = (-1, -1)
        self._listener = progress_listener.get()
        if self._listener is not None:
            self._listener(0, total)

    def expect(self) -> None:
        """One more repository to transfer: the plan hands them over as it finds them."""
        self.total += 1
        self._changed()

    def advance(self) -> None:
        self.done += 1
        self._changed()

    def _changed(self) -> None:
        if self._listener is not None:
            self._listener(self.done, self.total)
        if self.done and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write())

    async def flush(self) -> None:
        """The last count reaches the server before the run publishes its summary."""
        if self._writer is not None:
            await self._writer
        if self.done and self._written != (self.done, self.total):
            await self._write()

    async def _write(self) -> None:
        while self._written != (self.done, self.total):
            done, total = self.done, self.total
            percent = 100.0 * done / total if total else 100.0
            description = f"{done} of {total} repositories transferred"
            try:
                if self._artifact is None:
                    self._artifact = await acreate_progress_artifact(
                        percent, key="replication-progress", description=description)
                else:
                    await aupdate_progress_artifact(self._artifact, percent, description=description)
            except Exception as exc:  # a progress bar must not fail the copy
                logger.warning("progress artifact not updated: %s", exc)
                return
            self._written = (done, total)


async def publish(execution: Execution) -> None:
    """The table artifact is the execution's task table; the markdown one its headline; a tag
    the number of task runs to expect."""
    if not flow_run.id:
        return
    await asyncio.gather(_artifacts(execution), label_run(execution.policy, execution.trigger,
                                                          execution.event_id, execution.transfers))


async def _artifacts(execution: Execution) -> None:
    rows = []
    for t in execution.tasks:
        reasons = sorted({f"{o.tag}: {o.reason}" for o in t.tags if o.reason})
        rows.append({
            "repository": t.source, "target": t.target, "status": t.status,
            "tags": len(t.tags), "copied": t.copied, "skipped": t.skipped, "failed": t.failed,
            "bytes": t.bytes, "seconds": round(t.seconds, 2), "machine": t.machine,
            "reason": "; ".join(([t.error] if t.error else []) + reasons)[:2000],
        })
    await acreate_table_artifact(rows, key=f"replication-{slug(execution.policy)}",
                          description=f"{execution.status}: {execution.message}")
    await acreate_markdown_artifact(
        f"## {execution.policy}: {execution.status}\n\n{execution.message}\n\n"
        f"| total | succeed | failed | stopped | bytes |\n|---|---|---|---|---|\n"
        f"| {execution.total} | {execution.succeed} | {execution.failed} | {execution.stopped} "
        f"| {human_bytes(execution.bytes)} |\n",
        key=f"replication-summary-{slug(execution.policy)}",
        description=execution.message,
    )
    if execution.traffic is not None:  # read back by serve's /metrics (deployments/metrics.py)
        await acreate_table_artifact(execution.traffic.rows(), key=f"traffic-{slug(execution.policy)}",
                                     description="Registry answers by status, rate-limit holds, blob routes")


def slug(name: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]", "-", name.lower())
