"""``regflow executions prune``: each policy's retention applied now, by hand (``regflow serve``
does it daily). Registers itself on the ``executions`` sub-app when imported."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from regflow_cli.common import EXIT_FAILED, err, out, store, user_errors
from regflow_cli.runs import executions_app


@executions_app.command("prune")
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted, delete nothing")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Delete the executions each policy's retention no longer keeps: finished ones older than
    `days`, beyond the newest `keep_last`, with their task runs, logs and artifacts. Running
    and scheduled executions are never touched. Exit 1 when a policy could not be pruned."""
    from flows import embedded
    with user_errors():
        embedded.configure()
        policies = store().policies()
    from flows.retention import prune as run_prune
    report = asyncio.run(run_prune(policies, dry_run=dry_run))
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        table = Table("policy", "days", "keep last", "would delete" if dry_run else "deleted",
                      "task runs", "artifacts")
        for p in report.policies:
            count = f"{len(p.executions)}, then failed" if p.error else str(len(p.executions))
            table.add_row(p.policy, str(p.days), str(p.keep_last), count, str(p.task_runs), str(p.artifacts))
        out.print(table)
        verb = "would delete" if dry_run else "deleted"
        out.print(f"{verb} {report.deleted} execution(s)", highlight=False)
    for p in report.policies:
        if p.error:
            err.print(f"[red]error:[/red] policy {p.policy}: {escape(p.error)}", highlight=False,
                      soft_wrap=True)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)
