"""The API's one door to Prefect: executions (flow runs of a policy's deployment) listed, read,
started, stopped, and their tasks' logs. ``Runs`` is what the API needs; ``PrefectRuns`` serves
it from flows/history.py and flows/control.py, as ``regflow executions`` does, and tests give a
fake of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from pydantic import BaseModel

from adapters.errors import ConfigError

if TYPE_CHECKING:
    from flows.history import ExecutionRecord

# Executions read per listing, newest first: each costs the server a few reads (its task runs
# and artifacts), and retention prunes old runs anyway.
LIST_LIMIT: Final = 100


class TaskView(BaseModel):
    """One source repository of an execution (a task run, or a row of its task table)."""

    repository: str
    target: str = ""
    state: str  # Prefect's state name, or the task table's status when no task run exists
    status: str = ""  # the task table's Succeeded/Failed/Stopped, when the run recorded it
    message: str = ""


class RunView(BaseModel):
    id: str  # the flow run's UUID
    policy: str
    trigger: str  # regflow's word: manual, schedule, event
    state: str  # Prefect's state name
    message: str = ""
    start_time: str | None = None
    end_time: str | None = None
    # Whether the run's state is final (None: not known, the state's name decides).
    ended: bool | None = None
    tasks: list[TaskView] = []


class Runs(Protocol):
    """An execution's tasks come with it (``get``): its counts are made of them."""

    async def list(self, policy: str | None) -> list[RunView]: ...
    async def get(self, run_id: str) -> RunView | None: ...
    async def start(self, policy: str) -> str: ...
    async def stop(self, run_id: str) -> None: ...
    async def log(self, run_id: str, repository: str) -> str | None: ...


class PrefectRuns:
    """The real boundary, on the Prefect API the process is configured for. Prefect is imported
    at the first call: the API's module, and tests with a fake boundary, never load it."""

    async def list(self, policy: str | None) -> list[RunView]:
        from flows.history import list_executions
        return [_view(record) for record in await list_executions(policy, LIST_LIMIT)]

    async def get(self, run_id: str) -> RunView | None:
        from flows.history import read_execution
        try:
            detail = await read_execution(run_id)
        except ConfigError:
            return None
        view = _view(detail.execution)
        # Repositories that failed before a task run existed are only in the task table.
        known = {t.repository for t in view.tasks}
        extra = [TaskView(repository=str(row.get("repository", "")), target=str(row.get("target", "")),
                          state=str(row.get("status", "")), status=str(row.get("status", "")),
                          message=str(row.get("reason", "")))
                 for row in detail.repositories if str(row.get("repository", "")) not in known]
        view.tasks = sorted([*view.tasks, *extra], key=lambda t: t.repository)
        return view

    async def start(self, policy: str) -> str:
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound
        try:
            run = await run_deployment(  # type: ignore[misc]
                name=f"replicate/{policy}", timeout=0, parameters={"policy": policy, "trigger": "manual"})
        except ObjectNotFound:
            raise ConfigError(f"policy {policy!r} has no deployment yet: serve creates it within "
                              "seconds of the policy; try again") from None
        return str(run.id)

    async def stop(self, run_id: str) -> None:
        from flows.control import stop
        await stop(run_id, wait=False)

    async def log(self, run_id: str, repository: str) -> str | None:
        from flows.history import read_logs
        try:
            lines = await read_logs(run_id, repository)
        except ConfigError:
            return None
        return "".join(f"{line.timestamp} [{line.level}] {line.message}\n" for line in lines)


def _view(record: ExecutionRecord) -> RunView:
    return RunView(id=record.id, policy=record.policy, trigger=record.trigger, state=record.state,
                   message=record.message, start_time=record.start_time, end_time=record.end_time,
                   ended=record.ended,
                   tasks=[TaskView(repository=t.name, target=str(t.row.get("target", "")), state=t.state,
                                   status=str(t.row.get("status", "")), message=t.message)
                          for t in record.tasks])
