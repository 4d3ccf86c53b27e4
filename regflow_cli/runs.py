"""``regflow executions ...``: past and running executions (Prefect flow runs).

``regflow executions [POLICY]`` lists, as it always has: a first word that is not one of the
subcommands is read as ``list``'s argument (a policy named like a subcommand needs
``executions list NAME``)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from regflow_cli.common import out, user_errors


class _ListByDefault(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


executions_app = typer.Typer(cls=_ListByDefault, pretty_exceptions_show_locals=False,
                             help="Past and running executions (Prefect flow runs).")


@executions_app.command("list")
def list_executions(
    policy: Annotated[str | None, typer.Argument()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: int = 20,
) -> None:
    """Past executions (Prefect flow runs) with their tasks."""
    from flows import embedded
    with user_errors():
        embedded.configure()
    from flows.history import list_executions as listed
    records = asyncio.run(listed(policy, limit))
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table("execution", "policy", "trigger", "state", "tasks", "message")
    for r in records:
        table.add_row(r.name, r.policy, r.trigger, r.state, str(len(r.tasks)), r.message[:120])
    out.print(table)
