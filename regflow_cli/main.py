"""The ``regflow`` command.

Exit codes: 0 done (execution Succeeded, verification found nothing wrong), 1 the execution
Failed or was Stopped (verification found problems or could not finish), 2 bad input (config,
names, arguments): nothing was changed.

Prefect is imported only by the commands that run or read executions: ``apply`` and the
listings answer without starting a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from adapters.errors import ConfigError
from regflow_cli import failures, heap
from regflow_cli import prune as _prune  # noqa: F401  (registers `executions prune`)
from regflow_cli.common import EXIT_FAILED, EXIT_OK, err, fail, out, run_or_fail, user_errors
from regflow_cli.common import store as _store
from regflow_cli.copy import copy_command
from regflow_cli.importer import import_app
from regflow_cli.manage import policy_app, registry_app
from regflow_cli.runs import executions_app

# Tracebacks never print local variables: they may hold credentials.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Replicate container images between registries, on Prefect.")
app.add_typer(registry_app, name="registry")
app.add_typer(policy_app, name="policy")
app.add_typer(executions_app, name="executions")
app.command(name="copy")(copy_command)
app.add_typer(import_app, name="import")


@app.command()
def apply(file: Annotated[Path, typer.Option("-f", "--file", help="config file (version: 1)")],
          prune: Annotated[bool, typer.Option(help="delete registries/policies not in the file")] = False,
          as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")]
          = False,
          ) -> None:
    """Create or update registries and policies from a config file, idempotently."""
    from policies.config_file import load_config_file
    with user_errors():
        config = load_config_file(file)
        report = _store().apply(config, prune=prune)
    if as_json:
        print(report.model_dump_json())
        return
    for verb in ("created", "updated", "deleted", "unchanged"):
        for item in getattr(report, verb):
            out.print(f"{verb:9} {item}", highlight=False)
    if not any(getattr(report, v) for v in ("created", "updated", "deleted", "unchanged")):
        out.print("nothing to apply")


@app.command()
def replicate(
    policy: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, change nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="write the failed-images report (JSON) to this file")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="let the policy's mirror prune delete more tags than its prune_limit")] = False,
) -> None:
    """Run a policy now, as one execution (a Prefect flow run)."""
    from tasks.load import load_policy
    with user_errors():
        loaded = load_policy(policy)
    if dry_run:
        _dry_run(loaded, as_json, force=force)
        return

    from flows import embedded
    with user_errors():
        embedded.configure()
    execution = _run_flow(policy, as_json, report=report, parameters={"force_prune": True} if force else None)
    if as_json:
        print(json.dumps(execution.public()))
    else:
        _print_execution(execution)
    raise typer.Exit(EXIT_OK if execution.status == "Succeeded" else EXIT_FAILED)


def _run_flow(policy: str, quiet: bool, *, report: Path | None = None,
              parameters: dict[str, Any] | None = None) -> Any:
    """Runs the flow here; ``parameters`` are the flow's others (a retry's); ``report``
    receives the failed-images report, empty when every image was copied."""
    from flows.replicate import replicate as replicate_flow
    from tasks.report import FailedImagesReport, write_report_file
    from tasks.summary import Execution
    heap.started()
    failures.quiet_console_tracebacks()
    if report is not None and not report.parent.is_dir():
        fail(f"--report {report}: no directory {report.parent}")

    async def run() -> Execution:
        state = await replicate_flow(policy=policy, trigger="manual", return_state=True, **(parameters or {}))
        result = await state.aresult(raise_on_failure=False)
        if isinstance(result, ConfigError):
            raise result  # bad input found inside the run (e.g. a CA bundle): exit 2
        if not isinstance(result, Execution):
            fail(f"execution ended {state.name}: {state.message}", EXIT_FAILED)
        if report is not None:
            from datetime import UTC, datetime
            write_report_file(result.report or FailedImagesReport(
                policy=policy, execution_id=result.flow_run_id, created=datetime.now(UTC)), report)
        # Not waiting for the server to record the task runs: `regflow executions` does.
        return result

    with user_errors():
        if quiet:
            return asyncio.run(run())
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from flows.runtime import progress_listener
        with Progress(TextColumn(f"replicating {policy}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("repositories"), TimeElapsedColumn(), console=err) as bar:
            job = bar.add_task("transfer", total=None)
            progress_listener.set(lambda done, total: bar.update(job, completed=done, total=total))
            return asyncio.run(run())


def _dry_run(loaded: Any, as_json: bool, *, force: bool = False) -> None:
    from tasks.discover import discover, is_digest_reference
    from tasks.load import open_adapters
    from tasks.plan import make_plan
    from tasks.prune import plan_prune
    from tasks.summary import human_bytes

    async def plan() -> Any:
        async with open_adapters(loaded) as (source, target):
            found = await discover(source, loaded.policy)
            planned = await make_plan(source, target, loaded.policy, found, measure=True)
            # What the mirror prune would delete after this run, if it succeeds.
            pruned = await plan_prune(source, target, loaded.policy, found, force=force) \
                if loaded.policy.prune else None
            return planned, pruned

    heap.started()
    with user_errors():
        result, pruned = asyncio.run(plan())
    if as_json:
        print(json.dumps(result.model_dump(mode="json") | (
            {"prune": pruned.model_dump(mode="json") | {"count": pruned.count, "refused": pruned.refused}}
            if pruned is not None else {})))
        return
    from rich.table import Column

    # Folded, not cut, in a narrow terminal: "linux/arm…" could be arm64 or arm/v7.
    table = Table("repository", "target", Column("tag", overflow="fold"), "action", "bytes",
                  Column("platforms", overflow="fold"))
    total = 0
    for repo in result.repositories:
        if repo.error:
            table.add_row(repo.source_repository, "-", "-", f"[red]error: {repo.error}[/red]", "", "")
        # A referrer's subject by the tag users know it by, where the run copies one.
        known = {t.digest: t.tag for t in reversed(repo.tags)
                 if t.subject is None and not is_digest_reference(t.tag)}
        for t in repo.tags:
            total += t.bytes or 0
            # Which images of the tag travel; none, and why, when the policy's platforms leave it.
            platforms = f"[yellow]none: {escape(t.platform_skip)}[/yellow]" if t.platform_skip \
                else ", ".join(t.platforms)
            table.add_row(repo.source_repository, repo.target_repository, _tag_cell(t.tag, t.subject, known),
                          t.action, human_bytes(t.bytes) if t.bytes is not None else "", platforms)
    if pruned is not None:
        blank = [""] * (len(table.columns) - 4)
        for prune_repo in pruned.repositories:
            for p in prune_repo.tags:
                table.add_row(prune_repo.source_repository, prune_repo.target_repository,
                              _tag_cell(p.tag, None, {}), f"[red]delete[/red] ({escape(p.reason)})", *blank)
    out.print(table)
    out.print(f"at most {human_bytes(total)} to copy (blobs already on the target are not sent)")
    if pruned is not None:
        _print_prune_plan(pruned)


# Hex digits a dry run's table shows of a digest (as `docker images` does); --json has them whole.
SHORT_HEX = 12


def _short(ref: str) -> str:
    """A digest, or a tag of the referrers' fallback schemas (it holds one), shortened."""
    from adapters.oci.referrers import parse_referrer_tag
    algorithm, colon, hex_part = ref.partition(":")
    if colon:
        return f"{algorithm}:{hex_part[:SHORT_HEX]}…"
    schema = parse_referrer_tag(ref)
    if schema is None:
        return ref
    return f"{schema.subject.algorithm}-{schema.subject.hex[:SHORT_HEX]}…{schema.suffix}"


def _tag_cell(tag: str, subject: str | None, known: dict[Any, str]) -> str:
    """The dry run's tag column: an untagged manifest (its "tag" is its digest) says so; a
    referrer (signature, attestation, SBOM) names what it travels after, by tag where known."""
    from tasks.discover import is_digest_reference
    shown = _short(tag)
    if subject is not None:
        return f"{shown} [dim](referrer of {known.get(subject) or _short(subject)})[/dim]"
    return f"{shown} [dim](untagged)[/dim]" if is_digest_reference(tag) else shown


def _print_prune_plan(pruned: Any) -> None:
    for note in pruned.notes:
        out.print(f"prune: {escape(note)}", highlight=False)
    if pruned.refused:
        out.print(f"[yellow]prune: the limit would stop it, {pruned.count} tags to delete are more than "
                  f"prune_limit {pruned.limit}: nothing would be deleted (--force deletes them)[/yellow]",
                  highlight=False)
    elif pruned.count:
        forced = ", forced past" if pruned.count > pruned.limit else ", within"
        out.print(f"prune: {pruned.count} tag(s) to delete after a successful run{forced} "
                  f"prune_limit {pruned.limit}", highlight=False)
    else:
        out.print("prune: nothing to delete", highlight=False)


def _print_execution(execution: Any) -> None:
    # A deleted column only when the run deleted something (a mirror prune, a replicated deletion).
    deleted = any(t.deleted for t in execution.tasks)
    table = Table("repository", "target", "status", "copied", *(["deleted"] if deleted else []), "skipped",
                  "failed", "bytes", "reason")
    for t in execution.tasks:
        reasons = "; ".join(sorted({o.reason for o in t.tags if o.reason}))
        table.add_row(t.source, t.target, t.status, str(t.copied), *([str(t.deleted)] if deleted else []),
                      str(t.skipped), str(t.failed), str(t.bytes), t.error or reasons)
    out.print(table)
    colour = {"Succeeded": "green", "Failed": "red"}.get(execution.status, "yellow")
    out.print(f"[{colour}]{execution.status}[/{colour}]: {execution.message}", highlight=False)


@app.command()
def verify(
    policy: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
) -> None:
    """Check that the target holds every tag the policy selects, whole: the same digest, every
    child manifest and every blob. Reads only; no Prefect."""
    from tasks.load import load_policy, open_adapters
    from tasks.verify import verify_policy

    with user_errors():
        loaded = load_policy(policy)

    async def check() -> Any:
        async with open_adapters(loaded) as (source, target):
            return await verify_policy(source, target, loaded.policy)

    report = run_or_fail(check(), f"verification of {policy} could not finish")
    if as_json:
        print(report.model_dump_json())
    elif report.problems:
        table = Table("repository", "target", "tag", "problem", "detail")
        for p in report.problems:
            table.add_row(p.repository, p.target or "-", p.tag, p.kind, p.detail)
        out.print(table)
    if not as_json:
        colour = "green" if report.ok else "red"
        out.print(f"[{colour}]{'OK' if report.ok else 'FAILED'}[/{colour}]: "
                  f"{report.summary(0) if report.ok else _problem_count(report)}", highlight=False)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)


def _problem_count(report: Any) -> str:
    return (f"{len(report.problems)} problem(s) in {report.checked_tags} tags and "
            f"{report.checked_blobs} blobs checked")


@app.command()
def serve(
    http_host: Annotated[str, typer.Option("--http-host", "--webhook-host",
                                           help="address the HTTP listener binds (webhooks, /metrics, "
                                           "Harbor's API)")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", "--webhook-port",
                                           help="port of the HTTP listener")] = 8787,
    prefect_port: Annotated[int, typer.Option(help="port of the local Prefect server, if serve "
                                              "starts it")] = 4200,
    worker_limit: Annotated[int | None, typer.Option(
        min=1, help="flow runs this machine's worker runs at once (prefect worker --limit); set it "
        "when workers on other machines share the pool, so that a spread execution's parts reach "
        "them too")] = None,
) -> None:
    """Serve every policy: deployments kept current, a worker running them, webhooks received,
    and Harbor's replication API under /api/v2.0 when REGFLOW_ADMIN_PASSWORD is set.

    Uses PREFECT_API_URL when set; otherwise regflow's local Prefect server (SQLite under
    REGFLOW_HOME, bound to 127.0.0.1, the one CLI calls use), started if none runs and kept
    for as long as serve runs. Its UI shows every execution and asks for the auth string in
    REGFLOW_HOME/prefect/api-auth."""
    import os
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # Until the service's loop takes over SIGTERM, a SIGTERM must still unwind normally.
    signal.signal(signal.SIGTERM, terminate)
    if not os.environ.get("PREFECT_API_URL"):
        from flows import embedded
        from flows.prefect_server import AUTH_FILE
        err.print(f"local Prefect server (starting it on port {prefect_port} if none runs) ...")
        with user_errors():
            try:
                url = embedded.configure_for_serve(prefect_port)
            except RuntimeError as exc:
                fail(str(exc), EXIT_FAILED)
        err.print(f"Prefect UI: {url} (log in with the contents of "
                  f"{embedded.prefect_home() / AUTH_FILE})", highlight=False)
    from deployments.serve import Service  # prefect reads PREFECT_API_URL on import
    heap.started()
    asyncio.run(Service(http_host, http_port, worker_limit=worker_limit).run())


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help=f"tracebacks for expected failures too (or {failures.DEBUG_ENV}=1)")] = False,
             ) -> None:
    if debug:
        os.environ[failures.DEBUG_ENV] = "1"


def main(argv: list[str] | None = None, *, entry: Callable[..., Any] = app) -> None:
    """The console script: an expected failure (registry unreachable or refusing, TLS, auth,
    an HTTP error, bad input) is one line and exit 1 or 2, in every command."""
    heap.starting()
    try:
        entry(args=argv if argv is not None else sys.argv[1:])
    except Exception as exc:
        code = failures.expected_exit_code(exc)
        if code is None or failures.debugging():
            raise
        err.print(f"[red]error:[/red] {escape(failures.one_line(exc))}", highlight=False, markup=True,
                  soft_wrap=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
