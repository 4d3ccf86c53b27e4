"""Executions read back from Prefect's state store: flow runs of ``replicate`` tagged with a
policy, their task runs, and the table artifact each run published."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
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
    FlowRunFilterId,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES, FlowRun, State, TaskRun
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import BaseModel

from flows.runtime import TASK_RUNS_TAG, policy_tag

# How long a reader of an execution that ended this recently waits for the server to record
# its task runs (they arrive as events; the server writes them in batches every second).
RECORD_WAIT_SECONDS = 60.0
# The server records task runs in batches every second (flows.prefect_server.SERVER_TUNING).
RECORD_POLL_SECONDS = 0.25


class TaskRecord(BaseModel):
    name: str
    state: str
    message: str = ""
    row: dict[str, object] = {}


class ExecutionRecord(BaseModel):
    id: str
    name: str
    policy: str
    trigger: str
    state: str
    message: str
    start_time: str | None
    end_time: str | None
    tags: list[str]
    tasks: list[TaskRecord]


async def wait_recorded(flow_run_id: str, expected_task_runs: int,
                        client: PrefectClient | None = None) -> bool:
    """Task runs reach the server as events, recorded a little after the run that started them
    ended: wait until it holds ``expected_task_runs`` finished ones (False: not in
    RECORD_WAIT_SECONDS). The run itself does not wait; whoever reads its task runs does."""
    if client is None:
        async with get_client() as own:
            return await wait_recorded(flow_run_id, expected_task_runs, own)
    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    # Counted by the server, not read back: reading every task run four times a second kept
    # the server (whose recorder shares its event loop) from recording them (300 task runs:
    # ~55 s of waiting, measured on the manysmall benchmark).
    query = {"flow_runs": FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])).model_dump(mode="json"),
             "task_runs": TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(
                 any_=list(TERMINAL_STATES)))).model_dump(mode="json")}
    while time.monotonic() < deadline:
        recorded = (await client.request("POST", "/task_runs/count", json=query)).json()
        if int(recorded) >= expected_task_runs:
            return True
        await asyncio.sleep(RECORD_POLL_SECONDS)
    return False


async def _task_runs(client: PrefectClient, run: FlowRun) -> list[TaskRun]:
    """The run's task runs, all of them when it ended moments ago: it tags itself with how
    many it started, and the server may not have recorded the last ones yet."""
    async def read() -> list[TaskRun]:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))

    task_runs = await read()
    tagged = _tag_value(list(run.tags), TASK_RUNS_TAG)
    expected = int(tagged) if tagged.isdigit() else 0
    finished = sum(1 for t in task_runs if t.state is not None and t.state.is_final())
    if finished < expected and _ended_within(run, RECORD_WAIT_SECONDS):
        if await wait_recorded(str(run.id), expected, client):
            task_runs = await read()
    return task_runs


def _ended_within(run: FlowRun, seconds: float) -> bool:
    return run.end_time is not None and (datetime.now(UTC) - run.end_time).total_seconds() < seconds


async def list_executions(policy: str | None = None, limit: int = 20) -> list[ExecutionRecord]:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["replicate"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[policy_tag(policy)]))
            if policy else None,
            sort=FlowRunSort.START_TIME_DESC, limit=limit)
        records = []
        for run in runs:
            task_runs = await _task_runs(client, run)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), type=ArtifactFilterType(any_=["table"])))
            rows = _rows(artifacts[0].data if artifacts else None)
            tags = list(run.tags)
            records.append(ExecutionRecord(
                id=str(run.id), name=run.name, tags=tags,
                policy=_tag_value(tags, "policy:") or str(run.parameters.get("policy", "")),
                trigger=_tag_value(tags, "trigger:") or str(run.parameters.get("trigger", "")),
                state=_state_name(run.state), message=_state_message(run.state),
                start_time=run.start_time.isoformat() if run.start_time else None,
                end_time=run.end_time.isoformat() if run.end_time else None,
                tasks=sorted((TaskRecord(name=t.name, state=_state_name(t.state),
                                         message=_state_message(t.state), row=rows.get(t.name, {}))
                              for t in task_runs), key=lambda t: t.name),
            ))
    return records


def _state_name(state: State | None) -> str:
    return (state.name or "Unknown") if state else "Unknown"


def _state_message(state: State | None) -> str:
    return (state.message or "") if state else ""


def _tag_value(tags: list[str], prefix: str) -> str:
    return next((t[len(prefix):] for t in tags if t.startswith(prefix)), "")


def _rows(data: object) -> dict[str, dict[str, object]]:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return {}
    if not isinstance(data, list):
        return {}
    return {str(r.get("repository")): r for r in data if isinstance(r, dict)}
