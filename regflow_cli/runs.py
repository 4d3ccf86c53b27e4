"""``regflow executions ...``: past and running executions (Prefect flow runs): list, show one,
read its logs, stop it, retry what it did not copy.

``regflow executions [POLICY]`` lists, as it always has: a first word that is not one of the
subcommands is read as ``list``'s argument (a policy named like a subcommand needs
``executions list NAME``). An execution is named by its flow run's id or name, as the listing
shows them; an unknown one is bad input (exit 2).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from regflow_cli import heap
from regflow_cli.common import EXIT_FAILED, EXIT_OK, err, fail, out, user_errors

if TYPE_CHECKING:
    from flows.history import TagRecord


class _ListByDefault(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


executions_app = typer.Typer(cls=_ListByDefault, pretty_exceptions_show_locals=False,
                             help="Past and running executions (Prefect flow runs).")

ExecutionId = Annotated[str, typer.Argument(help="the execution's id or name, as `regflow executions` "
                                                 "lists it")]
ReportFile = Annotated[Path | None, typer.Option(
    "--report", help="write the failed-images report (JSON) to this file")]


def _prefect() -> None:
    from flows import embedded
    with user_errors():
        embedded.configure()


def _read(job: Any) -> Any:
    """Runs a reader of flows/history.py: an unknown execution is one line and exit 2."""
    heap.started()
    with user_errors():
        return asyncio.run(job)


@executions_app.command("list")
def list_executions(
    policy: Annotated[str | None, typer.Argument()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: int = 20,
) -> None:
    """Past executions (Prefect flow runs) with their tasks."""
    _prefect()
    from flows.history import list_executions as listed
    heap.started()
    records = asyncio.run(listed(policy, limit))
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table("execution", "policy", "trigger", "state", "tasks", "message")
    for r in records:
        table.add_row(r.name, r.policy, r.trigger, r.state, str(len(r.tasks)), r.message[:120])
    out.print(table)


@executions_app.command("show")
def show(
    execution: ExecutionId,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    report: ReportFile = None,
) -> None:
    """One execution: its tasks, each tag's outcome and reason, the images it did not copy."""
    _prefect()
    from flows.history import read_execution
    detail = _read(read_execution(execution))
    if report is not None:
        from tasks.report import write_report_file
        if detail.failed_images is None and detail.execution.state != "Completed":
            fail(f"execution {detail.execution.name} ({detail.execution.state}) recorded no "
                 "failed-images report", EXIT_FAILED)
        with user_errors():
            write_report_file(detail.failed_images or _empty_report(detail.execution), report)
    if as_json:
        print(detail.model_dump_json(indent=2))
        return
    record = detail.execution
    # Names, reasons and messages come from registries and users: printed as text, never markup.
    out.print(f"{record.name}  {record.id}\npolicy {record.policy}, trigger {record.trigger}, "
              f"{record.state}, {record.start_time or '-'} .. {record.end_time or '-'}"
              + (f"\nretry of {record.retry_of}" if record.retry_of else "")
              + (f"\n{record.message}" if record.message else ""), highlight=False, markup=False)
    states = {t.name: t.state for t in record.tasks}
    rows = detail.repositories or [{"repository": t.name, "reason": t.message} for t in record.tasks]
    # Where each ran, once an execution ran on more than one machine (a spread policy's parts).
    spread = len({row.get("machine") for row in rows if row.get("machine")}) > 1
    tasks = Table("repository", "target", "state", "copied", "skipped", "failed", "bytes",
                  *(["machine"] if spread else []), "reason")
    for row in rows:
        name = str(row.get("repository", ""))
        cells = [name, str(row.get("target", "")), states.get(name) or str(row.get("status", "no task run")),
                 *(str(row.get(k, "")) for k in ("copied", "skipped", "failed", "bytes")),
                 *([str(row.get("machine", ""))] if spread else []), str(row.get("reason", ""))[:200]]
        tasks.add_row(*(escape(c) for c in cells))
    out.print(tasks)
    if detail.tags:
        out.print(tag_table(detail.tags))
    if detail.failed_images is not None and detail.failed_images.images:
        out.print(f"{len(detail.failed_images.images)} image(s) not copied: "
                  f"`regflow executions retry {record.name}` copies exactly these", highlight=False)


def tag_table(records: Sequence[TagRecord]) -> Table:
    """Each listed tag's outcome; a ``pushed`` column when some tag's target digest is not the
    source's (an index rewritten for the policy's platforms)."""
    pushed = any(g.pushed_digest for g in records)
    table = Table("repository", "tag", "status", "digest", *(("pushed",) if pushed else ()), "reason")
    for g in records:
        cells = (g.repository, g.tag, g.status, g.digest[:19], *((g.pushed_digest[:19],) if pushed else ()),
                 g.reason[:200])
        table.add_row(*(escape(c) for c in cells))
    return table


def _empty_report(record: Any) -> Any:
    from datetime import UTC, datetime

    from tasks.report import FailedImagesReport
    return FailedImagesReport(policy=record.policy, execution_id=record.id, execution_name=record.name,
                              created=datetime.now(UTC))


@executions_app.command("logs")
def logs(
    execution: ExecutionId,
    task: Annotated[str | None, typer.Option(
        "--task", help="only this task's logs (the source repository it transfers)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array of log lines")] = False,
) -> None:
    """The execution's logs, as Prefect recorded them (those of one task with --task)."""
    _prefect()
    from flows.history import read_logs
    lines = _read(read_logs(execution, task))
    if as_json:
        print(json.dumps([line.model_dump(mode="json") for line in lines], indent=2))
        return
    for line in lines:
        where = f" [{line.task}]" if line.task and not task else ""
        out.print(f"{line.timestamp} {line.level:7}{where} {line.message}", highlight=False, markup=False,
                  soft_wrap=True)


@executions_app.command("stop")
def stop(
    execution: ExecutionId,
    wait: Annotated[bool, typer.Option(help="wait until the execution has ended")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Stop a running execution: Prefect's cancellation, as the UI's Cancel. Blobs in flight
    stop within a second or so; nothing half-copied is left under a tag. Exit 1 when it had
    already ended otherwise, or did not end in time."""
    _prefect()
    from flows.control import STOP_WAIT_SECONDS
    from flows.control import stop as stop_run
    outcome = _read(stop_run(execution, wait=wait))
    if as_json:
        print(outcome.model_dump_json())
    if outcome.already_ended:
        if outcome.state == "Cancelled":
            if not as_json:
                out.print(f"{outcome.name} was already stopped", highlight=False)
            raise typer.Exit(EXIT_OK)
        fail(f"execution {outcome.name} already ended {outcome.state}: nothing to stop", EXIT_FAILED)
    if outcome.ended or not wait:
        if not as_json:
            out.print(f"{outcome.name}: {outcome.state}", highlight=False)
        raise typer.Exit(EXIT_OK if outcome.state in ("Cancelled", "Cancelling") else EXIT_FAILED)
    fail(f"execution {outcome.name} asked to stop, still {outcome.state} after {STOP_WAIT_SECONDS:.0f} s",
         EXIT_FAILED)


@executions_app.command("retry")
def retry(
    execution: Annotated[str | None, typer.Argument(
        help="the execution's id or name; or give --from-report")] = None,
    from_report: Annotated[Path | None, typer.Option(
        "--from-report", help="a failed-images report file (from --report) instead of an id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    report: ReportFile = None,
) -> None:
    """A new execution of the same policy with exactly the images the first did not copy
    (failed or stopped), pinned to the digests it planned, tagged retry-of:<its id>.
    From the Prefect UI: a custom run of the policy's deployment with the parameter retry_of."""
    if (execution is None) == (from_report is None):
        fail("give an execution id or name, or --from-report FILE (one of the two)")
    from tasks.report import read_report_file
    if from_report is not None:
        with user_errors():
            failed = read_report_file(from_report)
        parameters: dict[str, Any] = {"retry_report": failed, "retry_of": failed.execution_id}
        _prefect()
    else:
        assert execution is not None
        _prefect()
        from flows.history import read_report
        first, failed = _read(read_report(execution))
        if not first.ended:
            fail(f"execution {first.name} is still {first.state}: stop it or let it end, then retry")
        if failed is None and first.state != "Completed":
            fail(f"execution {first.name} ended {first.state} without a failed-images report: "
                 f"run the policy again instead")
        parameters = {"retry_of": first.id}
    if failed is None or not failed.images:
        err.print("nothing to retry: every image of that execution was copied", highlight=False)
        raise typer.Exit(EXIT_OK)
    policy = failed.policy
    from tasks.load import load_policy
    with user_errors():
        load_policy(policy)

    from regflow_cli.main import _print_execution, _run_flow
    result = _run_flow(policy, as_json, report=report, parameters=parameters)
    if as_json:
        print(json.dumps(result.public()))
    else:
        _print_execution(result)
        out.print(f"retry of {result.retry_of}", highlight=False)
    raise typer.Exit(EXIT_OK if result.status == "Succeeded" else EXIT_FAILED)
