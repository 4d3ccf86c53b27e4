"""One execution spread over 1, 2 and 3 workers (issue 20): the same bandwidth-capped corpus,
copied into a fresh target by a policy with ``spread`` equal to the number of workers.

    uv run --frozen python -m benchmarks.scale_out                     # 1, 2 and 3 workers
    uv run --frozen python -m benchmarks.scale_out --workers 2 --smoke  # checks the harness only

Needs the Debian packages docker-registry and postgresql (tests/support/postgres.py).

What one invocation does:
  1. starts a source registry and seeds it once with a deterministic corpus (benchmarks/corpus.py),
     and puts every registry behind a loopback relay of its own (benchmarks/latency.py) that
     carries at most ``--mbit`` Mbit/s per connection: a worker moves at most
     tasks/blobs.BLOB_CONCURRENCY blobs at once, so its streams, not the 2-core CPU, are its limit;
  2. for N in ``--workers``: a FRESH bed (tests/support/scale_out.ScaleOutBed: PostgreSQL, a
     Prefect server on it with auth, N+1 worker machines with ``--limit 1`` each for N > 1, so the
     execution itself takes one machine's only slot and its N parts land one per other machine;
     one machine for N = 1, where ``spread: 1`` means the execution transfers everything itself),
     a fresh empty target registry, ``regflow apply`` of a policy with ``spread: N``, the
     deployments synced as ``regflow serve`` keeps them, one run of it, and a check of the target;
  3. prints a table and writes everything as JSON under ``--results``.

A fresh bed per N rather than one bed for all: the number of machines must equal the workers
measured (an idle machine of a bigger bed could take a part), and the server's CPU and the
database's write counters then hold this run and the bed's own idle traffic, which is measured
for ``IDLE_SECONDS`` before the run and reported beside it.

Measured per run: wall seconds from ``run_deployment`` to the execution's final state as the
harness saw it, and the server's own timestamps (pickup, planning, each part's pickup, start and
end); bytes per machine (each part's ``part-results-<policy>`` artifact, the machine from the
part's ``prefect.worker.name`` label; for N = 1 the execution's tag records); CPU seconds of the
Prefect server's process tree, of PostgreSQL, of each machine (worker and its flow runs) and of
the relays; rows written to Prefect's database (pg_stat_user_tables inserts + updates + deletes,
per table) and commits; task runs (transfers, and others) and flow runs (the execution and its
parts); whether the target is complete (every tag's manifest digest against the source's, and
``regflow verify``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.deployments import run_deployment

from benchmarks import corpus
from benchmarks.sync import Bench, fresh_target, load1, tree_cpu
from flows import runtime
from flows.history import read_execution
from flows.part import RESULTS_KEY
from flows.runtime import REGISTRY_HOST_SLOTS
from tests.support.postgres import unavailable_reason
from tests.support.registry import RegistryProcess
from tests.support.scale_out import WORKER_LABEL, ScaleOutBed

# ~150 MB in ~1 MiB layers: enough blobs that each of 3 parts keeps its 8 streams busy for most
# of its run; at 8 x 4 Mbit/s, by arithmetic, one worker needs well over half a minute for it.
SHAPE = corpus.Shape("spread", repos=30, tags=2, layers=2, layer_kib="768-1536", shared_base=3,
                     base_kib="1024", every=10, seed=5)
# Harness check only: a few small repositories, seconds of copying.
SMOKE_SHAPE = corpus.Shape("spread-smoke", repos=6, tags=1, layers=1, layer_kib="64", shared_base=1,
                           base_kib="64", every=3, seed=5)
# Per connection: 8 streams of a worker make 4 MB/s, three workers 12 MB/s through each relay,
# which a Python relay on this 2-core machine carries without being the limit itself.
DEFAULT_MBIT = 4.0
# An execution of this corpus at one worker, with room for process starts on a loaded machine.
RUN_SECONDS = 600.0
POLL_SECONDS = 0.25
# The server records task runs from events, after the run: how long to wait for every transfer.
RECORD_SECONDS = 60.0
# The bed's own traffic (worker polls and heartbeats) measured before each run, to tell apart.
IDLE_SECONDS = 10.0
# PostgreSQL 15 flushes a backend's table counters at most once a second while it works and
# within 10 s once idle: read them after this.
STATS_FLUSH_SECONDS = 11.0
PREFECT_DATABASE = "prefect"
API_PAGE = 200


@dataclass
class PartFigures:
    name: str
    machine: str
    bytes: int
    repositories: int
    transfers: int  # transfer task runs it holds
    created: str
    pickup_s: float  # created -> started: a worker took it and its process began the flow
    run_s: float  # started -> ended
    run_count: int


@dataclass
class RunFigures:
    workers: int
    host_slots: int  # the per-registry-host transfer limit (flows/runtime.REGISTRY_HOST_SLOTS)
    machines: int
    worker_limit: int
    spread: int
    policy: str
    state: str
    wall_s: float  # run_deployment -> final state seen by the harness
    server_wall_s: float  # the execution's created -> end_time on the server
    execution_pickup_s: float  # created -> start_time
    execution_machine: str
    first_part_s: float  # execution start -> first part created (discover + plan + deployment)
    last_part_end_to_end_s: float  # last part ended -> execution ended (collect + summary)
    bytes_total: int  # the execution's tag records
    bytes_by_machine: dict[str, int]
    mb_per_s: float
    parts: list[PartFigures]
    flow_runs: int  # the execution and its parts
    transfer_task_runs: int
    other_task_runs: int
    server_cpu_s: float
    server_idle_cpu_per_s: float
    server_cpu_net_s: float  # minus the idle rate over the measured window
    server_cpu_per_task_run_ms: float  # net / (transfer task runs + parts + execution)
    postgres_cpu_s: float
    postgres_cpu_net_s: float
    machine_cpu_s: dict[str, float]
    relay_cpu_s: float
    window_s: float  # the CPU/write window: run + recording + stats flush
    db_writes: dict[str, int]  # table -> inserts + updates + deletes in the window
    db_writes_idle_per_s: float
    db_writes_idle_by_table_per_s: dict[str, float]
    db_writes_net: float
    db_writes_per_task_run: float
    db_commits: int
    events: dict[str, int]  # stored in the window, by name
    target_problems: list[str]
    regflow_verify_rc: int
    bed_timings: dict[str, float]
    load1_before: float
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- database counters
def db_counters(bed: ScaleOutBed) -> tuple[dict[str, int], int]:
    """Rows written per table of Prefect's database so far, and its commits."""
    assert bed.postgres is not None
    rows = bed.postgres.query("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables",
                              PREFECT_DATABASE)
    commits = bed.postgres.query(
        f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{PREFECT_DATABASE}'")
    return {str(name): int(n) for name, n in rows}, int(commits[0][0])


def events_by_type(bed: ScaleOutBed) -> dict[str, int]:
    """Events the server stored so far, by event name (each also writes its related resources)."""
    assert bed.postgres is not None
    return {str(name): int(n) for name, n in
            bed.postgres.query("SELECT event, count(*) FROM events GROUP BY event", PREFECT_DATABASE)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


@dataclass
class Meters:
    """CPU of the bed's processes and the database's write counters, at one moment."""

    at: float
    server: float
    postgres: float
    machines: dict[str, float]
    relays: float
    writes: dict[str, int]
    commits: int
    events: dict[str, int]

    @staticmethod
    def read(bed: ScaleOutBed, bench: Bench) -> Meters:
        assert bed.server is not None and bed.server.proc is not None and bed.postgres is not None
        writes, commits = db_counters(bed)
        return Meters(time.monotonic(), tree_cpu(bed.server.proc.pid), tree_cpu(bed.postgres.pid),
                      {m.name: tree_cpu(m.pid) for m in bed.machines},
                      sum(tree_cpu(relay.pid) for relay, _ in bench._relays.values()), writes, commits,
                      events_by_type(bed))


# --------------------------------------------------------------------------- one run
def write_config(path: Path, bench: Bench, src: RegistryProcess, dst: RegistryProcess, policy: str,
                 spread: int) -> Path:
    config = {
        "version": 1,
        "registries": [{"name": "bench-src", "type": "docker-registry", "url": bench.url_of(src)},
                       {"name": "bench-dst", "type": "docker-registry", "url": bench.url_of(dst)}],
        # Every repository at its source path on the target (as benchmarks/sync.py's policy).
        "policies": [{"name": policy, "src_registry": "bench-src", "dest_registry": "bench-dst",
                      "dest_namespace": "", "dest_namespace_replace_count": -1,
                      "filters": [{"type": "name", "value": "**"}], "trigger": {"type": "manual"},
                      "override": True, "spread": spread}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def regflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=300)


async def wait_final(bed: ScaleOutBed, run_id: UUID, seconds: float) -> FlowRun:
    return await bed.wait_final(run_id, seconds, POLL_SECONDS)


async def read_parts(client: PrefectClient, run_id: UUID) -> list[FlowRun]:
    return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))


async def read_task_runs(client: PrefectClient, run_ids: list[UUID]) -> list[TaskRun]:
    found: list[TaskRun] = []
    while True:
        page = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                                           limit=API_PAGE, offset=len(found))
        found.extend(page)
        if len(page) < API_PAGE:
            return found


async def part_bytes(client: PrefectClient, part: FlowRun, policy: str) -> tuple[int, int]:
    """Bytes and repositories in the part's own results artifact (the newest, after retries)."""
    found = await client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[part.id]),
        key=ArtifactFilterKey(any_=[RESULTS_KEY + runtime.slug(policy)])))
    if not found:
        return 0, 0
    newest = max(found, key=lambda a: a.created or datetime.datetime.min.replace(tzinfo=datetime.UTC))
    data = newest.data
    parsed = json.loads(data) if isinstance(data, str) else data
    rows: list[dict[str, Any]] = parsed if isinstance(parsed, list) else []
    total = sum(int(json.loads(str(r["outcome"])).get("bytes", 0)) for r in rows if "outcome" in r)
    return total, len(rows)


def seconds(a: datetime.datetime | None, b: datetime.datetime | None) -> float:
    return (b - a).total_seconds() if a is not None and b is not None else float("nan")


async def describe(bed: ScaleOutBed, run: FlowRun, policy: str, repositories: set[str]) -> dict[str, Any]:
    """What the server holds about the execution: its parts, their bytes, machines and times."""
    async with bed.client() as client:
        parts = await read_parts(client, run.id)
        # Task runs reach the server as events, a little after the run that started them ended.
        deadline = time.monotonic() + RECORD_SECONDS
        while True:
            task_runs = await read_task_runs(client, [run.id, *(p.id for p in parts)])
            done = [t for t in task_runs if is_transfer(t, repositories) and t.state is not None
                    and t.state.is_final()]
            if len(done) >= len(repositories):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server recorded {len(done)} of {len(repositories)} finished "
                                   f"transfers of {run.name} in {RECORD_SECONDS:.0f} s")
            await asyncio.sleep(1.0)
        figures: list[PartFigures] = []
        for part in sorted(parts, key=lambda p: p.name):
            total, held = await part_bytes(client, part, policy)
            mine = [t for t in task_runs if t.flow_run_id == part.id and is_transfer(t, repositories)]
            figures.append(PartFigures(
                part.name, str((part.labels or {}).get(WORKER_LABEL, "?")), total, held, len(mine),
                part.created.isoformat() if part.created else "", seconds(part.created, part.start_time),
                seconds(part.start_time, part.end_time), part.run_count))
    with bed.settings():
        detail = await read_execution(str(run.id))
    return {"parts": parts, "figures": figures, "task_runs": task_runs,
            "bytes": sum(t.bytes for t in detail.tags)}


def is_transfer(task_run: TaskRun, repositories: set[str]) -> bool:
    """A transfer task run is named after its source repository (flows/transfers.py)."""
    return task_run.name in repositories


async def set_host_slots(hosts: list[str], slots: int) -> None:
    """What `prefect gcl update registry-<host> --limit N` does, before the first transfer."""
    async with get_client() as client:
        for host in hosts:
            await client.upsert_global_concurrency_limit_by_name(runtime.limit_name(host), slots)


def measure(bench: Bench, workers: int, base: Path, host_slots: int) -> RunFigures:
    spread = workers
    machines, limit = (1, 1) if workers == 1 else (workers + 1, 1)
    policy = f"scale-{workers}"
    notes: list[str] = []
    assert bench.src is not None
    with ScaleOutBed(base / f"bed-{workers}", machines=machines, worker_limit=limit) as bed, \
            fresh_target(bench) as dst:
        control = bed.client_env(base / f"control-{workers}")
        applied = regflow(control, "apply", "-f",
                          str(write_config(base / f"{policy}.yaml", bench, bench.src, dst, policy, spread)))
        if applied.returncode != 0:
            raise RuntimeError(f"regflow apply failed: {applied.stderr}")
        if policy not in bed.sync_deployments().applied:
            raise RuntimeError(f"the deployment of {policy} was not applied")
        slots = host_slots or REGISTRY_HOST_SLOTS
        if host_slots:
            with bed.settings():
                asyncio.run(set_host_slots([bench.host_of(bench.src), bench.host_of(dst)], host_slots))
        print(f"  bed up: {', '.join(f'{k} {v:.0f} s' for k, v in bed.timings.items())}; "
              f"measuring {IDLE_SECONDS:.0f} s of idle traffic", flush=True)
        idle0 = Meters.read(bed, bench)
        time.sleep(IDLE_SECONDS)
        idle1 = Meters.read(bed, bench)
        idle_span = idle1.at - idle0.at
        server_idle = (idle1.server - idle0.server) / idle_span
        postgres_idle = (idle1.postgres - idle0.postgres) / idle_span
        idle_tables = {k: v / idle_span for k, v in delta(idle1.writes, idle0.writes).items()}
        writes_idle = sum(idle_tables.values())

        load = load1()
        before = Meters.read(bed, bench)
        started = time.monotonic()
        with bed.settings():
            begun = run_deployment(name=f"replicate/{policy}", timeout=0)
        assert isinstance(begun, FlowRun)
        run = asyncio.run(wait_final(bed, begun.id, RUN_SECONDS))
        wall = time.monotonic() - started
        print(f"  execution {run.name} {run.state_name} after {wall:.1f} s; reading it back", flush=True)
        repositories = set(bench.seeded.tags)
        seen = asyncio.run(describe(bed, run, policy, repositories))
        rest = STATS_FLUSH_SECONDS - (time.monotonic() - started - wall)
        time.sleep(max(0.0, rest))
        after = Meters.read(bed, bench)
        window = after.at - before.at

        problems = corpus.verify(dst.url, bench.seeded, bench.trust(dst), bench.client_auth())
        verified = regflow(control, "verify", policy)
        if verified.returncode != 0:
            notes.append(f"regflow verify: {(verified.stdout + verified.stderr)[-600:]}")

        parts: list[FlowRun] = seen["parts"]
        figures: list[PartFigures] = seen["figures"]
        task_runs: list[TaskRun] = seen["task_runs"]
        transfers = sum(1 for t in task_runs if is_transfer(t, repositories))
        execution_machine = str((run.labels or {}).get(WORKER_LABEL, "?"))
        if figures:
            by_machine: dict[str, int] = {}
            for f in figures:
                by_machine[f.machine] = by_machine.get(f.machine, 0) + f.bytes
        else:
            by_machine = {execution_machine: int(seen["bytes"])}
        if figures and sum(by_machine.values()) != seen["bytes"]:
            notes.append(f"parts' artifacts hold {sum(by_machine.values())} bytes, the execution's tag "
                         f"records {seen['bytes']}")
        if len(parts) > 1 and len({f.machine for f in figures}) < len(parts):
            notes.append(f"parts shared machines: {[(f.name, f.machine) for f in figures]}")
        first_part = min((p.created for p in parts if p.created), default=None)
        last_end = max((p.end_time for p in parts if p.end_time), default=None)
        units = transfers + len(parts) + 1
        server_cpu = after.server - before.server
        server_net = server_cpu - server_idle * window
        postgres_cpu = after.postgres - before.postgres
        writes = delta(after.writes, before.writes)
        writes_net = sum(writes.values()) - writes_idle * window
        total_bytes = sum(by_machine.values())
        return RunFigures(
            workers=workers, host_slots=slots, machines=machines, worker_limit=limit, spread=spread,
            policy=policy,
            state=run.state_name or "?", wall_s=wall, server_wall_s=seconds(run.created, run.end_time),
            execution_pickup_s=seconds(run.created, run.start_time), execution_machine=execution_machine,
            first_part_s=seconds(run.start_time, first_part),
            last_part_end_to_end_s=seconds(last_end, run.end_time),
            bytes_total=int(seen["bytes"]), bytes_by_machine=by_machine, mb_per_s=total_bytes / 1e6 / wall,
            parts=figures, flow_runs=1 + len(parts), transfer_task_runs=transfers,
            other_task_runs=len(task_runs) - transfers, server_cpu_s=server_cpu,
            server_idle_cpu_per_s=server_idle, server_cpu_net_s=server_net,
            server_cpu_per_task_run_ms=1000 * server_net / units, postgres_cpu_s=postgres_cpu,
            postgres_cpu_net_s=postgres_cpu - postgres_idle * window,
            machine_cpu_s={k: v - before.machines.get(k, 0.0) for k, v in after.machines.items()},
            relay_cpu_s=after.relays - before.relays, window_s=window, db_writes=writes,
            db_writes_idle_per_s=writes_idle, db_writes_idle_by_table_per_s=idle_tables,
            db_writes_net=writes_net,
            db_writes_per_task_run=writes_net / units, db_commits=after.commits - before.commits,
            events=delta(after.events, before.events),
            target_problems=problems[:10], regflow_verify_rc=verified.returncode,
            bed_timings=dict(bed.timings), load1_before=load, notes=notes)


# --------------------------------------------------------------------------- report
def table(runs: list[RunFigures]) -> list[str]:
    lines = ["| workers | host slots | state | wall s | MB/s | bytes per machine (MB) | server CPU s (net) | "
             "server CPU ms / task run | PostgreSQL CPU s (net) | DB rows written (net) / task run | "
             "task runs (transfers+other) | flow runs | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        per_machine = ", ".join(f"{m}: {b / 1e6:.1f}" for m, b in sorted(r.bytes_by_machine.items()))
        target = "complete" if not r.target_problems and r.regflow_verify_rc == 0 else \
            f"{len(r.target_problems)} bad tags, verify rc={r.regflow_verify_rc}"
        lines.append(f"| {r.workers} | {r.host_slots} | {r.state} | {r.wall_s:.1f} | {r.mb_per_s:.2f} | "
                     f"{per_machine} | "
                     f"{r.server_cpu_s:.1f} ({r.server_cpu_net_s:.1f}) | "
                     f"{r.server_cpu_per_task_run_ms:.0f} | "
                     f"{r.postgres_cpu_s:.1f} ({r.postgres_cpu_net_s:.1f}) | "
                     f"{r.db_writes_per_task_run:.1f} | "
                     f"{r.transfer_task_runs}+{r.other_task_runs} | {r.flow_runs} | {target} |")
    return lines


def timeline(runs: list[RunFigures]) -> list[str]:
    lines = ["| workers | execution pickup s | start -> first part s | part pickup s | part run s | "
             "last part end -> execution end s | execution on |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        pickups = ", ".join(f"{p.pickup_s:.1f}" for p in r.parts) or "-"
        runs_s = ", ".join(f"{p.run_s:.1f}" for p in r.parts) or "-"
        lines.append(f"| {r.workers} | {r.execution_pickup_s:.1f} | {r.first_part_s:.1f} | {pickups} | "
                     f"{runs_s} | {r.last_part_end_to_end_s:.1f} | {r.execution_machine} |")
    return lines


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the beds and registries end the processes they started."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,3", help="comma-separated worker counts, one fresh bed each")
    ap.add_argument("--mbit", type=float, default=DEFAULT_MBIT, help="Mbit/s per connection, at each relay")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="round trip the relays add")
    ap.add_argument("--host-slots", type=int, default=0,
                    help="transfers at once per registry host across the server (0: regflow's default, "
                    f"{REGISTRY_HOST_SLOTS}), set before each run as `prefect gcl update` would")
    ap.add_argument("--smoke", action="store_true", help="a tiny corpus: checks the harness, claims nothing")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--results", type=Path, default=Path("/tmp/regflow-bench-scale-out"),
                    help="directory the JSON report is written to")
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    counts = [int(w) for w in args.workers.split(",") if w]
    if not counts or min(counts) < 1:
        ap.error("--workers: positive counts")
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="regflow-scale-out-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    load = Path("/proc/loadavg").read_text().strip()
    print(f"{stamp} {platform.node()} {os.cpu_count()} cpus, load {load}; workdir {workdir}", flush=True)
    bench = Bench(workdir, [], rtt_ms=args.rtt_ms, mbit=args.mbit)
    runs: list[RunFigures] = []
    rc = 1
    try:
        with terminated_as_interrupt():
            src = bench.start_source()
            print(f"seeding {shape.name} ({corpus.estimate(shape)}) ...", flush=True)
            bench.seeded = corpus.seed(src.url, shape)
            print(f"  {bench.seeded.describe()}; pushed in {bench.seeded.seconds:.1f} s; relays: "
                  f"{args.mbit:g} Mbit/s per connection, {args.rtt_ms:g} ms", flush=True)
            for workers in counts:
                print(f"\n{workers} worker(s): a fresh bed ...", flush=True)
                figures = measure(bench, workers, workdir, args.host_slots)
                runs.append(figures)
                print(f"  wall {figures.wall_s:.1f} s, {figures.mb_per_s:.2f} MB/s, "
                      f"server CPU {figures.server_cpu_s:.1f} s, target problems "
                      f"{len(figures.target_problems)}, verify rc {figures.regflow_verify_rc}", flush=True)
        bad = [r for r in runs if r.state != "Completed" or r.target_problems or r.regflow_verify_rc]
        rc = 1 if bad else 0
    finally:
        bench.close()
        if runs:
            print(f"\n### {bench.seeded.describe()}; {args.mbit:g} Mbit/s per connection; "
                  f"one fresh bed per worker count\n")
            print("\n".join(table(runs)))
            print("\nwhere the time goes (server timestamps):\n")
            print("\n".join(timeline(runs)))
            for r in runs:
                for note in r.notes:
                    print(f"  note ({r.workers} workers): {note}")
            args.results.mkdir(parents=True, exist_ok=True)
            out = args.results / f"scale-out-{stamp.replace(':', '')}.json"
            out.write_text(json.dumps({
                "ts": stamp, "host": platform.node(), "cpus": os.cpu_count(),
                "mbit_per_connection": args.mbit, "rtt_ms": args.rtt_ms, "corpus": asdict(shape),
                "seeded": bench.seeded.describe(),
                "blob_bytes": bench.seeded.blob_bytes, "runs": [asdict(r) for r in runs]}, indent=2))
            print(f"\nresults: {out}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
