"""Step 7: one execution's outcome, Harbor's way: a status, counts per task, a message that
says why, and every tag with what happened to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

from tasks.models import TagOutcome, TaskStatus, Traffic, TransferResult
from tasks.plan import Plan
from tasks.prune import PruneReport
from tasks.report import FailedImagesReport
from tasks.verify import VerifyReport

ExecutionStatus = Literal["Succeeded", "Failed", "Stopped", "InProgress"]
# The status message names at most this many failures; the table artifact has all of them.
MESSAGE_FAILURES = 3


class TaskSummary(BaseModel):
    source: str
    target: str
    status: TaskStatus
    tags: list[TagOutcome]
    copied: int
    deleted: int = 0
    skipped: int
    failed: int
    bytes: int
    seconds: float
    error: str = ""
    machine: str = ""


class Execution(BaseModel):
    policy: str
    status: ExecutionStatus
    message: str
    total: int
    succeed: int
    failed: int
    stopped: int
    in_progress: int = 0
    bytes: int = 0
    transfers: int = 0  # task runs started; repositories already identical need none
    trigger: str = "manual"
    event_id: str | None = None
    flow_run_id: str | None = None
    tasks: list[TaskSummary] = []
    verify: VerifyReport | None = None  # the policy's verification step, when it ran
    traffic: Traffic | None = None  # what the run asked of its registries, for /metrics
    retry_of: str | None = None  # the execution this one retries (its flow run id)
    # Every image not copied; written as an artifact and by --report, not part of --json.
    report: FailedImagesReport | None = Field(default=None, exclude=True)

    def public(self) -> dict[str, object]:
        """The CLI's ``--json`` object."""
        return self.model_dump(mode="json")


def summarize(policy: str, plan: Plan, results: Mapping[str, TransferResult | BaseException], *,
              stopped_reason: str = "", refused: str = "", verify: VerifyReport | None = None,
              prune: PruneReport | None = None) -> Execution:
    """``prune``: the mirror prune's deletions join the task of their target repository (a
    repository gone from the source gets a task of its own); a refused or failed prune fails
    the execution, its one line first in the message."""
    tasks = [_task(repo.source_repository, repo.target_repository, repo.error, repo.settled(),
                   results.get(repo.source_repository))
             for repo in plan.repositories]
    if prune is not None:
        tasks = _with_pruned(tasks, prune.results)
    return _execution(policy, tasks, stopped_reason, refused, verify, prune.problem if prune else "")


def _with_pruned(tasks: list[TaskSummary], pruned: list[TransferResult]) -> list[TaskSummary]:
    by_target = {t.target: i for i, t in enumerate(tasks)}
    merged = list(tasks)
    for result in pruned:
        i = by_target.get(result.target_repository)
        if i is None:
            merged.append(_task(result.source_repository, result.target_repository, "", [], result))
            continue
        task = merged[i]
        merged[i] = _task(task.source, task.target, task.error, task.tags, result)
        merged[i].seconds = task.seconds
    return merged


def summarize_deletions(policy: str, results: list[TransferResult]) -> Execution:
    tasks = [_task(r.source_repository, r.target_repository, "", [], r) for r in results]
    return _execution(policy, tasks, "", "")


def _execution(policy: str, tasks: list[TaskSummary], stopped_reason: str, refused: str,
               verify: VerifyReport | None = None, prune_problem: str = "") -> Execution:
    count = {s: sum(1 for t in tasks if t.status == s) for s in ("Succeeded", "Failed", "Stopped")}
    status: ExecutionStatus = "Succeeded"
    if refused or prune_problem or count["Failed"] or (verify is not None and not verify.ok):
        status = "Failed"
    elif count["Stopped"] or stopped_reason:
        status = "Stopped"
    message = refused or _message(tasks, status, stopped_reason)
    if verify is not None:
        # A failed verification leads the message: the transfers alone said all was well.
        message = f"{message}. {verify.summary(MESSAGE_FAILURES)}" if verify.ok else \
            f"{verify.summary(MESSAGE_FAILURES)}. {message}"
    if prune_problem:
        message = f"{prune_problem}. {message}"
    return Execution(policy=policy, status=status, total=len(tasks), succeed=count["Succeeded"],
                     failed=count["Failed"], stopped=count["Stopped"], bytes=sum(t.bytes for t in tasks),
                     tasks=tasks, message=message, verify=verify)


def _task(source: str, target: str, plan_error: str, settled: list[TagOutcome],
          result: TransferResult | BaseException | None) -> TaskSummary:
    tags = list(settled)
    error = plan_error
    seconds = 0.0
    machine = ""
    if isinstance(result, TransferResult):
        tags = sorted([*tags, *result.tags], key=lambda t: t.tag)
        error = error or result.error
        seconds, machine = result.seconds, result.machine
    elif isinstance(result, BaseException):
        error = f"{type(result).__name__}: {result}"
    status: TaskStatus = "Succeeded"
    if error or any(t.status == "failed" for t in tags):
        status = "Failed"
    elif any(t.status == "stopped" for t in tags):
        status = "Stopped"
    return TaskSummary(
        source=source, target=target, status=status, tags=tags, error=error, seconds=seconds, machine=machine,
        copied=sum(t.status == "copied" for t in tags), deleted=sum(t.status == "deleted" for t in tags),
        skipped=sum(t.status == "skipped" for t in tags),
        failed=sum(t.status == "failed" for t in tags), bytes=sum(t.bytes for t in tags))


def _message(tasks: list[TaskSummary], status: ExecutionStatus, stopped_reason: str) -> str:
    copied = sum(t.copied for t in tasks)
    deleted = sum(t.deleted for t in tasks)
    skipped = sum(t.skipped for t in tasks)
    moved = sum(t.bytes for t in tasks)
    head = (f"{len(tasks)} repositories: {copied} tags copied ({human_bytes(moved)}), "
            + (f"{deleted} deleted, " if deleted else "") + f"{skipped} skipped")
    if status == "Failed" and any(t.status == "Failed" for t in tasks):
        failures = [t for t in tasks if t.status == "Failed"]
        named = "; ".join(f"{t.source}: {t.error}" for t in failures[:MESSAGE_FAILURES])
        more = f" (+{len(failures) - MESSAGE_FAILURES} more)" if len(failures) > MESSAGE_FAILURES else ""
        return f"{len(failures)} of {len(tasks)} tasks failed: {named}{more}. {head}"
    if status == "Stopped":
        return f"stopped: {stopped_reason or 'by user'}. {head}"
    return head


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
