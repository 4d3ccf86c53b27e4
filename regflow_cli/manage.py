"""``regflow registry ...`` and ``regflow policy ...``: what is stored, and its changes.

The changes here touch the store only; ``regflow serve`` carries them to the Prefect
deployments at its next sync (a disabled policy's deployment paused, a deleted one's removed).
Each command takes ``--json`` (JSON on stdout); a refusal or an unknown name is one
line on stderr and exit 2, with nothing changed."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from regflow_cli.common import EXIT_FAILED, fail, out, store, sub_app, user_errors

JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object")]

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


@registry_app.command("show")
def registry_show(name: str, as_json: JsonOption = False) -> None:
    """One registry, as stored (secrets masked), and the policies that use it."""
    with user_errors():
        db = store()
        view = db.public_view(db.registry(name))
        users = [p.name for p in db.policies() if name in (p.src_registry, p.dest_registry)]
    if as_json:
        print(json.dumps(view, default=str))
        return
    table = Table("field", "value", show_header=False)
    for field, value in _flat(view):
        table.add_row(field, value)
    table.add_row("used by", ", ".join(users) or "-")
    out.print(table)


@registry_app.command("delete")
def registry_delete(name: str, as_json: JsonOption = False) -> None:
    """Delete a registry and its stored secret; refused while a policy uses it."""
    with user_errors():
        store().delete_registry(name)
    _changed(as_json, "registry", name, "deleted")


@registry_app.command("ping")
def registry_ping(name: str, as_json: JsonOption = False) -> None:
    """Health check: /v2/ answers and the credentials are accepted. Exit 1 when unhealthy."""
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
    if as_json:
        print(json.dumps({"registry": name} | health.model_dump(mode="json")))
        if health.status != "healthy":
            raise typer.Exit(EXIT_FAILED)
        return
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
def policy_show(name: str, as_json: JsonOption = False) -> None:
    """One policy, as stored (JSON, with or without --json)."""
    with user_errors():
        db = store()
        view = db.public_view(db.policy(name))
    print(json.dumps(view, indent=2, default=str))


@policy_app.command("delete")
def policy_delete(name: str, as_json: JsonOption = False) -> None:
    """Delete a policy; `regflow serve` removes its deployment. Its past executions stay."""
    with user_errors():
        store().delete_policy(name)
    _changed(as_json, "policy", name, "deleted")


@policy_app.command("enable")
def policy_enable(name: str, as_json: JsonOption = False) -> None:
    """Enable a policy: its schedule and event triggers start it again."""
    with user_errors():
        changed = store().enable_policy(name)
    _changed(as_json, "policy", name, "enabled" if changed else "already enabled", enabled=True)


@policy_app.command("disable")
def policy_disable(name: str, as_json: JsonOption = False) -> None:
    """Disable a policy: no schedule, event or manual run starts it (its deployment is paused)."""
    with user_errors():
        changed = store().disable_policy(name)
    _changed(as_json, "policy", name, "disabled" if changed else "already disabled", enabled=False)


def _changed(as_json: bool, kind: str, name: str, outcome: str, **state: Any) -> None:
    if as_json:
        print(json.dumps({"kind": kind, "name": name, "outcome": outcome.replace(" ", "_"), **state}))
    else:
        out.print(f"{kind} {name}: {outcome}", highlight=False)


def _flat(view: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``view``'s fields as (dotted name, text) rows; PEM text is summarized, not printed."""
    rows: list[tuple[str, str]] = []
    for key, value in view.items():
        field = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flat(value, f"{field}.") if value else [(field, "-")])
        elif value is None or value == "":
            rows.append((field, "-"))
        elif isinstance(value, list):
            rows.append((field, ", ".join(map(str, value))))
        elif isinstance(value, str) and "\n" in value:
            rows.append((field, f"(PEM text, {len(value.splitlines())} lines)"))
        else:
            rows.append((field, str(value)))
    return rows
