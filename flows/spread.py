"""Spreading one execution over the work pool's workers (a policy's ``spread``).

The execution plans, splits the transfers into parts balanced by tag count, and starts each
part as a run of the ``replicate-part`` deployment on its own work pool, linked to it as a
subflow. Prefect's work pool is the scheduler: any worker may take a part, a worker's
``--limit`` says how many it runs at once. The execution then waits for its parts: it stops
them when it is stopped, schedules a part again when its machine was lost (the crash
automation marked it Crashed), and reads back each part's results and traffic, so it still
reads as one Harbor execution with a task per repository wherever it ran.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import ArtifactSort
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import AwaitingRetry, Cancelled, Cancelling, Crashed

from adapters.errors import ReplicationError
from flows import liveness, runtime
from flows.part import PART_DEPLOYMENT, PART_FLOW, RESULTS_KEY, TRAFFIC_KEY, read_result_rows, replicate_part
from flows.transfers import TRANSFER_CONCURRENCY
from policies.models import Policy
from tasks.models import TagOutcome, Traffic, TransferResult, TransferSpec
from tasks.stop import StopSignal

# The work pool regflow's deployments live on (deployments/sync.py creates it).
WORK_POOL = "regflow"
# How often the execution reads its parts' states: a stop reaches a part within this plus the
# part's own poll (flows/runtime.py CANCEL_POLL_SECONDS).
PART_POLL_SECONDS = 1.0
# Runs of one part, the first included: a part whose machine was lost twice more is a fault
# of the part (a repository that kills its process), not of machines.
PART_ATTEMPTS = 3
# A part a worker took but whose process never began (the worker died while submitting it)
# sends no heartbeat and would stay Pending: after this long it is scheduled again. Well above
# a process start on a busy machine; a slow start run twice copies the same bytes twice.
PART_PENDING_SECONDS = 90.0
# Every part run carries this tag and ``part-of:<execution id>``; never ``policy:<name>``,
# which would make a part look like another execution of the policy.
PART_TAG = "regflow-part"
PART_OF_TAG = "part-of:"
# The checkout every deployment regflow makes runs in (the same path on every worker).
REPO_ROOT = Path(__file__).resolve().parent.parent
# Deployments this process has made sure of, by work pool.
_deployed: set[str] = set()


@dataclass
class Parts:
    results: dict[str, TransferResult | BaseException]
    started: int  # transfer task runs, across every part
    traffic: Traffic


async def wanted(policy: Policy) -> bool:
    """Spread only a run a worker took from a work pool: the parts need that pool's workers."""
    if policy.spread <= 1:
        return False
    if not _pool():
        get_run_logger().info("spread: a run outside a work pool (regflow replicate) transfers every "
                              "repository itself; `regflow serve` or a deployment run spreads it")
        return False
    return True


def split(specs: list[TransferSpec], parts: int) -> list[list[TransferSpec]]:
    """Up to ``parts`` shares, balanced by tag count: largest first, each to the lightest share."""
    shares: list[list[TransferSpec]] = [[] for _ in range(min(parts, len(specs)))]
    loads = [0] * len(shares)
    for spec in sorted(specs, key=lambda s: len(s.tags), reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(spec)
        loads[lightest] += max(1, len(spec.tags))
    return shares


async def transfer_in_parts(policy: Policy, specs: list[TransferSpec], stop: StopSignal,
                            hosts: tuple[str, str]) -> Parts:
    """``hosts``: the source's and the target's, whose cross-run limits the parts share."""
    logger = get_run_logger()
    if stop.is_set:  # stopped while planning: no part is started
        return Parts(results={s.source_repository: _stopped(s, stop) for s in specs}, started=0,
                     traffic=Traffic())
    execution = str(flow_run.id)
    pool = _pool()
    deployment = await _ensure_deployment(pool)
    shares = split(specs, policy.spread)
    await _warn_if_slots_are_short(len(shares), hosts)
    # The policy's Kbit/s hold for the whole execution: each part gets its share.
    speed = policy.speed if policy.speed <= 0 else max(1, policy.speed // len(shares))
    runs: list[FlowRun] = []
    for index, share in enumerate(shares):
        runs.append(await run_deployment(  # type: ignore[misc]
            deployment, timeout=0, as_subflow=True,
            parameters={"policy": policy.name, "specs": [s.model_dump(mode="json") for s in share],
                        "execution": execution, "index": index, "speed": speed},
            tags=[PART_TAG, PART_OF_TAG + execution]))
    logger.info("spread: %d repositories in %d parts on work pool %s", len(specs), len(runs), pool)
    async with get_client() as client:
        ended = await _wait(client, [r.id for r in runs], stop)
        return await _collect(client, policy, shares, ended, stop)


async def _warn_if_slots_are_short(parts: int, hosts: tuple[str, str]) -> None:
    """Each part's lanes hold a slot of both registries' limits: with fewer slots than lanes
    the parts wait for each other, and more of them buy nothing. Said, not raised: the limit
    protects the registry, for every run sharing it."""
    await runtime.ensure_registry_limits(*hosts)
    lanes = parts * TRANSFER_CONCURRENCY
    for host in sorted(set(hosts)):
        slots = await runtime.host_slots(host)
        if slots is not None and slots < lanes:
            get_run_logger().warning(
                "spread: %d parts run up to %d transfers at once, but %s allows %d across all runs: "
                "parts will wait for each other (`prefect gcl update %s --limit %d` raises it)",
                parts, lanes, runtime.limit_name(host), slots, runtime.limit_name(host), lanes)


def _pool() -> str:
    """The execution's work pool: set only for a deployment's run that a worker took."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None or run.deployment_id is None:
        return ""
    return run.work_pool_name or ""


async def _ensure_deployment(pool: str) -> str:
    """The part deployment on the execution's pool, its runs started in this checkout (the
    same path on every worker, as for the policies' deployments)."""
    name = f"{PART_FLOW}/{PART_DEPLOYMENT}"
    if pool in _deployed:
        return name
    wanted = {"working_dir": str(REPO_ROOT)}
    async with get_client() as client:
        try:
            current = await client.read_deployment_by_name(name)
            fresh = current.work_pool_name != pool or current.job_variables != wanted
        except ObjectNotFound:
            fresh = True
    if fresh:
        deployment = await replicate_part.ato_deployment(
            name=PART_DEPLOYMENT, tags=[PART_TAG], job_variables=wanted,
            description="One share of a spread regflow execution; started by the execution itself.")
        await deployment.aapply(work_pool_name=pool)
    _deployed.add(pool)
    return name


async def _wait(client: PrefectClient, ids: list[UUID], stop: StopSignal) -> list[FlowRun]:
    logger = get_run_logger()
    stopping = False
    listened = time.monotonic()
    restarts: dict[UUID, int] = {}
    # Whether this server keeps heartbeats: once the execution's own are on record, a part
    # (which beats from its first moment, as the execution does) that never beat has died.
    kept = False
    while True:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        if time.monotonic() - listened > liveness.HEARTBEAT_SECONDS:
            # The server's automation crashes a silent part; this catches one on a server
            # whose triggers service is off or behind, as single_active_replication does, and
            # one that died starting, before its first heartbeat, which the automation never judges.
            listened = time.monotonic()
            kept = kept or await liveness.last_heartbeat(
                client, await client.read_flow_run(UUID(flow_run.id))) is not None
            for run in runs:
                # Judged only once this attempt has run a whole window: a part started again
                # has not beaten yet, and its last heartbeat is the lost attempt's.
                if run.state is not None and run.state.type == StateType.RUNNING \
                        and _age(run.state) > liveness.SILENCE_SECONDS:
                    await liveness.crash_if_silent(client, run, seen_by=str(flow_run.id),
                                                   unheard_is_silent=kept)
        if stop.is_set and not stopping:
            stopping = True
            for run in runs:
                await _stop(client, run)
        open_runs = 0
        for run in runs:
            state = run.state
            if state is not None and state.type == StateType.PENDING and not stop.is_set \
                    and _age(state) > PART_PENDING_SECONDS and restarts.get(run.id, 0) < PART_ATTEMPTS:
                restarts[run.id] = restarts.get(run.id, 0) + 1
                # Forced: Prefect refuses Pending -> Scheduled to a caller that is not the run.
                await client.set_flow_run_state(run.id, AwaitingRetry(
                    scheduled_time=datetime.now(UTC), message="its worker never started it"), force=True)
                logger.warning("spread: part %s was still %s after %.0f s; scheduled again", run.name,
                               state.name, PART_PENDING_SECONDS)
            if state is None or not state.is_final():
                open_runs += 1
            elif state.type == StateType.CRASHED and not stop.is_set and run.run_count < PART_ATTEMPTS:
                await _crash_leftovers(client, run)
                # Prefect reschedules a run with a deployment: any worker of the pool takes it.
                result: OrchestrationResult[Any] = await client.set_flow_run_state(run.id, AwaitingRetry(
                    scheduled_time=datetime.now(UTC), message=f"its machine was lost: {state.message}"))
                if result.status == SetStateStatus.ACCEPT:
                    logger.warning("spread: part %s crashed (%s); scheduled again, attempt %d of %d",
                                   run.name, state.message, run.run_count + 1, PART_ATTEMPTS)
                    open_runs += 1
                else:
                    logger.warning("spread: part %s crashed (%s); Prefect refused to schedule it again: %s",
                                   run.name, state.message, result.details)
        if not open_runs:
            for run in runs:
                if run.state is not None and run.state.type == StateType.CRASHED:
                    await _crash_leftovers(client, run)
            return runs
        await asyncio.sleep(PART_POLL_SECONDS)


async def _crash_leftovers(client: PrefectClient, run: FlowRun) -> None:
    """The transfers a lost part was running when its process died stay Running on the server
    unless someone ends them: Crashed, as the part is."""
    task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    for task_run in task_runs:
        if task_run.state is not None and not task_run.state.is_final():
            await client.set_task_run_state(task_run.id, Crashed(message="its part's machine was lost"),
                                            force=True)


def _age(state: State[object]) -> float:
    return (datetime.now(UTC) - state.timestamp).total_seconds()


async def _stop(client: PrefectClient, run: FlowRun) -> None:
    state = run.state
    if state is None or state.is_final() or state.type == StateType.CANCELLING:
        return
    # A part not yet taken by a worker ends at once; a running one stops its transfers itself.
    new: State[object] = Cancelling(message="its execution was stopped") if state.type == StateType.RUNNING \
        else Cancelled(message="its execution was stopped")
    await client.set_flow_run_state(run.id, new, force=True)


async def _collect(client: PrefectClient, policy: Policy, shares: list[list[TransferSpec]],
                   runs: list[FlowRun], stop: StopSignal) -> Parts:
    """Each part's results, and what stands for them where a part left none (it was stopped
    before it ran, or it failed for good)."""
    by_index = {int(r.parameters.get("index", -1)): r for r in runs}
    slug = runtime.slug(policy.name)
    results: dict[str, TransferResult | BaseException] = {}
    traffic, started = Traffic(), 0
    for index, share in enumerate(shares):
        run = by_index[index]
        rows = await _rows(client, run, RESULTS_KEY + slug)
        found = read_result_rows(rows) if rows is not None else {}
        started += sum(1 for row in rows or [] if row.get("started"))
        for spec in share:
            results[spec.source_repository] = found.get(spec.source_repository) or _missing(spec, run, stop)
        traffic_rows = await _rows(client, run, TRAFFIC_KEY + slug)
        if traffic_rows is not None:
            traffic = traffic.plus(Traffic.from_rows(traffic_rows))
    return Parts(results=results, started=started, traffic=traffic)


def _stopped(spec: TransferSpec, stop: StopSignal) -> TransferResult:
    return TransferResult(
        source_repository=spec.source_repository, target_repository=spec.target_repository,
        tags=[TagOutcome(tag=t.tag, digest=t.digest, status="stopped", reason=stop.reason)
              for t in spec.tags])


def _missing(spec: TransferSpec, run: FlowRun, stop: StopSignal) -> TransferResult | BaseException:
    if stop.is_set:
        return _stopped(spec, stop)
    state = run.state
    return ReplicationError(f"part {run.name} ended {state.name if state else 'without a state'} without "
                            f"results: {state.message if state else ''}", transient=True)


async def _rows(client: PrefectClient, run: FlowRun, key: str) -> list[dict[str, object]] | None:
    found = await client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=[key])),
        sort=ArtifactSort.CREATED_DESC, limit=1)
    if not found:
        return None
    data = found[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return rows if isinstance(rows, list) else None
