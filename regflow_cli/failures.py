"""How the CLI reports a failure it expected (an unreachable or refusing registry, TLS, auth,
an HTTP error, bad config, a Prefect server that does not answer): one line and an exit code.
Tracebacks are for ``--debug`` (or REGFLOW_DEBUG=1), and for bugs, which keep theirs.

Prefect logs a failed run's exception with its traceback on the console as well; for expected
failures the console gets the log line without the traceback (the run's log on the server
keeps it whole).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx

from adapters.errors import ConfigError, ReplicationError

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
DEBUG_ENV = "REGFLOW_DEBUG"
# One line of a message is enough to act on; a registry's error page or a wrapped exception
# chain can be many.
MAX_LINE_CHARS = 400


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def expected_exit_code(exc: BaseException) -> int | None:
    """The exit code of a failure the user can act on; None for a bug (it keeps its traceback)."""
    if isinstance(exc, ConfigError):
        return EXIT_BAD_INPUT
    if isinstance(exc, ReplicationError | httpx.HTTPError | ConnectionError | TimeoutError):
        return EXIT_FAILED
    if _is_prefect_api_failure(exc):
        return EXIT_FAILED
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError):
        return EXIT_BAD_INPUT  # a path the user gave or REGFLOW_HOME itself
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, httpx.HTTPError) or not first:
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first[:MAX_LINE_CHARS]


def _is_prefect_api_failure(exc: BaseException) -> bool:
    # Imported only when Prefect already is: the listings never import it.
    import sys
    if "prefect.exceptions" not in sys.modules:
        return False
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    return isinstance(exc, PrefectHTTPStatusError | ObjectNotFound)


class _ConsoleWithoutExpectedTracebacks(logging.Formatter):
    """Wraps a console handler's formatter: an expected failure's traceback is left out."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or expected_exit_code(exc) is None:
            return self._inner.format(record)
        # A copy: the same record goes on to the handler that sends the run's log to the server.
        quiet = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self._inner.format(quiet)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def quiet_console_tracebacks() -> None:
    """Leave expected failures' tracebacks out of Prefect's console output (not with --debug)."""
    if debugging():
        return
    from prefect.logging.handlers import PrefectConsoleHandler
    # Prefect's logging config puts its console handler on the root logger.
    for logger in (logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", "prefect.flow_runs"))):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                    handler.formatter, _ConsoleWithoutExpectedTracebacks):
                handler.setFormatter(_ConsoleWithoutExpectedTracebacks(
                    handler.formatter or logging.Formatter()))
