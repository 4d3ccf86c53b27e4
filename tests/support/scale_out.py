"""Several "machines" on one host, run the way docs/operations.md ("Several machines") says:
one PostgreSQL (a database for Prefect, one for regflow's store), one Prefect server on it with
an API auth string, and N workers, each ``prefect worker start`` in a process group of its own
with its own working directory, ``REGFLOW_HOME`` and ``PREFECT_HOME``, and the shared server,
store and secret key. A machine can be lost (``kill``: SIGKILL to the worker and every process
under it) and brought back (``restart``).

    with ScaleOutBed(tmp_path / "bed") as bed:
        env = bed.client_env(tmp_path / "control")     # a control machine: regflow apply, ...
        bed.sync_deployments()                         # what `regflow serve` would keep current
        async with bed.client() as client: ...
        bed.machines[0].kill()

Everything listens on 127.0.0.1; everything is ended by the PIDs this module started. Usable
outside pytest (benchmarks): failures are RuntimeError with the log to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from cryptography.fernet import Fernet
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, WorkerStatus
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from deployments.sync import SyncReport, ensure_work_pool, sync_deployments
from flows.liveness import heartbeat_environment
from flows.prefect_server import AUTH_USER, LocalPrefectServer, client_environment, free_port
from flows.spread import WORK_POOL
from policies.store import Store
from tests.support.postgres import Postgres, throwaway_postgres

MACHINES = 3
# Two flow runs at once per machine: enough for a spread execution's parts to meet on one.
WORKER_LIMIT = 2
# Prefect's default is 10 s between polls; a test waits for every pickup.
WORKER_QUERY_SECONDS = 1
PREFECT_DATABASE = "prefect"
REGFLOW_DATABASE = "regflow"
# Three workers importing Prefect at once on two cores, then their first heartbeat.
WORKERS_ONLINE_SECONDS = 60.0
# Server and workers share this host's clock; this covers the rounding of stored times.
CLOCK_SLACK = timedelta(seconds=1)
# SIGTERM, then this long before SIGKILL (a worker cancels nothing on the way out).
STOP_GRACE_SECONDS = 10.0
# The label Prefect's workers put on every flow run they submit.
WORKER_LABEL = "prefect.worker.name"


def _clean_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without any Prefect or regflow settings of its own."""
    return {k: v for k, v in base.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}


# -- processes, by PID ------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    """A process by PID and start time: a PID reused after it ended is not the same process."""

    pid: int
    started: int

    @staticmethod
    def read(pid: int) -> tuple[Proc, int, str] | None:
        """The process, its parent's PID and its state letter; None when it is gone."""
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # The command name is in parentheses and may hold spaces: fields follow the last ')'.
        fields = raw[raw.rindex(")") + 2:].split()
        return Proc(pid, int(fields[19])), int(fields[1]), fields[0]

    def alive(self) -> bool:
        now = Proc.read(self.pid)
        return now is not None and now[0] == self and now[2] not in ("Z", "X")

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def process_tree(root: int) -> list[Proc]:
    """``root`` and every process below it, parents first."""
    children: dict[int, list[Proc]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := Proc.read(int(entry.name))) is not None:
            children.setdefault(found[1], []).append(found[0])
    top = Proc.read(root)
    if top is None:
        return []
    tree = [top[0]]
    for proc in tree:  # grows while it is walked: breadth first
        tree.extend(children.get(proc.pid, []))
    return tree


def kill_tree(root: int) -> list[Proc]:
    """SIGKILL ``root`` and all its descendants, as a machine that loses power: every process is
    stopped first, so that none starts another or is re-parented between the listing and the kill."""
    stopped: dict[int, Proc] = {}
    while True:
        fresh = [p for p in process_tree(root) if p.pid not in stopped]
        if not fresh:
            break
        for proc in fresh:
            proc.signal(signal.SIGSTOP)
            stopped[proc.pid] = proc
    for proc in stopped.values():
        proc.signal(signal.SIGKILL)
    return list(stopped.values())


def wait_gone(procs: list[Proc], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(p.alive() for p in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- one machine ------------------------------------------------------------------------------

@dataclass
class Machine:
    """One worker "machine": ``directory`` is its working directory; ``home`` its REGFLOW_HOME,
    ``prefect_home`` its PREFECT_HOME, ``log`` the worker's output (flow runs' included)."""

    name: str
    directory: Path
    env: dict[str, str]
    limit: int = WORKER_LIMIT
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # When the current worker process was started: its first heartbeat comes after.
    started_at: datetime | None = None
    _terminated: list[Proc] = field(default_factory=list, repr=False)

    @property
    def home(self) -> Path:
        return Path(self.env["REGFLOW_HOME"])

    @property
    def prefect_home(self) -> Path:
        return Path(self.env["PREFECT_HOME"])

    @property
    def log(self) -> Path:
        return self.directory / "worker.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL,
                "--type", "process", "--limit", str(self.limit), "--name", self.name]

    def start(self) -> None:
        for path in (self.directory, self.home, self.prefect_home):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.started_at = datetime.now(UTC)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), cwd=self.directory, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def processes(self) -> list[Proc]:
        """The worker and every process under it (its flow runs), now."""
        return process_tree(self.proc.pid) if self.alive and self.proc is not None else []

    def kill(self) -> list[Proc]:
        """Lose the machine: SIGKILL to the worker and its flow runs at once. Returns them."""
        if self.proc is None or not self.alive:  # not reaped while alive: the PID is still ours
            return []
        killed = kill_tree(self.proc.pid)
        self.proc.wait(timeout=10)
        if not wait_gone(killed, 10):
            raise RuntimeError(f"{self.name}: processes survived SIGKILL: {killed}")
        return killed

    def restart(self) -> None:
        """The machine comes back: a new worker of the same name (``bed.wait_for_workers()``
        returns once the server has heard from it)."""
        if self.alive:
            self.kill()
        self.start()

    def terminate(self) -> list[Proc]:
        """SIGTERM to the worker and its flow runs; ``stop`` waits for them."""
        tree = self.processes()
        for proc in tree:
            proc.signal(signal.SIGTERM)
        self._terminated = tree
        return tree

    def stop(self) -> None:
        """``terminate``, then SIGKILL to whatever is left after the grace."""
        if self.proc is None:
            return
        tree = self._terminated or self.terminate()
        self._terminated = []
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        try:
            self.proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            tree = kill_tree(self.proc.pid) + tree
            self.proc.wait(timeout=10)
        if not wait_gone(tree, max(0.0, deadline - time.monotonic())):
            for proc in tree:
                proc.signal(signal.SIGKILL)  # a flow run the worker left behind
            wait_gone(tree, 10)

    def ran(self, run: FlowRun) -> bool:
        """This machine's worker submitted ``run`` (Prefect labels every run with its worker)."""
        return (run.labels or {}).get(WORKER_LABEL) == self.name


# -- the bed ----------------------------------------------------------------------------------

class ScaleOutBed:
    """PostgreSQL, a Prefect server on it with an auth string, and ``machines`` workers."""

    def __init__(self, base: Path, machines: int = MACHINES, *, worker_limit: int = WORKER_LIMIT,
                 environ: Mapping[str, str] | None = None, settings: Mapping[str, str] | None = None) -> None:
        self.base = base
        self.count = machines
        self.worker_limit = worker_limit
        self.environ = _clean_environment(os.environ if environ is None else environ)
        # regflow or Prefect settings every process of the bed gets (the caller's own are left out).
        self.settings_env = dict(settings or {})
        self.auth = f"{AUTH_USER}:{secrets.token_urlsafe(24)}"
        self.secret_key = Fernet.generate_key().decode()
        self.postgres: Postgres | None = None
        self.server: LocalPrefectServer | None = None
        self.machines: list[Machine] = []
        self._stack = contextlib.ExitStack()
        self.timings: dict[str, float] = {}

    # -- addresses and environments ------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.server is not None, "the bed is not started"
        return self.server.api_url

    @property
    def regflow_database_url(self) -> str:
        assert self.postgres is not None, "the bed is not started"
        return self.postgres.url("postgresql+psycopg", REGFLOW_DATABASE)

    @property
    def prefect_database_url(self) -> str:
        assert self.postgres is not None, "the bed is not started"
        return self.postgres.url("postgresql+asyncpg", PREFECT_DATABASE)

    def client_env(self, home: Path, **extra: str) -> dict[str, str]:
        """Environment of a process on a control machine (`regflow apply`, `regflow serve`, a
        script): the bed's server, store and key; ``home`` its REGFLOW_HOME."""
        env = dict(self.environ)
        env.update(client_environment(self.api_url, self.auth))
        env.update(REGFLOW_HOME=str(home), PREFECT_HOME=str(home / "prefect"),
                   REGFLOW_DATABASE_URL=self.regflow_database_url, REGFLOW_SECRET_KEY=self.secret_key,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
        env.update(self.settings_env)
        env.update(extra)
        return env

    def machine_env(self, name: str, directory: Path) -> dict[str, str]:
        return self.client_env(
            directory / "regflow-home", PREFECT_HOME=str(directory / "prefect-home"),
            REGFLOW_MACHINE=name, PREFECT_WORKER_QUERY_SECONDS=str(WORKER_QUERY_SECONDS),
            **heartbeat_environment())

    def client(self) -> PrefectClient:
        """A client of the bed's server, whatever this process's own Prefect settings say."""
        return PrefectClient(api=self.api_url, auth_string=self.auth)

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """This process's Prefect calls (get_client, run_deployment, ...) go to the bed's server."""
        with temporary_settings(updates={PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth}):
            yield

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> ScaleOutBed:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        self.postgres = self._stack.enter_context(throwaway_postgres(self.base / "postgres"))
        self.postgres.create_database(PREFECT_DATABASE)
        self.postgres.create_database(REGFLOW_DATABASE)
        self.timings["postgres"] = time.monotonic() - began

        began = time.monotonic()
        server_env = dict(self.environ)
        # The canonical name: LocalPrefectServer passes a server only PREFECT_SERVER_* settings.
        server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.prefect_database_url
        self.server = LocalPrefectServer(self.base / "prefect-server", free_port(), auth=self.auth,
                                         base_env=server_env)
        self._stack.callback(self.server.stop)  # before PostgreSQL's stop, which was entered first
        self.server.start()
        self.timings["prefect server"] = time.monotonic() - began

        began = time.monotonic()
        with self.settings():  # before any worker starts: three creating it at once would race
            asyncio.run(ensure_work_pool())
        for i in range(1, self.count + 1):
            name = f"machine-{i}"
            directory = self.base / name
            machine = Machine(name, directory, self.machine_env(name, directory), self.worker_limit)
            self.machines.append(machine)
            machine.start()
        self.wait_for_workers()
        self.timings["workers online"] = time.monotonic() - began

    def wait_for_workers(self, seconds: float = WORKERS_ONLINE_SECONDS) -> None:
        """Until every running machine's current worker process has reported to the server (a
        killed worker stays ONLINE there until its heartbeats are missed: its name says nothing)."""
        wanted = {m.name: m.started_at for m in self.machines if m.alive}
        deadline = time.monotonic() + seconds
        while True:
            dead = [m for m in self.machines if m.name in wanted and not m.alive]
            if dead:
                raise RuntimeError(f"worker {dead[0].name} exited; see {dead[0].log}:\n"
                                   f"{dead[0].log.read_text(errors='replace')[-2000:]}")
            beats = asyncio.run(self.worker_heartbeats())
            online = {name for name, since in wanted.items()
                      if since is not None and name in beats and beats[name] >= since - CLOCK_SLACK}
            if online == set(wanted):
                return
            if time.monotonic() > deadline:
                missing = sorted(set(wanted) - online)
                raise RuntimeError(f"workers {missing} not online after {seconds:.0f} s; "
                                   f"see their worker.log under {self.base}")
            time.sleep(0.5)

    async def online_workers(self) -> set[str]:
        """The workers the server counts as ONLINE (a lost one, for a while, too)."""
        async with self.client() as client:
            workers = await client.read_workers_for_work_pool(WORK_POOL)
        return {w.name for w in workers if w.status == WorkerStatus.ONLINE}

    async def worker_heartbeats(self) -> dict[str, datetime]:
        """Each worker's last heartbeat as the server recorded it."""
        async with self.client() as client:
            workers = await client.read_workers_for_work_pool(WORK_POOL)
        return {w.name: w.last_heartbeat_time for w in workers if w.last_heartbeat_time is not None}

    def sync_deployments(self) -> SyncReport:
        """The store's policies as deployments on the bed's server (what `regflow serve` keeps
        current every few seconds)."""
        with Store(self.regflow_database_url) as store:
            policies = store.policies()
        with self.settings():
            return asyncio.run(sync_deployments(policies))

    async def wait_final(self, run_id: UUID, seconds: float, poll: float = 0.5) -> FlowRun:
        """The flow run once its state is final; RuntimeError after ``seconds``."""
        deadline = time.monotonic() + seconds
        async with self.client() as client:
            while True:
                run = await client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    return run
                if time.monotonic() > deadline:
                    raise RuntimeError(f"flow run {run_id} still {run.state_name} after {seconds:.0f} s")
                await asyncio.sleep(poll)

    def machine_of(self, run: FlowRun) -> Machine | None:
        return next((m for m in self.machines if m.ran(run)), None)

    def stop(self) -> None:
        """Workers first (their runs may still call the server), then the server, then PostgreSQL."""
        for machine in self.machines:
            machine.terminate()  # all at once: each takes a moment to wind down
        for machine in self.machines:
            machine.stop()
        self._stack.close()

    def __enter__(self) -> ScaleOutBed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
