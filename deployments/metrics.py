"""The figures `regflow serve` exposes on ``/metrics``, read back from Prefect.

Executions run in processes a worker starts (or a CLI call, or a worker on another host), so a
counter kept in memory there is gone when the run ends. Each execution instead leaves its
figures in Prefect at its end: the flow run's final state and times, its task table artifact
(``replication-<policy>``: tags copied/skipped/failed and bytes per repository) and its traffic
artifact (``traffic-<policy>``, tasks.models.Traffic: blobs uploaded/mounted, answers by status,
rate-limit holds). The collector reads the runs that ended since it last looked and folds each
one into counters once; a scrape is answered from them, read again only once they are older
than METRICS_CACHE_SECONDS.

Counters start at zero when serve starts (Prometheus' ``rate``/``increase`` expect that of a
restarted process); runs that ended while serve was down are not counted. The per-policy
gauges (last success, last status) are read from the whole history once per policy, so they
are right from the first scrape and a restart of serve does not disturb the stale alert. A read
cut short (READ_TIMEOUT_SECONDS) goes on where it stopped at the next scrape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel

from tasks.models import Traffic

logger = logging.getLogger(__name__)

# Scrapes within this long of the last read share it: two Prometheus servers of an HA pair, or
# a person's curl beside them, cost Prefect one read. Below Prometheus' default 15 s interval
# so that each of its scrapes still sees the runs ended since the previous one.
METRICS_CACHE_SECONDS: Final = 10.0
# The longest a scrape waits for Prefect; then it gets the figures of the last read, flagged
# stale by regflow_metrics_prefect_up. Below Prometheus' default scrape timeout (10 s).
READ_TIMEOUT_SECONDS: Final = 8.0
# Flow runs and artifacts read per request: Prefect's own default page size.
PAGE_SIZE: Final = 200
# A run's end time is recorded when its final state reaches the server, which may be after a
# read that looked past it; each read looks back this far, skipping runs already counted.
LOOKBACK_SECONDS: Final = 300.0
# Runs last from seconds (nothing changed) to hours (a first copy of a large registry).
DURATION_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                           14400.0, 28800.0)

Outcome = Literal["succeeded", "failed", "stopped", "crashed"]
OUTCOMES: Final[dict[StateType, Outcome]] = {
    StateType.COMPLETED: "succeeded", StateType.FAILED: "failed",
    StateType.CANCELLED: "stopped", StateType.CRASHED: "crashed"}
TASK_TABLE_PREFIX: Final = "replication-"
TRAFFIC_PREFIX: Final = "traffic-"
FLOW_NAME: Final = "replicate"



class PolicyState(BaseModel):
    """What the store says of a policy, for alerts to tell which ones should be succeeding."""

    name: str
    enabled: bool = True
    trigger: str = "manual"


Policies = Callable[[], Iterable[PolicyState]]


class RunFigures(BaseModel):
    """One ended execution, as Prefect holds it."""

    id: str
    policy: str
    outcome: Outcome
    ended: datetime
    seconds: float | None = None
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    traffic: Traffic | None = None


class Figures:
    """The metrics themselves, in a registry of their own (not the process-wide default one,
    which would also carry whatever else this process's libraries register)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.last_success = Gauge("regflow_policy_last_success_timestamp_seconds",
                                  "End of the policy's latest successful execution (Unix time)",
                                  ["policy"], registry=r)
        self.last_status = Gauge("regflow_policy_last_run_status",
                                 "1 for the outcome of the policy's latest ended execution, 0 for the others",
                                 ["policy", "status"], registry=r)
        self.last_end = Gauge("regflow_policy_last_run_timestamp_seconds",
                              "End of the policy's latest ended execution (Unix time)",
                              ["policy"], registry=r)
        self.runs = Counter("regflow_runs", "Executions ended since serve started, by outcome",
                            ["policy", "outcome"], registry=r)
        self.duration = Histogram("regflow_run_duration_seconds", "Execution wall time, start to end",
                                  ["policy"], buckets=DURATION_BUCKETS, registry=r)
        self.tags = Counter("regflow_tags", "Tags handled by ended executions, by result",
                            ["policy", "result"], registry=r)
        self.bytes = Counter("regflow_copied_bytes", "Blob bytes sent to targets", ["policy"], registry=r)
        self.blobs = Counter("regflow_blobs", "Blobs placed on targets: uploaded, or mounted without bytes",
                             ["policy", "route"], registry=r)
        self.requests = Counter("regflow_registry_requests",
                                "Registry requests by side and answer status ('error': no answer)",
                                ["policy", "registry", "status"], registry=r)
        self.holds = Counter("regflow_registry_rate_limit_holds",
                             "Times a 429 or a rate-limit header held every request to a registry",
                             ["policy", "registry"], registry=r)
        self.enabled = Gauge("regflow_policy_enabled",
                             "1 for an enabled policy, 0 for a disabled one; its trigger type as a label",
                             ["policy", "trigger"], registry=r)
        self.source_up = Gauge("regflow_metrics_prefect_up",
                               "1 when the last read of Prefect for these figures worked", registry=r)
        self.read_at = Gauge("regflow_metrics_read_timestamp_seconds",
                             "When these figures were last read from Prefect (Unix time)", registry=r)
        self._ended: dict[str, float] = {}  # policy -> end of the latest ended run shown
        self._succeeded: dict[str, float] = {}  # policy -> end of its latest success shown

    def count(self, run: RunFigures) -> None:
        """Fold one ended run into the counters (once per run: the caller sees to that)."""
        p = run.policy
        self.runs.labels(p, run.outcome).inc()
        if run.seconds is not None:
            self.duration.labels(p).observe(run.seconds)
        for result, n in (("copied", run.copied), ("skipped", run.skipped), ("failed", run.failed)):
            self.tags.labels(p, result).inc(n)
        self.bytes.labels(p).inc(run.bytes)
        if run.traffic is not None:
            self.blobs.labels(p, "uploaded").inc(run.traffic.blobs_uploaded)
            self.blobs.labels(p, "mounted").inc(run.traffic.blobs_mounted)
            for role, side in run.traffic.registries.items():
                self.holds.labels(p, role).inc(side.holds)
                for status, n in side.responses.items():
                    self.requests.labels(p, role, status).inc(n)
        self.latest(p, run.outcome, run.ended)

    def latest(self, policy: str, outcome: Outcome, ended: datetime) -> None:
        """Move the policy's gauges to this run when it ended after the one they show."""
        stamp = ended.timestamp()
        if outcome == "succeeded" and stamp > self._succeeded.get(policy, 0.0):
            self._succeeded[policy] = stamp
            self.last_success.labels(policy).set(stamp)
        if stamp < self._ended.get(policy, 0.0):
            return
        self._ended[policy] = stamp
        self.last_end.labels(policy).set(stamp)
        for name in OUTCOMES.values():
            self.last_status.labels(policy, name).set(1 if name == outcome else 0)

    def policies(self, states: Iterable[PolicyState]) -> None:
        """The store's policies as they are now; a removed policy's series go away."""
        self.enabled.clear()
        for state in states:
            self.enabled.labels(state.name, state.trigger).set(1 if state.enabled else 0)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsCollector:
    """Reads Prefect at most once per METRICS_CACHE_SECONDS, on demand of a scrape."""

    def __init__(self, policies: Policies, *, cache_seconds: float = METRICS_CACHE_SECONDS,
                 since: datetime | None = None) -> None:
        self.figures = Figures()
        self.policies = policies
        self.cache_seconds = cache_seconds
        self._since = since or datetime.now(UTC)  # counters cover runs ending after this
        self._counted: dict[str, datetime] = {}  # run id -> its end, for runs in the lookback
        self._seeded: set[str] = set()
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def exposition(self) -> bytes:
        await self.refresh()
        return self.figures.text()

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:  # scrapes arriving together wait for one read
            if not force and self._read_at is not None and \
                    time.monotonic() - self._read_at < self.cache_seconds:
                return
            try:
                states = list(self.policies())
            except Exception as exc:  # the store's last answer stays shown
                logger.warning("metrics: reading the policies failed: %s: %s", type(exc).__name__, exc)
                states = None
            if states is not None:
                self.figures.policies(states)
            try:
                async with asyncio.timeout(READ_TIMEOUT_SECONDS), get_client() as client:
                    await self._seed(client, [s.name for s in states or []])
                    await self._read_ended(client)
            except Exception as exc:  # the last figures are still served, flagged
                logger.warning("metrics: reading Prefect failed: %s: %s", type(exc).__name__, exc)
                self.figures.source_up.set(0)
            else:
                self.figures.source_up.set(1)
                self.figures.read_at.set(time.time())
            self._read_at = time.monotonic()

    async def _seed(self, client: PrefectClient, policies: list[str]) -> None:
        """The gauges of each policy not seen yet, from its whole history: two runs read."""
        for policy in sorted(set(policies) - self._seeded):
            for states in ([StateType.COMPLETED], list(OUTCOMES)):
                runs = await client.read_flow_runs(
                    flow_filter=_replicate(), limit=1, sort=FlowRunSort.END_TIME_DESC,
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"policy:{policy}"]),
                                                  state=_states(states)))
                for run in runs:
                    if (figures := _ended(run, policy)) is not None:
                        self.figures.latest(policy, figures.outcome, figures.ended)
            self._seeded.add(policy)

    async def _read_ended(self, client: PrefectClient) -> None:
        after = self._since
        if self._counted:
            after = max(after, max(self._counted.values()) - timedelta(seconds=LOOKBACK_SECONDS))
        runs: list[FlowRun] = []
        offset = 0
        while True:
            page = await client.read_flow_runs(
                flow_filter=_replicate(), sort=FlowRunSort.END_TIME_DESC, limit=PAGE_SIZE, offset=offset,
                # Prefect's DateTime is a datetime subclass its validation makes from a datetime.
                flow_run_filter=FlowRunFilter(end_time=FlowRunFilterEndTime(after_=after),  # type: ignore[arg-type]
                                              state=_states(list(OUTCOMES))))
            runs += [r for r in page if str(r.id) not in self._counted]
            if len(page) < PAGE_SIZE:
                break
            offset += PAGE_SIZE
        if not runs:
            return
        artifacts = await _artifacts(client, [r.id for r in runs])
        for run in sorted(runs, key=lambda r: r.end_time or after):
            figures = _ended(run, None, artifacts.get(str(run.id), []))
            if figures is None:
                continue
            self.figures.count(figures)
            self._counted[figures.id] = figures.ended
        newest = max(self._counted.values(), default=after)
        self._counted = {k: v for k, v in self._counted.items()
                         if v >= newest - timedelta(seconds=2 * LOOKBACK_SECONDS)}


def _replicate() -> FlowFilter:
    return FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))


def _states(types: list[StateType]) -> FlowRunFilterState:
    return FlowRunFilterState(type=FlowRunFilterStateType(any_=types))


async def _artifacts(client: PrefectClient, run_ids: list[UUID]) -> dict[str, list[Artifact]]:
    found: dict[str, list[Artifact]] = {}
    for start in range(0, len(run_ids), PAGE_SIZE):
        ids = run_ids[start:start + PAGE_SIZE]
        offset = 0
        while True:
            page = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids),
                                               type=ArtifactFilterType(any_=["table"])),
                limit=PAGE_SIZE, offset=offset)
            for artifact in page:
                found.setdefault(str(artifact.flow_run_id), []).append(artifact)
            if len(page) < PAGE_SIZE:
                break
            offset += PAGE_SIZE
    return found


def _ended(run: FlowRun, policy: str | None, artifacts: list[Artifact] | None = None) -> RunFigures | None:
    """``run``'s figures, None unless it ended in a state that counts."""
    state = run.state
    if state is None or state.type not in OUTCOMES or run.end_time is None:
        return None
    name = policy or next((t.removeprefix("policy:") for t in run.tags if t.startswith("policy:")), "") \
        or str(run.parameters.get("policy", ""))
    if not name:
        return None
    figures = RunFigures(id=str(run.id), policy=name, outcome=OUTCOMES[state.type], ended=run.end_time,
                         seconds=(run.end_time - run.start_time).total_seconds() if run.start_time else None)
    for artifact in artifacts or []:
        rows = _rows(artifact.data)
        key = artifact.key or ""
        if key.startswith(TRAFFIC_PREFIX):
            figures.traffic = Traffic.from_rows(rows)
        elif key.startswith(TASK_TABLE_PREFIX):
            figures.copied = _total(rows, "copied")
            figures.skipped = _total(rows, "skipped")
            figures.failed = _total(rows, "failed")
            figures.bytes = _total(rows, "bytes")
    return figures


def _rows(data: object) -> list[dict[str, object]]:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return []
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def _total(rows: list[dict[str, object]], column: str) -> int:
    return sum(v for r in rows if isinstance(v := r.get(column), int) and not isinstance(v, bool) and v >= 0)
