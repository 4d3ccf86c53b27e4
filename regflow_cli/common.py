"""What every ``regflow`` command shares: the consoles, the exit codes, one-line failures."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from adapters.errors import ConfigError, ReplicationError
from regflow_cli import heap

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def sub_app(help_text: str) -> typer.Typer:
    # Tracebacks never print local variables: they may hold credentials.
    return typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help=help_text)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    # The message may quote user text ("[/x]" in a name): printed as text, not as rich markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def store() -> Any:
    from policies.store import Store
    return Store()


def run_or_fail(job: Coroutine[Any, Any, Any], what: str) -> Any:
    """Run ``job``; bad input is exit 2 (user_errors), any other failure of the engine one line
    ``WHAT: Class: message`` and exit 1."""
    heap.started()
    with user_errors():
        try:
            return asyncio.run(job)
        except ConfigError:
            raise
        except ReplicationError as exc:
            fail(f"{what}: {type(exc).__name__}: {exc}", EXIT_FAILED)
