"""``regflow import harbor URL --user U``: a running Harbor's registries and replication policies,
read through its API, written as a regflow config file for ``regflow apply -f``.

The password comes from ``$HARBOR_PASSWORD`` or a prompt, never from the command line (where
``ps`` and shell history would show it). Harbor returns no secrets, so the file reads each one
from a ``${REGFLOW_<REGISTRY>_ACCESS_SECRET}`` placeholder, listed on stderr. ``--dry-run``
prints what maps, what changes and what is left out, and why, and writes nothing.

Exit codes as every command: 0 written (or shown), 1 Harbor unreachable or refusing, 2 bad input
(nothing was written).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from pydantic import SecretStr
from rich.markup import escape
from rich.table import Table

from regflow_cli.common import err, fail, out, run_or_fail, sub_app, user_errors

PASSWORD_ENV = "HARBOR_PASSWORD"
OUTCOME_COLOURS = {"maps": "green", "changed": "yellow", "skipped": "red"}

import_app = sub_app("Import registries and policies from another system into a config file.")


def _password(user: str) -> SecretStr:
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return SecretStr(value)
    if not sys.stdin.isatty():
        fail(f"no password: set {PASSWORD_ENV} (stdin is not a terminal to prompt on)")
    return SecretStr(typer.prompt(f"Harbor password for {user}", hide_input=True))


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        fail(f"{url!r} is not an http(s)://host[:port] URL of a Harbor")
    return url.rstrip("/")


@import_app.command("harbor")
def import_harbor_command(
    url: Annotated[str, typer.Argument(help="the Harbor, e.g. https://harbor.example.com")],
    user: Annotated[str, typer.Option("--user", "-u", help=f"a Harbor system administrator; the "
                                      f"password from ${PASSWORD_ENV} or a prompt")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="write the config file here (default: stdout)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --output file")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print what maps, what changes and what is left out; write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --dry-run: the notes as JSON")] = False,
    local_name: Annotated[str | None, typer.Option(
        "--local-name", help="regflow name of the Harbor itself (default: from its host)")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="do not verify the Harbor's TLS certificate (and mark its entry so)")] = False,
    ca_cert: Annotated[Path | None, typer.Option(
        "--ca-cert", help="PEM file of the CA that signed the Harbor's certificate (its entry "
        "keeps the path)")] = None,
) -> None:
    """Read a Harbor's registries and replication policies (GET /api/v2.0/registries and
    /replication/policies) and write them as a regflow config file."""
    from adapters.harbor_replication import read_replication
    from policies.harbor_import import HarborPolicy, HarborRegistry, import_harbor, parse_harbor

    url = _check_url(url)
    if output is not None and not dry_run:
        if output.exists() and not force:
            fail(f"{output} exists: --force overwrites it")
        if not output.parent.is_dir():
            fail(f"-o {output}: no directory {output.parent}")
    ca_text = _read_ca(ca_cert) if ca_cert is not None else None
    password = _password(user)
    answer = run_or_fail(read_replication(url, user, password, insecure=insecure, ca_certificate=ca_text),
                         f"reading {url} failed")
    with user_errors():
        result = import_harbor(url, user,
                               parse_harbor(HarborRegistry, answer.registries, "registries"),
                               parse_harbor(HarborPolicy, answer.policies, "policies"),
                               local_name=local_name, insecure=insecure,
                               ca_certificate=str(ca_cert.resolve()) if ca_cert is not None else None)
    if dry_run:
        _print_notes(result, as_json)
        return
    text = _config_text(result, url)
    if output is None:
        sys.stdout.write(text)
    else:
        with user_errors():
            _write(output, text, force=force)
    _summary(result, output)


def _read_ca(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--ca-cert {path}: {getattr(exc, 'strerror', None) or 'not a readable PEM text file'}")


def _config_text(result: Any, url: str) -> str:
    import yaml

    lines = [f"# Imported from {url} by `regflow import harbor`.",
             "# Harbor returns no secrets: set these variables before the registries are used."]
    lines += [f"#   {p.variable}: {p.what} (registry {p.registry})" for p in result.placeholders]
    body = yaml.safe_dump(result.document, sort_keys=False, allow_unicode=True, width=110)
    return "\n".join(lines) + "\n" + body


def _write(path: Path, text: str, *, force: bool) -> None:
    from adapters.errors import ConfigError
    try:
        # "x" refuses a file that appeared since the check above.
        with path.open("w" if force else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists: --force overwrites it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _summary(result: Any, output: Path | None) -> None:
    counts = {kind: sum(1 for n in result.notes if n.outcome == kind) for kind in OUTCOME_COLOURS}
    where = f"written to {output}" if output is not None else "written to stdout"
    err.print(f"{len(result.config.registries)} registries, {len(result.config.policies)} policies "
              f"{where}; {counts['changed']} item(s) changed, {counts['skipped']} left out "
              "(--dry-run shows why)", highlight=False)
    for note in result.notes:
        if note.outcome == "skipped":
            err.print(f"left out: {escape(note.harbor)}: {escape(note.reason)}", highlight=False)
    for p in result.placeholders:
        err.print(f"set {p.variable}: {escape(p.what)} (registry {p.registry})", highlight=False)


def _print_notes(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"notes": [n.model_dump() for n in result.notes],
                          "placeholders": [p.model_dump() for p in result.placeholders]}))
        return
    table = Table("item", "Harbor", "regflow", "outcome", "why")
    for n in result.notes:
        colour = OUTCOME_COLOURS[n.outcome]
        table.add_row(n.item, escape(n.harbor), escape(n.regflow), f"[{colour}]{n.outcome}[/{colour}]",
                      escape(n.reason))
    out.print(table)
    for p in result.placeholders:
        out.print(f"placeholder {p.variable}: {escape(p.what)} (registry {p.registry})", highlight=False)
