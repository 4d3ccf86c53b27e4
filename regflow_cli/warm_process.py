"""The warm process itself (regflow_cli/warm.py explains what it is for): it imports Prefect
and the replication code once, accepts calls on its socket, and runs each in a fork that takes
over the caller's stdin/stdout/stderr, environment and working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from regflow_cli.warm import FORWARDED_SIGNALS, HEADER, address, forward, peer_uid

# A request is a few KiB (argv and environment); anything larger is not from regflow.
MAX_REQUEST_BYTES = 1024 * 1024
# How long the warm process waits for a connected client to send its request.
REQUEST_SECONDS = 5.0
# How often the warm process checks its idle time.
CHECK_SECONDS = 1.0
# The per-call record is rotated at start past this size: a cron'd call every five minutes
# writes ~3 MB a year.
MAX_RECORD_BYTES = 1024 * 1024


def serve(home: Path, key: str, idle: float) -> int:
    directory = home / "warm"
    info = directory / f"{key}.json"
    stopping: list[int] = []
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(key))
    except OSError:
        return 0  # another warm process for this key won the race; it serves
    listener.listen(16)
    _preload()
    info.write_text(json.dumps({"pid": os.getpid(), "key": key}))
    record = directory / f"{key}.runs"
    with contextlib.suppress(OSError):
        if record.stat().st_size > MAX_RECORD_BYTES:
            record.replace(record.with_suffix(".runs.old"))
    runs = Runs(listener, record)
    try:
        last_used = time.monotonic()
        while not stopping:
            runs.poll(CHECK_SECONDS)
            if runs.active:
                last_used = time.monotonic()
            elif time.monotonic() - last_used >= idle:
                break
    finally:
        listener.close()
        runs.end()
        with contextlib.suppress(OSError):
            if json.loads(info.read_text()).get("pid") == os.getpid():
                info.unlink()
    return 0


# Modules a replicate call imports on first use (Prefect's flow engine, FastAPI's encoder for
# flow parameters, the store's SQLite dialect, ...): measured at ~0.25 s of every fork's time
# before they were imported here. Internal names may move between versions; a missing one
# only costs that time again.
LAZY_IMPORTS = (
    "prefect.engine", "prefect.flow_engine", "prefect.task_engine", "fastapi.encoders",
    "prefect.utilities.visualization", "prefect.telemetry.run_telemetry",
    "prefect._internal.control_listener", "prefect._internal.attempt_control",
    "prefect.concurrency.v1.context", "sqlalchemy.dialects.sqlite", "sqlite3",
    "anyio._backends._asyncio", "rich._emoji_codes", "typer._click.decorators", "pydantic.color",
    "http.cookies", "encodings.idna", "typer._adapters",
)


def _preload() -> None:
    """Import what a replicate call needs, as it would: Prefect reads its settings at import."""
    from flows import embedded
    embedded.prepare_environment()
    import flows.replicate  # noqa: F401  (the import is the point)
    import regflow_cli.main  # noqa: F401
    import tasks.load  # noqa: F401
    for name in LAZY_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from adapters.distribution.client import tls_verify
    from adapters.endpoint import Endpoint
    # The system's CA store (~20 ms of CPU per load), loaded here once for every fork.
    tls_verify(Endpoint(url="https://registry.invalid"))


class Runs:
    """The forks running calls, each watched through a pidfd, and their callers' sockets."""

    def __init__(self, listener: socket.socket, record: Path) -> None:
        self._listener = listener
        self._record = record
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._children: dict[int, socket.socket] = {}
        self._pidfds: dict[int, int] = {}

    @property
    def active(self) -> bool:
        return bool(self._children)

    def poll(self, timeout: float) -> None:
        for handle, _ in self._selector.select(timeout):
            if handle.fileobj is self._listener:
                self._accept()
            elif handle.data[0] == "child":
                self._reap(handle.data[1], handle.fd)
            else:
                self._caller_gone(handle.data[1], handle.fileobj)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError) as exc:
            print(f"refused a call: {exc}", file=sys.stderr, flush=True)
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            self.close_in_fork()
            os._exit(_child(request, fds, conn))
        for fd in fds:
            os.close(fd)
        self._pidfds[pid] = pidfd = os.pidfd_open(pid)
        self._children[pid] = conn
        self._selector.register(pidfd, selectors.EVENT_READ, ("child", pid))
        self._selector.register(conn, selectors.EVENT_READ, ("caller", pid))
        _answer(conn, {"pid": pid})

    def _caller_gone(self, pid: int, conn: Any) -> None:
        # The caller never writes after its request: readable means it ended (killed, closed
        # terminal). Its run ends too, as it would have in-process.
        self._selector.unregister(conn)
        forward(pid, signal.SIGTERM)

    def _reap(self, pid: int, pidfd: int) -> None:
        self._selector.unregister(pidfd)
        os.close(pidfd)
        del self._pidfds[pid]
        _, status, usage = os.wait4(pid, 0)
        code = _exit_code(status)
        # What each call cost (no arguments: they are the caller's business), written before
        # the caller learns the call ended, for accounting such as the benchmark's.
        with contextlib.suppress(OSError), self._record.open("a") as out:
            out.write(json.dumps({"pid": pid, "exit": code, "cpu_s": usage.ru_utime + usage.ru_stime,
                                  "max_rss_kib": usage.ru_maxrss, "at": time.time()}) + "\n")
        conn = self._children.pop(pid)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        _answer(conn, {"exit": code})
        conn.close()

    def end(self) -> None:
        """Stopping: calls still running finish on their own (their callers wait for them)."""
        for pid, pidfd in list(self._pidfds.items()):
            self._reap(pid, pidfd)
        self._selector.close()

    def close_in_fork(self) -> None:
        """A fork keeps only its own caller's socket."""
        self._selector.close()
        self._listener.close()
        for fd in self._pidfds.values():
            os.close(fd)
        for conn in self._children.values():
            conn.close()


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it


def _answer(conn: socket.socket, message: dict[str, int]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(REQUEST_SECONDS)
    if peer_uid(conn) != os.getuid():
        raise ValueError("caller is another user")
    header, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
    if len(fds) != 3 or len(header) != HEADER.size:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    (size,) = HEADER.unpack(header)
    if size > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {size} bytes")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    conn.settimeout(None)
    return json.loads(body), fds


def _child(request: dict[str, Any], fds: list[int], conn: socket.socket) -> int:
    """In the fork: become the caller's process, run the CLI, return its exit code."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        conn.close()
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        # The streams were opened on the warm process's log; buffer as Python would for these.
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        code = _run_cli()
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # a fork must never return into the server loop
        print(f"regflow: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        with contextlib.suppress(BaseException):
            _finish()
    return code


def _run_cli() -> int:
    from prefect.logging.configuration import setup_logging

    from regflow_cli import main
    setup_logging(incremental=False)  # Prefect's console handler on the caller's stderr
    main.bind_streams()
    try:
        main.main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def _finish() -> None:
    import atexit
    import logging
    atexit._run_exitfuncs()  # Prefect drains its event and log workers here, as at any exit
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--idle", type=float, required=True)
    args = parser.parse_args(argv)
    return serve(args.home, args.key, args.idle)


if __name__ == "__main__":
    sys.exit(main())
