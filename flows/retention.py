"""Retention of executions: which finished runs of a policy to delete from Prefect, and deleting
them with everything that hangs off them.

An execution of policy P is a run of the ``replicate`` flow tagged ``policy:P`` (flows/history.py
finds them the same way). Of those, only finished ones (Completed, Failed, Cancelled, Crashed)
are ever deleted or counted: running, pending, paused and scheduled runs are left alone.

What goes with a flow run (Prefect 3.9, the version regflow pins): its states, task runs (with
their states) and inputs by the database's cascade, and its logs (the task runs' too: they carry
the flow run's id) by a background task the server queues with the delete. Artifacts have no
foreign key, so they are deleted here, through Prefect's artifact API, which also moves a key's
"latest" back to the version before. Events about the run expire with the server's own event
retention (PREFECT_SERVER_EVENTS_RETENTION_PERIOD).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import TERMINAL_STATES, FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from adapters.errors import ConfigError
from flows.runtime import policy_tag
from flows.spread import PART_OF_TAG
from policies.models import Policy, Retention
from policies.store import Store

# The flow every execution is a run of (flows/replicate.py); with the policy tag, what makes a
# run one of regflow's.
FLOW_NAME: Final = "replicate"
# Prefect's default API limit (PREFECT_SERVER_API_DEFAULT_LIMIT): the most one read may ask for.
READ_PAGE: Final = 200
# The server's own limit for one bulk delete of flow runs.
DELETE_BATCH: Final = 50
# Once a day, as Harbor's execution sweep: retention is counted in days.
PRUNE_INTERVAL_SECONDS: Final = 24 * 3600.0
# serve's own start (deployments, the worker) goes first; the first sweep follows soon after,
# so a serve restarted every night still prunes.
PRUNE_FIRST_DELAY_SECONDS: Final = 60.0

_FINISHED: Final = sorted(TERMINAL_STATES)
logger = logging.getLogger(__name__)


class RunFacts(BaseModel):
    """What the retention rule looks at in a flow run."""

    id: UUID
    name: str
    flow_id: UUID
    tags: list[str]
    state: StateType | None
    end_time: datetime | None

    @classmethod
    def of(cls, run: FlowRun) -> RunFacts:
        return cls(id=run.id, name=run.name, flow_id=run.flow_id, tags=list(run.tags),
                   state=run.state.type if run.state else None, end_time=run.end_time)


def expired(runs: Iterable[RunFacts], *, flow_id: UUID, policy: str, retention: Retention,
            now: datetime) -> list[RunFacts]:
    """The rule: of the finished executions of ``policy`` among ``runs``, newest first by end
    time, those after the first ``keep_last`` that ended more than ``days`` before ``now``.
    Runs of another flow or policy, and unfinished ones, are never chosen and never counted."""
    tag = policy_tag(policy)
    finished = sorted(
        (r for r in runs if r.flow_id == flow_id and tag in r.tags and r.state in TERMINAL_STATES
         and r.end_time is not None),
        key=lambda r: (r.end_time, r.id), reverse=True)
    cutoff = now - timedelta(days=retention.days)
    return [r for r in finished[retention.keep_last:] if r.end_time is not None and r.end_time < cutoff]


class PrunedRun(BaseModel):
    id: str
    name: str
    state: str
    end_time: str


class PolicyPrune(BaseModel):
    """One policy's part of a prune: the executions deleted (or, dry, to be deleted)."""

    policy: str
    days: int
    keep_last: int
    executions: list[PrunedRun] = []
    task_runs: int = 0
    artifacts: int = 0
    error: str | None = None


class PruneReport(BaseModel):
    dry_run: bool
    policies: list[PolicyPrune] = []

    @property
    def deleted(self) -> int:
        return sum(len(p.executions) for p in self.policies)

    @property
    def failed(self) -> bool:
        return any(p.error for p in self.policies)


async def prune(policies: Sequence[Policy], *, dry_run: bool = False, now: datetime | None = None,
                client: PrefectClient | None = None) -> PruneReport:
    """Apply each policy's retention to its executions; errors are per policy, in the report."""
    if client is None:
        async with get_client() as own:
            return await prune(policies, dry_run=dry_run, now=now, client=own)
    now = now or datetime.now(UTC)
    report = PruneReport(dry_run=dry_run)
    flow_id: UUID | None = None
    problem: str | None = None
    try:
        flow_id = (await client.read_flow_by_name(FLOW_NAME)).id
    except ObjectNotFound:
        pass  # nothing was ever replicated through this server
    except httpx.HTTPError as exc:
        problem = _one_line(exc)
    for policy in policies:
        entry = PolicyPrune(policy=policy.name, days=policy.retention.days,
                            keep_last=policy.retention.keep_last, error=problem)
        report.policies.append(entry)
        if flow_id is None or problem:
            continue
        try:
            await _prune_policy(client, _Scope(flow_id, policy.name, policy.retention, now), entry, dry_run)
        except httpx.HTTPError as exc:
            entry.error = _one_line(exc)
    return report


class _Scope:
    """The runs one policy's retention may touch, as Prefect filters."""

    def __init__(self, flow_id: UUID, policy: str, retention: Retention, now: datetime) -> None:
        self.flow_id, self.policy, self.retention, self.now = flow_id, policy, retention, now
        self.cutoff = now - timedelta(days=retention.days)
        self.flows = FlowFilter(id=FlowFilterId(any_=[flow_id]))

    def finished(self, **more: Any) -> FlowRunFilter:
        return FlowRunFilter(tags=FlowRunFilterTags(all_=[policy_tag(self.policy)]),
                             state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_FINISHED)), **more)

    def expired(self, runs: Iterable[RunFacts]) -> list[RunFacts]:
        return expired(runs, flow_id=self.flow_id, policy=self.policy, retention=self.retention,
                       now=self.now)


async def _prune_policy(client: PrefectClient, scope: _Scope, entry: PolicyPrune, dry_run: bool) -> None:
    keep = scope.retention.keep_last
    kept: list[RunFacts] = []
    while len(kept) < keep:
        wanted = min(READ_PAGE, keep - len(kept))
        page = await client.read_flow_runs(
            flow_filter=scope.flows, sort=FlowRunSort.END_TIME_DESC, limit=wanted, offset=len(kept),
            flow_run_filter=scope.finished(end_time=FlowRunFilterEndTime(is_null_=False)))
        kept.extend(RunFacts.of(r) for r in page)
        if len(page) < wanted:
            return  # fewer finished executions than keep_last: all are kept
    # Older than the cutoff and no newer than the oldest kept run: the kept ones that ended at
    # that same moment come back too, and the rule below leaves them.
    kept_ids = {r.id for r in kept}
    oldest_kept = min((r.end_time for r in kept if r.end_time is not None), default=scope.cutoff)
    candidates = scope.finished(end_time=_ended_before(min(scope.cutoff, oldest_kept)))
    # Deleted runs leave the query; the ones read but not deleted stay in front of the rest
    # (the order is by end time), so the next page starts after them. One the server refused
    # to delete has left the query too (no longer finished); counting it anyway can only skip a
    # run until the next sweep, never read the same page forever.
    passed = 0
    while True:
        read = [RunFacts.of(r) for r in await client.read_flow_runs(
            flow_filter=scope.flows, flow_run_filter=candidates, sort=FlowRunSort.END_TIME_DESC,
            limit=READ_PAGE, offset=passed)]
        if not read:
            return
        ids = {r.id for r in read} - kept_ids
        # The rule decides, whatever the query returned; the kept runs take their places first.
        chosen = [r for r in scope.expired([*kept, *(r for r in read if r.id in ids)]) if r.id in ids]
        passed += len(read) - len(chosen)
        for start in range(0, len(chosen), DELETE_BATCH):
            batch = chosen[start:start + DELETE_BATCH]
            if dry_run:
                entry.task_runs += await _count_task_runs(client, [r.id for r in batch])
                entry.artifacts += await _count_artifacts(client, [r.id for r in batch])
                entry.executions.extend(_pruned(r) for r in batch)
            else:
                gone = await _delete(client, scope, batch, entry)
                passed += len(batch) - len(gone)
        if dry_run:
            passed += len(chosen)


async def _delete(client: PrefectClient, scope: _Scope, batch: list[RunFacts],
                  entry: PolicyPrune) -> set[UUID]:
    """Delete ``batch`` and its artifacts; the ids the server deleted. The server checks the
    scope again in the same transaction, so a run retried (moved out of its final state) since
    it was read stays."""
    ids = [r.id for r in batch]
    parts = await _parts_of(client, ids)  # read first: a deleted run's link to its parts goes with it
    artifacts = await _artifacts_of(client, ids)
    task_runs = await _count_task_runs(client, ids)
    still_expired = scope.finished(id=FlowRunFilterId(any_=ids), end_time=_ended_before(scope.cutoff))
    # The client's typed list of routes lacks the server's bulk delete.
    response = await client.request("POST", "/flow_runs/bulk_delete", json={  # type: ignore[arg-type]
        "flow_runs": still_expired.model_dump(mode="json", exclude_unset=True), "limit": len(ids)})
    gone = {UUID(str(i)) for i in response.json()["deleted"]}
    stayed = [i for i in ids if i not in gone]
    if stayed:
        task_runs -= await _count_task_runs(client, stayed)
    for artifact_id, run_id in artifacts:
        if run_id in gone:
            with suppress(ObjectNotFound):
                await client.delete_artifact(artifact_id)
            entry.artifacts += 1
    entry.task_runs += task_runs
    entry.executions.extend(_pruned(r) for r in batch if r.id in gone)
    await _delete_parts(client, [part for part, parent in parts if parent in gone], entry)
    return gone


async def _parts_of(client: PrefectClient, run_ids: list[UUID]) -> list[tuple[UUID, UUID]]:
    """(part run id, execution id) of the parts of spread executions (flows/spread.py)."""
    found: list[tuple[UUID, UUID]] = []
    query = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=run_ids))
    while True:
        page = await client.read_flow_runs(flow_run_filter=query, limit=READ_PAGE, offset=len(found))
        for run in page:
            parent = next((t.removeprefix(PART_OF_TAG) for t in run.tags if t.startswith(PART_OF_TAG)), "")
            with suppress(ValueError):
                found.append((run.id, UUID(parent)))
        if len(page) < READ_PAGE:
            return found


async def _delete_parts(client: PrefectClient, part_ids: list[UUID], entry: PolicyPrune) -> None:
    """A deleted execution's parts go with it: their task runs are its Harbor tasks."""
    for start in range(0, len(part_ids), DELETE_BATCH):
        ids = part_ids[start:start + DELETE_BATCH]
        artifacts = await _artifacts_of(client, ids)
        entry.task_runs += await _count_task_runs(client, ids)
        query = FlowRunFilter(id=FlowRunFilterId(any_=ids))
        await client.request("POST", "/flow_runs/bulk_delete", json={  # type: ignore[arg-type]
            "flow_runs": query.model_dump(mode="json", exclude_unset=True), "limit": len(ids)})
        for artifact_id, _ in artifacts:
            with suppress(ObjectNotFound):
                await client.delete_artifact(artifact_id)


async def _artifacts_of(client: PrefectClient, run_ids: list[UUID]) -> list[tuple[UUID, UUID]]:
    """(artifact id, flow run id) of every artifact of these runs, their task runs' included."""
    found: list[tuple[UUID, UUID]] = []
    query = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids))
    while True:
        page = await client.read_artifacts(artifact_filter=query, limit=READ_PAGE, offset=len(found))
        found.extend((a.id, a.flow_run_id) for a in page if a.flow_run_id is not None)
        if len(page) < READ_PAGE:
            return found


async def _count_task_runs(client: PrefectClient, run_ids: list[UUID]) -> int:
    query = {"flow_runs": FlowRunFilter(id=FlowRunFilterId(any_=run_ids)).model_dump(mode="json",
                                                                                      exclude_unset=True)}
    return int((await client.request("POST", "/task_runs/count", json=query)).json())


async def _count_artifacts(client: PrefectClient, run_ids: list[UUID]) -> int:
    query = {"artifacts": ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)).model_dump(
        mode="json", exclude_unset=True)}
    return int((await client.request("POST", "/artifacts/count", json=query)).json())


def _ended_before(moment: datetime) -> FlowRunFilterEndTime:
    return FlowRunFilterEndTime.model_validate({"before_": moment})


def _pruned(run: RunFacts) -> PrunedRun:
    return PrunedRun(id=str(run.id), name=run.name, state=run.state.value if run.state else "",
                     end_time=run.end_time.isoformat() if run.end_time else "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"Prefect API: {text[0] if text else type(exc).__name__}"


def summary(report: PruneReport) -> str:
    """One line for a log: what was deleted, and which policies failed."""
    verb = "would delete" if report.dry_run else "deleted"
    parts = [f"{p.policy} {len(p.executions)}" for p in report.policies if p.executions]
    line = f"retention: {verb} {report.deleted} execution(s)" + (f" ({', '.join(parts)})" if parts else "")
    failures = [f"{p.policy}: {p.error}" for p in report.policies if p.error]
    return line + (f"; failed: {'; '.join(failures)}" if failures else "")


async def prune_periodically(store: Store, stopping: asyncio.Event, *,
                             first_delay: float = PRUNE_FIRST_DELAY_SECONDS,
                             interval: float = PRUNE_INTERVAL_SECONDS) -> None:
    """`regflow serve`'s retention: a sweep ``first_delay`` after the start, then every
    ``interval``, until ``stopping`` is set. A failed sweep is reported and the next one goes on."""
    delay = first_delay
    while not stopping.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return
        delay = interval
        try:
            report = await prune(store.policies())
        except ConfigError as exc:
            print(f"retention: {exc}", flush=True)
            continue
        except Exception as exc:  # the next sweep may work: serve must not end over this one
            logger.exception("retention sweep failed")
            print(f"retention: sweep failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        if report.deleted or report.failed:
            print(summary(report), flush=True)
