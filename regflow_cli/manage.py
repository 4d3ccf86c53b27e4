"""``regflow registry ...`` and ``regflow policy ...``: what is stored, and its changes."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from regflow_cli.common import EXIT_FAILED, fail, out, store, sub_app, user_errors

registry_app = sub_app("Registries (endpoints).")
policy_app = sub_app("Replication policies.")


@registry_app.command("list")
def registry_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered registries (secrets masked)."""
    db = store()
    views = [db.public_view(r) for r in db.registries()]
    if as_json:
        print(json.dumps(views, indent=2, default=str))
        return
    table = Table("name", "type", "url", "credential", "insecure")
    for v in views:
        cred = v.get("credential") or {}
        table.add_row(v["name"], v["type"], v["url"],
                      f"{cred.get('access_key', '')} ({cred.get('source', '')})" if cred else "-",
                      str(v.get("insecure", False)))
    out.print(table)


@registry_app.command("ping")
def registry_ping(name: str) -> None:
    """Health check: /v2/ answers and the credentials are accepted."""
    from adapters import create_adapter

    with user_errors():
        db = store()
        registry = db.registry(name)
        endpoint = db.endpoint(name)

    async def check() -> Any:
        adapter = create_adapter(registry.type, endpoint)
        try:
            return await adapter.health()
        finally:
            await adapter.aclose()

    with user_errors():
        health = asyncio.run(check())
    if health.status == "healthy":
        out.print(f"{name}: healthy")
        return
    fail(f"{name}: unhealthy: {health.reason}", EXIT_FAILED)


@policy_app.command("list")
def policy_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Replication policies."""
    db = store()
    policies = db.policies()
    if as_json:
        print(json.dumps([db.public_view(p) for p in policies], indent=2, default=str))
        return
    table = Table("name", "source", "target", "namespace", "trigger", "enabled")
    for p in policies:
        table.add_row(p.name, p.src_registry or "", p.dest_registry or "", p.dest_namespace or "-",
                      p.trigger.type, str(p.enabled))
    out.print(table)


@policy_app.command("show")
def policy_show(name: str) -> None:
    """One policy, as stored."""
    with user_errors():
        db = store()
        view = db.public_view(db.policy(name))
    print(json.dumps(view, indent=2, default=str))
