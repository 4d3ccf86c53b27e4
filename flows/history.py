"""Executions read back from Prefect's state store: flow runs of ``replicate`` tagged with a
policy, their task runs, the artifacts each run published (its task table, each tag's outcome,
its failed-images report) and its logs."""

from __future__ import annotations

import asyncio
import json
import logging
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
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTaskRunId,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES, Artifact, FlowRun, State, TaskRun
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from adapters.errors import ConfigError
from flows.details import FAILED_IMAGES_KEY, TAG_RESULTS_KEY, TASK_TABLE_KEY, key
from flows.runtime import TASK_RUNS_TAG, policy_tag
from tasks.report import FailedImage, FailedImagesReport

# How long a reader of an execution that ended this recently waits for the server to record
# its task runs (they arrive as events; the server writes them in batches every second).
RECORD_WAIT_SECONDS = 60.0
# The server records task runs in batches every second (flows.prefect_server.SERVER_TUNING).
RECORD_POLL_SECONDS = 0.25
# The tag linking a retry to the execution it retries: ``retry-of:<flow run id>``.
RETRY_TAG = "retry-of:"
# The task key Prefect gives the placeholder task run of a deployment run started from a flow.
PLACEHOLDER_TASK_KEY = "prefect.deployments.flow_runs.run_deployment."
# Log lines read per request: the server's own default page.
LOG_PAGE = 200


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
    ended: bool = False  # in a final state: Completed, Failed, Cancelled, Crashed
    retry_of: str | None = None


class TagRecord(BaseModel):
    repository: str
    target: str
    tag: str
    digest: str
    # The target's digest when it is not the source's (an index rewritten for the policy's
    # platforms); empty in artifacts written before it existed.
    pushed_digest: str = ""
    status: str
    reason: str
    bytes: int


class ExecutionDetail(BaseModel):
    """``regflow executions show``: the execution, what happened to each tag (those identical
    on the target only as counts), and its failed-images report when it has failures."""

    execution: ExecutionRecord
    # The task table's rows: every repository, those that failed before a task run included.
    repositories: list[dict[str, object]]
    tags: list[TagRecord]
    failed_images: FailedImagesReport | None


class LogLine(BaseModel):
    timestamp: str
    level: str
    logger: str
    task: str | None
    message: str


async def wait_recorded(flow_run_id: str, expected_task_runs: int,
                        client: PrefectClient | None = None) -> bool:
    """Task runs reach the server as events, recorded a little after the run that started them
    ended: wait until it (with its parts, flows/spread.py) holds ``expected_task_runs`` finished
    ones (False: not in RECORD_WAIT_SECONDS). The run itself does not wait; whoever reads its
    task runs does."""
    if client is None:
        async with get_client() as own:
            return await wait_recorded(flow_run_id, expected_task_runs, own)
    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    runs = await _with_parts(client, UUID(flow_run_id))
    # Counted by the server, not read back: reading every task run four times a second kept
    # the server (whose recorder shares its event loop) from recording them (300 task runs:
    # ~55 s of waiting, measured on the manysmall benchmark).
    query = {"flow_runs": FlowRunFilter(id=FlowRunFilterId(any_=runs)).model_dump(mode="json"),
             "task_runs": TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(
                 any_=list(TERMINAL_STATES)))).model_dump(mode="json")}
    while time.monotonic() < deadline:
        recorded = (await client.request("POST", "/task_runs/count", json=query)).json()
        if int(recorded) >= expected_task_runs:
            return True
        await asyncio.sleep(RECORD_POLL_SECONDS)
    return False


async def _with_parts(client: PrefectClient, run_id: UUID) -> list[UUID]:
    """The execution's flow run and its parts' (a spread execution's transfers ran in those)."""
    return [run_id, *(p.id for p in await _parts(client, run_id))]


async def _parts(client: PrefectClient, run_id: UUID) -> list[FlowRun]:
    return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))


def _latest_attempts(task_runs: list[TaskRun], parts: list[FlowRun]) -> list[TaskRun]:
    """A part that ran again (its machine was lost) did all its transfers again: its earlier
    attempt's task runs are left out."""
    attempt = {p.id: p.run_count for p in parts}
    return [t for t in task_runs if t.flow_run_id not in attempt
            or t.flow_run_run_count == attempt[t.flow_run_id]]


def _is_transfer(task_run: TaskRun) -> bool:
    # A spread execution also holds the placeholders Prefect makes for its part runs.
    return not task_run.task_key.startswith(PLACEHOLDER_TASK_KEY)


async def _task_runs(client: PrefectClient, run: FlowRun) -> list[TaskRun]:
    """The run's task runs (its parts' too), all of them when it ended moments ago: it tags
    itself with how many it started, and the server may not have recorded the last ones yet."""
    parts = await _parts(client, run.id)
    runs = [run.id, *(p.id for p in parts)]

    async def read() -> list[TaskRun]:
        found = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))
        return _latest_attempts([t for t in found if _is_transfer(t)], parts)

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
        return [await _record(client, run, await _artifacts(client, run)) for run in runs]


async def find_run(client: PrefectClient, id_or_name: str) -> FlowRun:
    """An execution by its flow run's id or name (as ``regflow executions`` lists it)."""
    try:
        run_id: UUID | None = UUID(id_or_name)
    except ValueError:
        run_id = None
    if run_id is not None:
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            run = None
        if run is not None:
            return run
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["replicate"])),
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[id_or_name])), limit=2)
    if not runs:
        raise ConfigError(f"no execution {id_or_name!r}: `regflow executions` lists them")
    if len(runs) > 1:
        raise ConfigError(f"{len(runs)} executions are named {id_or_name!r}: give its id")
    return runs[0]


async def read_execution(id_or_name: str) -> ExecutionDetail:
    async with get_client() as client:
        run = await find_run(client, id_or_name)
        artifacts = await _artifacts(client, run)
        record = await _record(client, run, artifacts)
    return ExecutionDetail(execution=record, tags=_tag_records(artifacts, record.policy),
                           repositories=_artifact_rows(artifacts, key(TASK_TABLE_KEY, record.policy)) or [],
                           failed_images=_report(run, record.policy, artifacts))


async def read_report(id_or_name: str) -> tuple[ExecutionRecord, FailedImagesReport | None]:
    """The execution and its failed-images report: None when it recorded none (it had no
    failures, or ended before it could write one)."""
    detail = await read_execution(id_or_name)
    return detail.execution, detail.failed_images


async def read_logs(id_or_name: str, task: str | None = None) -> list[LogLine]:
    """The execution's log lines, oldest first; with ``task``, only those of the task runs of
    that source repository (its transfer, and its retries, which are the same task run)."""
    async with get_client() as client:
        run = await find_run(client, id_or_name)
        parts = await _parts(client, run.id)
        runs = [run.id, *(p.id for p in parts)]
        task_runs = _latest_attempts([t for t in await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[task])) if task else None)
            if _is_transfer(t)], parts)
        if task and not task_runs:
            raise ConfigError(f"execution {run.name} has no task {task!r}: "
                              f"`regflow executions show {run.name}` lists them")
        names = {t.id: t.name for t in task_runs}
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs),
                               task_run_id=LogFilterTaskRunId(any_=list(names)) if task else None)
        lines: list[LogLine] = []
        while True:
            page = await client.read_logs(log_filter, limit=LOG_PAGE, offset=len(lines),
                                          sort=LogSort.TIMESTAMP_ASC)
            lines.extend(LogLine(timestamp=log.timestamp.isoformat(), level=logging.getLevelName(log.level),
                                 logger=log.name, message=log.message,
                                 task=names.get(log.task_run_id) if log.task_run_id else None)
                         for log in page)
            if len(page) < LOG_PAGE:
                return lines


async def _artifacts(client: PrefectClient, run: FlowRun) -> list[Artifact]:
    return await client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), type=ArtifactFilterType(any_=["table"])))


async def _record(client: PrefectClient, run: FlowRun, artifacts: list[Artifact]) -> ExecutionRecord:
    task_runs = await _task_runs(client, run)
    tags = list(run.tags)
    policy = _tag_value(tags, "policy:") or str(run.parameters.get("policy", ""))
    # The task table (flows/runtime.py), among the run's other table artifacts.
    table = next((a for a in artifacts if a.key == key(TASK_TABLE_KEY, policy)), None)
    rows = _rows(table.data if table else None)
    return ExecutionRecord(
        id=str(run.id), name=run.name, tags=tags, policy=policy,
        trigger=_tag_value(tags, "trigger:") or str(run.parameters.get("trigger", "")),
        state=_state_name(run.state), message=_state_message(run.state),
        ended=run.state is not None and run.state.is_final(),
        start_time=run.start_time.isoformat() if run.start_time else None,
        end_time=run.end_time.isoformat() if run.end_time else None,
        retry_of=_tag_value(tags, RETRY_TAG) or run.parameters.get("retry_of") or None,
        tasks=sorted((TaskRecord(name=t.name, state=_state_name(t.state),
                                 message=_state_message(t.state), row=rows.get(t.name, {}))
                      for t in task_runs), key=lambda t: t.name),
    )


def _artifact_rows(artifacts: list[Artifact], wanted: str) -> list[dict[str, object]] | None:
    found = next((a for a in artifacts if a.key == wanted), None)
    if found is None:
        return None
    data = json.loads(found.data) if isinstance(found.data, str) else found.data
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def _tag_records(artifacts: list[Artifact], policy: str) -> list[TagRecord]:
    rows = _artifact_rows(artifacts, key(TAG_RESULTS_KEY, policy)) or []
    return [TagRecord.model_validate(r) for r in rows]


def _report(run: FlowRun, policy: str, artifacts: list[Artifact]) -> FailedImagesReport | None:
    rows = _artifact_rows(artifacts, key(FAILED_IMAGES_KEY, policy))
    if rows is None:
        return None
    found = next(a for a in artifacts if a.key == key(FAILED_IMAGES_KEY, policy))
    return FailedImagesReport(policy=policy, execution_id=str(run.id), execution_name=run.name,
                              created=run.end_time or found.created or datetime.now(UTC),
                              images=[FailedImage.model_validate(r) for r in rows])


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
