"""Executions in Harbor's words: a Prefect flow run of a policy as ``ReplicationExecution``, each
source repository of it as ``ReplicationTask``.

Harbor's execution statuses are InProgress, Succeeded, Failed and Stopped; its tasks carry its
job service's words (Pending, Running, Success, Error, Stopped)."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from deployments.harbor_api.models import ExecutionOut, TaskOut
from deployments.harbor_api.runs import RunView, TaskView

# Prefect states of a run that has not ended (Late: due but not picked up; Submitting: a worker
# starting its process; Paused: waiting). A run whose record says it has not ended is underway
# whatever its state's name: Prefect adds names (Submitting came with 3.x workers).
_UNDERWAY: Final = {"Scheduled", "Late", "Pending", "Submitting", "Running", "AwaitingRetry", "Retrying",
                    "Paused", "AwaitingConcurrencySlot"}
_WAITING: Final = {"Scheduled", "Pending", "Submitting", "Late"}
_STOPPED: Final = {"Cancelling", "Cancelled"}
_FAILED: Final = {"Failed", "Crashed", "TimedOut"}
# regflow's trigger words (flows/runtime.py) as Harbor's.
TRIGGERS: Final = {"manual": "manual", "schedule": "scheduled", "scheduled": "scheduled",
                   "event": "event_based"}
# What a task's outcome in the run's task table (tasks/models.py) is called by Harbor's jobs.
_TABLE_WORDS: Final = {"Succeeded": "Success", "Failed": "Error", "Stopped": "Stopped"}


def task_status(task: TaskView) -> str:
    if task.state in _UNDERWAY:
        return "Pending" if task.state in _WAITING else "Running"
    if task.state in _STOPPED:
        return "Stopped"
    if task.state in _FAILED:
        return "Error"
    # Completed, or a table row without a task run: the table says how the transfer went.
    if task.status in _TABLE_WORDS:
        return _TABLE_WORDS[task.status]
    return "Success" if task.state == "Completed" else "Error"


def execution_status(run: RunView) -> str:
    if run.state in _UNDERWAY or (run.ended is False and run.state not in _STOPPED):
        return "InProgress"
    if run.state in _STOPPED:
        return "Stopped"
    if run.state == "Completed" and all(task_status(t) == "Success" for t in run.tasks):
        return "Succeeded"
    return "Failed"


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def execution_out(run: RunView, number: int, policy_id: int | None) -> ExecutionOut:
    statuses = [task_status(t) for t in run.tasks]
    return ExecutionOut(
        id=number, policy_id=policy_id, status=execution_status(run), status_text=run.message,
        trigger=TRIGGERS.get(run.trigger, "manual"), start_time=_moment(run.start_time),
        end_time=_moment(run.end_time), total=len(statuses), failed=statuses.count("Error"),
        succeed=statuses.count("Success"), stopped=statuses.count("Stopped"),
        in_progress=statuses.count("Pending") + statuses.count("Running"))


def task_key(run_id: str, repository: str) -> str:
    """The key a task's API id is stored under (policies/store.py ``run_ids``)."""
    return f"{run_id}/{repository}"


def task_out(task: TaskView, number: int, execution: int, run: RunView) -> TaskOut:
    return TaskOut(id=number, execution_id=execution, status=task_status(task), job_id=run.id,
                   operation="copy", resource_type="image", src_resource=task.repository,
                   dst_resource=task.target or task.repository,
                   start_time=_moment(run.start_time), end_time=_moment(run.end_time))
