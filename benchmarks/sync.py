"""regflow beside ``skopeo sync``: whole-registry copies between local CNCF distribution
registries, in one invocation, with a fresh empty target for every full copy.

    uv run python -m benchmarks.sync --corpus small --pairs 3     # also medium, manysmall, fewbig,
                                                                  # deepbase, huge
    uv run python -m benchmarks.sync --smoke                 # 1 pair, 3 repositories, < 60 s
    uv run python -m benchmarks.sync --scale 2000            # discover + plan of a no-change resync
    uv run python -m benchmarks.sync --corpus medium --estimate

Needs the Debian packages docker-registry, skopeo and time (GNU time measures each copier).

What one invocation does:
  1. starts a source registry (anonymous, access log on) and seeds it once with a deterministic
     corpus (benchmarks/corpus.py: the shapes of /work/shared/bench/BASELINE.md);
  2. starts one local Prefect server (flows.prefect_server.LocalPrefectServer), as ``regflow
     serve`` users have, and keeps one REGFLOW_HOME for the whole invocation, so that the
     embedded Prefect database is warm after the first (untimed) warm-up run;
  3. ``--pairs`` times, for each tool in turn (the order rotates each pair): a full copy into a
     FRESH empty target registry, then a no-change resync into the same target; every tag of
     every run is verified by the sha256 of the manifest bytes served by the source and the target.
     Used targets are stopped at once and their storage removed at the end (see fresh_target).

Tools:
  regflow-server    ``regflow replicate bench-all --json`` with PREFECT_API_URL = the local server
  regflow-embedded  the same without PREFECT_API_URL (embedded Prefect under REGFLOW_HOME)
  skopeo            ``skopeo sync --src yaml --dest docker --all --preserve-digests``, one YAML and
                    one invocation per parent namespace (skopeo keeps only the last path component
                    of a repository under the destination, so ``team-a/svc/api-4`` must go to
                    ``DEST/team-a/svc``); both tools land every repository at its source path.

``--baseline DIR`` adds the tool ``regflow-baseline``: the regflow of another checkout (its own
``DIR/.venv``, e.g. ``git worktree add DIR <commit>`` + ``uv sync``) in server mode on the same
Prefect server, with a REGFLOW_HOME of its own, so that old and new code are measured side by
side in one run on the same corpus. Its CPU and RSS are those of its ``regflow`` process tree
(an old regflow that forked its calls from a warm process ran outside that tree: compare wall).

``--rtt-ms N [--mbit M]`` puts each registry behind a loopback relay of its own
(benchmarks/latency.py: N ms round trip, M Mbit/s per connection, a round trip per connection
opened), so every tool pays round trips and handshakes as with remote registries; ``--tls``
makes the registries serve https (regflow verifies each against its CA; skopeo is run with
verification off, the handshakes are the same). The relays' own CPU is on the same machine
(reported as "relays cpu").

``--smoke`` runs skopeo and regflow-server only (add ``--tools regflow-embedded,...`` for the
embedded mode: its Prefect start would take the smoke past a minute on a loaded machine).

``--scale N``: N repositories x 5 tags (+ latest) of tiny images; the target is a copy of the
source's storage, so every tag is identical; times ``regflow replicate --dry-run --json``
(exactly discover + plan) ``--pairs`` times, then, with ``--tools regflow-embedded``, one real
no-change ``replicate`` through the flow. ``--seed-cache DIR`` keeps the seeded storage for the
next run of the same N; ``benchmarks/scale_plot.py`` draws the growth from the results file.

Measured per run: wall seconds; CPU seconds of the copier (its rusage from wait4, reaped
children included) and of the source registry, the target registry, the Prefect server
and the latency relays (/proc/PID/stat deltas); requests seen by the target and the source
(access-log lines between two marks); peak RSS of the copier (ru_maxrss: the largest single
process) and of its whole process tree (sum of RSS of the copier and its children, sampled
every 0.25 s).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from adapters.distribution.trace import TRACE_DIR_ENV
from benchmarks import corpus, critical_path
from flows import prefect_server
from flows.prefect_server import LocalPrefectServer
from tests.support.auth import ChallengeTokenAuth
from tests.support.registry import RegistryProcess, TokenAuthConfig, free_port
from tests.support.token_service import TokenService

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_SAMPLE_SECONDS = 0.25
# containers/image's blob-info cache: a stale one makes skopeo try mounts that cannot work in
# a fresh target, so the baseline deleted it before every full copy; so do we.
SKOPEO_BLOB_INFO_CACHES = (Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb"),
                           Path.home() / ".local/share/containers/cache/blob-info-cache-v1.boltdb")
POLICY, WARMUP_POLICY = "bench-all", "bench-warmup"
# --token: the one user of the token service, and the variable regflow's config reads its password
# from (a config file never holds a secret in plain text).
BENCH_USER, BENCH_PASSWORD = "bench", "bench-" + os.urandom(6).hex()
PASSWORD_VARIABLE = "REGFLOW_BENCH_PASSWORD"
EPHEMERAL_STARTUP_TIMEOUT = "120"
REGFLOW_TOOLS = ("regflow-server", "regflow-embedded", "regflow-baseline")
BASELINE = "regflow-baseline"
# Tools that talk to the benchmark's own Prefect server.
SERVER_TOOLS = ("regflow-server", BASELINE)
# Pair 1 runs in this order (later pairs rotate it); the Prefect server finishes starting
# while the first two run.
ALL_TOOLS = ("regflow-embedded", "skopeo", "regflow-server")
# The smoke run leaves out the embedded mode: its per-invocation Prefect start (7-8 s warm,
# 15+ s on a fresh home) would take the smoke past a minute on a loaded 2-core machine.
SMOKE_TOOLS = ("skopeo", "regflow-server")
# Targets of issue 6, for the verdict lines.
TARGET_WALL_RATIO, TARGET_RESYNC_RATIO, TARGET_REQUEST_RATIO, TARGET_RSS_MIB = 0.5, 0.5, 0.5, 250.0
TARGET_SCALE_SECONDS, TARGET_SCALE_RSS_MIB = 60.0, 400.0


# --------------------------------------------------------------------------- /proc
def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    children, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its live descendants, reaped children included (cutime, cstime)."""
    if pid is None:
        return 0.0
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError):
            f = _stat_fields(p)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICK


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{p}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


class RssSampler(threading.Thread):
    """Peak of the summed RSS of a process tree, sampled."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.done.wait(RSS_SAMPLE_SECONDS)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --------------------------------------------------------------------------- running a copier
@dataclass
class Measured:
    wall: float
    cpu: float
    rss_mib: float  # max ru_maxrss over the commands (the largest single process)
    tree_rss_mib: float  # peak summed RSS of a command's process tree, max over the commands
    rc: int
    stdout: str


def run_measured(commands: Sequence[Sequence[str]], env: dict[str, str], log: Path) -> Measured:
    """Run the commands one after another; wall for all, CPU summed, RSS the max over them.

    Each command runs under GNU time (``/usr/bin/time``, apt-get install time): a small C program
    forks it, so its ru_maxrss is its own. (Forked straight from this Python process, a child's
    ru_maxrss starts at this process's RSS: Linux carries the high-water mark across exec.) Its
    CPU is the child's rusage, reaped descendants included."""
    gnu_time = shutil.which("time", path="/usr/bin")
    started = time.monotonic()
    cpu = rss = tree_peak = 0.0
    rc = 0
    outputs = []
    with log.open("ab") as logf, tempfile.TemporaryDirectory() as scratch:
        for argv in commands:
            logf.write(f"\n$ {' '.join(argv)}\n".encode())
            logf.flush()
            timing = Path(scratch) / "time"
            wrapped = [gnu_time, "-f", "%x %U %S %M", "-o", str(timing), *argv] if gnu_time else list(argv)
            with tempfile.TemporaryFile() as out:
                proc = subprocess.Popen(wrapped, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=logf)
                sampler = RssSampler(proc.pid)
                sampler.start()
                try:
                    _, status, usage = os.wait4(proc.pid, 0)
                except BaseException:  # interrupted: end the child we started, then give up
                    proc.terminate()
                    proc.wait()
                    sampler.stop()
                    raise
                proc.returncode = os.waitstatus_to_exitcode(status)
                tree_peak = max(tree_peak, sampler.stop() / 2**20)
                out.seek(0)
                text = out.read().decode(errors="replace")
            logf.write(text.encode()[-4000:])
            outputs.append(text)
            if gnu_time:
                code, user, system, maxrss_kib = timing.read_text().split()[-4:]
                cpu += float(user) + float(system)
                rss = max(rss, int(maxrss_kib) / 1024)
                rc = rc or int(code) or proc.returncode
            else:  # ru_maxrss then includes this process's RSS at fork time: an upper bound
                cpu += usage.ru_utime + usage.ru_stime
                rss = max(rss, usage.ru_maxrss / 1024)
                rc = rc or proc.returncode
    return Measured(time.monotonic() - started, cpu, rss, tree_peak, rc, "".join(outputs))


# --------------------------------------------------------------------------- access logs
_KINDS = (("ping", re.compile(r"/v2/?")), ("catalog", re.compile(r"/v2/_catalog")),
          ("tags", re.compile(r"/v2/.+/tags/list")), ("manifest", re.compile(r"/v2/.+/manifests/[^/]+")),
          ("upload", re.compile(r"/v2/.+/blobs/uploads/.*")), ("blob", re.compile(r"/v2/.+/blobs/[^/]+")))


def _kind(path: str) -> str:
    return next((k for k, rx in _KINDS if rx.fullmatch(path)), "other")


def request_mix(registry: RegistryProcess, since: int) -> Counter[str]:
    """``"HEAD blob 404" -> n`` for every access-log line after ``since``."""
    return Counter(f"{e.method} {_kind(e.path)} {e.status}" for e in registry.access_log(since=since))


def _compact(mix: Counter[str]) -> str:
    by: Counter[str] = Counter()
    for key, n in mix.items():
        method, kind, status = key.split()
        by[f"{method} {kind}" + (f" {status}" if status == "404" else "")] += n
    return ", ".join(f"{n} {k}" for k, n in by.most_common())


# --------------------------------------------------------------------------- the tools
@dataclass
class Sample:
    corpus: str
    tool: str
    phase: str  # full | resync | warmup | dry-run
    pair: int
    wall: float
    cpu: float
    rss_mib: float
    tree_rss_mib: float
    src_cpu: float
    dst_cpu: float
    server_cpu: float
    dst_requests: int
    src_requests: int
    bad_tags: int
    rc: int
    load1: float
    dst_mix: dict[str, int] = field(default_factory=dict)
    src_mix: dict[str, int] = field(default_factory=dict)
    note: str = ""
    # The latency relays' CPU (remote runs): theirs, not the copier's, but on the same 2 cores.
    relay_cpu: float = 0.0


@dataclass(frozen=True)
class _Upstream:
    """Something a latency relay can front: the token service has a port, not a RegistryProcess."""

    host: str


class Bench:
    def __init__(self, workdir: Path, tools: Sequence[str], baseline: Path | None = None,
                 rtt_ms: float = 0.0, mbit: float = 0.0, tls: bool = False, token: bool = False,
                 trace: bool = False) -> None:
        self.workdir = workdir
        # Each regflow run's registry requests, for the critical path (benchmarks/critical_path.py).
        self.trace = trace
        self.tls = tls
        self.rtt_ms, self.mbit = rtt_ms, mbit
        self._relays: dict[int, tuple[subprocess.Popen[str], str]] = {}
        # --token: every registry wants a bearer token from one token service (behind its own
        # relay when remote), so each tool pays its token fetches as with Docker Hub or Harbor.
        self.tokens: TokenService | None = None
        self._token_auth: TokenAuthConfig | None = None
        if token:
            self.tokens = TokenService(users={BENCH_USER: BENCH_PASSWORD}, base_dir=workdir, tls=tls).start()
            upstream = _Upstream(f"127.0.0.1:{self.tokens.port}")
            self._token_upstream = upstream  # held: host_of keys relays by id()
            scheme = "https" if tls else "http"
            realm = f"{scheme}://{self.host_of(upstream)}/token" if self.remote else self.tokens.realm
            self._token_auth = TokenAuthConfig(realm=realm, issuer=self.tokens.issuer,
                                               service=self.tokens.service,
                                               rootcertbundle=self.tokens.cert_path)
        self.tools = list(tools)
        self.home = workdir / "regflow-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.baseline = baseline
        self.baseline_home = workdir / "baseline-home"
        self.log = workdir / "tools.log"
        self.src: RegistryProcess | None = None
        self.server: LocalPrefectServer | None = None
        self._server_thread: threading.Thread | None = None
        self._server_error: BaseException | None = None
        self.regflow = str(Path(sys.executable).with_name("regflow"))
        if not Path(self.regflow).exists():
            self.regflow = ""
        self.samples: list[Sample] = []
        self.spent: list[Path] = []  # storage of used targets, removed by close()

    # -- remote-looking registries
    @property
    def remote(self) -> bool:
        return self.rtt_ms > 0 or self.mbit > 0

    def host_of(self, registry: RegistryProcess | _Upstream) -> str:
        """host:port the copiers use: the registry's own, or its latency relay's."""
        if not self.remote:
            return registry.host
        key = id(registry)
        if key not in self._relays:
            port = free_port()
            relay = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.latency", "--listen", str(port), "--upstream",
                 registry.host, "--rtt-ms", str(self.rtt_ms), "--mbit", str(self.mbit)],
                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
            assert relay.stdout is not None
            if relay.stdout.readline().strip() != "ready":
                relay.kill()
                raise RuntimeError("latency relay did not start")
            self._relays[key] = (relay, f"127.0.0.1:{port}")
        return self._relays[key][1]

    def url_of(self, registry: RegistryProcess) -> str:
        scheme = "https" if registry.tls is not None else "http"
        return f"{scheme}://{self.host_of(registry)}" if self.remote else registry.url

    def relays_cpu(self) -> float:
        """CPU seconds the live latency relays have used (0 on loopback)."""
        return sum(tree_cpu(relay.pid) for relay, _ in self._relays.values())

    def drop_relay(self, registry: RegistryProcess) -> None:
        if (entry := self._relays.pop(id(registry), None)) is not None:
            entry[0].terminate()
            entry[0].wait(10)

    # -- lifecycle
    def new_registry(self) -> RegistryProcess:
        """A registry as every tool of this run sees them: anonymous, or wanting a token."""
        if self._token_auth is None:
            return RegistryProcess("anonymous", log_level="error", base_dir=self.workdir, tls=self.tls)
        return RegistryProcess("token", users={BENCH_USER: BENCH_PASSWORD}, token_auth=self._token_auth,
                               log_level="error", base_dir=self.workdir, tls=self.tls)

    def trust(self, registry: RegistryProcess) -> ssl.SSLContext | bool:
        """httpx's ``verify=`` for the harness: the registry's CA, and the token service's."""
        if registry.ca_pem is None:
            return True
        return ssl.create_default_context(cadata=registry.ca_pem + self._token_ca())

    def _token_ca(self) -> str:
        return (self.tokens.ca_pem or "") if self.tokens is not None else ""

    def client_auth(self) -> ChallengeTokenAuth | None:
        """For the harness's own seeding and checking."""
        return ChallengeTokenAuth(BENCH_USER, BENCH_PASSWORD) if self.tokens is not None else None

    def start_source(self) -> RegistryProcess:
        self.src = self.new_registry()
        self.src.start()
        return self.src

    def start_server_async(self) -> None:
        """Start the Prefect server in the background (it takes 12+ s); ``server_ready`` waits."""
        if not set(SERVER_TOOLS) & set(self.tools):
            return
        home = self.workdir / "prefect-server"
        self.server = LocalPrefectServer(home, free_port(), auth=prefect_server.auth_string(home))

        def start() -> None:
            assert self.server is not None
            try:
                self.server.start()
            except BaseException as exc:  # reported by server_ready, in the main thread
                self._server_error = exc

        self._server_thread = threading.Thread(target=start, daemon=True)
        self._server_thread.start()

    def server_ready(self) -> None:
        if self._server_thread is not None:
            self._server_thread.join()
            self._server_thread = None
            if self._server_error is not None:
                raise RuntimeError(f"local Prefect server failed: {self._server_error}")

    def resident_pid(self) -> int | None:
        info = prefect_server.read_info(self.home / "prefect")
        return info.pid if info is not None else None

    def close(self) -> None:
        if (info := prefect_server.read_info(self.home / "prefect")) is not None:
            prefect_server.stop(info)  # the embedded runs' resident server: ours to end
        if self._server_thread is not None:
            self._server_thread.join()
        if self.server is not None:
            self.server.stop()
        for relay, _ in self._relays.values():
            relay.terminate()
            relay.wait(10)
        self._relays.clear()
        if self.src is not None:
            self.src.close()
        if self.tokens is not None:
            self.tokens.close()
        if self.baseline is not None and self.baseline_home.exists():
            # An older regflow may have left warm processes of its own: ours to end.
            subprocess.run([str(self.baseline / ".venv/bin/python"), "-c",
                            "import sys; from pathlib import Path; from regflow_cli import warm; "
                            "warm.stop(Path(sys.argv[1]))", str(self.baseline_home)],
                           cwd=self.baseline, check=False, capture_output=True)
        for spent in self.spent:
            shutil.rmtree(spent, ignore_errors=True)

    @property
    def server_pid(self) -> int | None:
        return self.server.proc.pid if self.server is not None and self.server.proc is not None else None

    # -- regflow
    def _regflow_argv(self, *args: str, tool: str = "") -> list[str]:
        if tool == BASELINE:
            assert self.baseline is not None
            return [str(self.baseline / ".venv/bin/regflow"), *args]
        head = [self.regflow] if self.regflow else [sys.executable, "-m", "regflow_cli.main"]
        return [*head, *args]

    def regflow_env(self, tool: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
        env["REGFLOW_HOME"] = str(self.baseline_home if tool == BASELINE else self.home)
        env[PASSWORD_VARIABLE] = BENCH_PASSWORD
        # Prefect gives its ephemeral server 20 s to answer; on this 2-core VM under the load of
        # other test runs (load1 6-13) the embedded mode then fails with "Timed out while
        # attempting to connect to ephemeral Prefect API". Measured, not hidden: see the doc.
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = EPHEMERAL_STARTUP_TIMEOUT
        if tool in SERVER_TOOLS:
            assert self.server is not None
            env.update(prefect_server.client_environment(self.server.api_url, self.server.auth))
            env["PREFECT_HOME"] = str(self.workdir / "cli-prefect-home")
            env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
            env["DO_NOT_TRACK"] = "1"
        return env

    def apply(self, src: RegistryProcess, dst: RegistryProcess) -> None:
        """Point the benchmark policies at this source and target (untimed); over TLS regflow
        verifies each registry against its own CA, as a user configures it."""
        registries = []
        for name, registry in (("bench-src", src), ("bench-dst", dst)):
            entry: dict[str, object] = {"name": name, "type": "docker-registry", "url": self.url_of(registry)}
            if registry.ca_pem is not None:
                # The token service's CA too: regflow fetches tokens with the registry's trust.
                entry["ca_certificate"] = registry.ca_pem + self._token_ca()
            if self.tokens is not None:
                entry["credential"] = {"type": "basic", "access_key": BENCH_USER,
                                       "access_secret": "${" + PASSWORD_VARIABLE + "}"}
            registries.append(entry)
        config = {
            "version": 1,
            "registries": registries,
            "policies": [
                # Everything, each repository at its own path on the target (skopeo's layout here).
                {"name": POLICY, "src_registry": "bench-src", "dest_registry": "bench-dst",
                 "dest_namespace": "", "dest_namespace_replace_count": -1,
                 "filters": [{"type": "name", "value": "**"}], "trigger": {"type": "manual"},
                 "override": True},
                {"name": WARMUP_POLICY, "src_registry": "bench-src", "dest_registry": "bench-dst",
                 "filters": [{"type": "name", "value": "no-such-namespace/**"}],
                 "trigger": {"type": "manual"}},
            ],
        }
        path = self.workdir / "regflow.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = self.regflow_env("regflow-embedded")
        subprocess.run(self._regflow_argv("apply", "-f", str(path)), env=env, check=True,
                       stdout=subprocess.DEVNULL)
        if BASELINE in self.tools:
            subprocess.run(self._regflow_argv("apply", "-f", str(path), tool=BASELINE),
                           env=self.regflow_env(BASELINE), check=True, stdout=subprocess.DEVNULL)

    def commands(self, tool: str, dst: RegistryProcess, policy: str = POLICY,
                 dry_run: bool = False) -> tuple[list[list[str]], dict[str, str]]:
        if tool == "skopeo":
            return self.skopeo_commands(dst), dict(os.environ)
        args = ["replicate", policy, "--json"] + (["--dry-run"] if dry_run else [])
        return [self._regflow_argv(*args, tool=tool)], self.regflow_env(tool)

    # -- skopeo
    def skopeo_commands(self, dst: RegistryProcess) -> list[list[str]]:
        assert self.src is not None
        repos = sorted(self.seeded.tags)
        groups: dict[str, list[str]] = {}
        for r in repos:
            groups.setdefault(r.rsplit("/", 1)[0] if "/" in r else "", []).append(r)
        folder = self.workdir / "skopeo-sync"
        folder.mkdir(exist_ok=True)
        commands = []
        for i, (parent, names) in enumerate(sorted(groups.items())):
            path = folder / f"group-{i}.yml"
            path.write_text(yaml.safe_dump(
                {self.host_of(self.src): {"tls-verify": False, "images": {n: [] for n in names}}}))
            dest = self.host_of(dst) + (f"/{parent}" if parent else "")
            login = f"{BENCH_USER}:{BENCH_PASSWORD}"
            creds = [] if self.tokens is None else ["--src-creds", login, "--dest-creds", login]
            commands.append(["skopeo", "sync", "--src", "yaml", "--dest", "docker", "--all",
                             "--preserve-digests", "--dest-tls-verify=false", *creds, str(path), dest])
        return commands

    # -- one measured run
    seeded: corpus.Seeded

    def run(self, tool: str, phase: str, pair: int, dst: RegistryProcess, *, policy: str = POLICY,
            dry_run: bool = False, verify: bool = True) -> Sample:
        assert self.src is not None
        if tool in SERVER_TOOLS:
            self.server_ready()
        commands, env = self.commands(tool, dst, policy, dry_run)
        traces = self.workdir / "traces" / f"{tool}-{phase}-{pair}"
        if self.trace and tool != "skopeo":
            shutil.rmtree(traces, ignore_errors=True)
            env = env | {TRACE_DIR_ENV: str(traces)}
        if tool == "skopeo" and phase == "full":
            for cache in SKOPEO_BLOB_INFO_CACHES:
                cache.unlink(missing_ok=True)
        src_mark, dst_mark = self.src.log_mark(), dst.log_mark()
        # The Prefect server this tool talks to: the runner's for regflow-server, the resident
        # one under REGFLOW_HOME for regflow-embedded (it may start during the run: CPU from 0).
        server_pid = self.resident_pid() if tool == "regflow-embedded" else self.server_pid
        src0, dst0, server0 = tree_cpu(self.src.pid), tree_cpu(dst.pid), tree_cpu(server_pid)
        relay0 = self.relays_cpu()
        load = load1()
        m = run_measured(commands, env, self.log)
        src_cpu, dst_cpu = tree_cpu(self.src.pid) - src0, tree_cpu(dst.pid) - dst0
        relay_cpu = self.relays_cpu() - relay0
        if tool == "regflow-embedded":
            server_pid = self.resident_pid()
        server_cpu = tree_cpu(server_pid) - server0
        src_mix, dst_mix = request_mix(self.src, src_mark), request_mix(dst, dst_mark)
        note = ""
        if tool != "skopeo":
            note = _regflow_note(m.stdout, dry_run)
            if self.trace:
                path = critical_path.summarize_directory(traces)
                note += f" {path.line()}"
                (traces / "summary.json").parent.mkdir(parents=True, exist_ok=True)
                (traces / "summary.json").write_text(json.dumps(asdict(path), indent=1))
            if tool == "regflow-embedded" and (pid := self.resident_pid()) is not None:
                note += f" resident_server_rss={tree_rss(pid) / 2**20:.0f}MiB"
            # The whole --json answer (tools.log keeps only its tail), for a look with --keep.
            outputs = self.workdir / "outputs"
            outputs.mkdir(exist_ok=True)
            (outputs / f"{tool}-{phase}-{pair}.json").write_text(m.stdout)
        bad = len(corpus.verify(dst.url, self.seeded, self.trust(dst), self.client_auth())) if verify else 0
        sample = Sample(self.seeded.shape, tool, phase, pair, m.wall, m.cpu, m.rss_mib, m.tree_rss_mib,
                        src_cpu, dst_cpu, server_cpu, sum(dst_mix.values()), sum(src_mix.values()),
                        bad, m.rc, load, dict(dst_mix), dict(src_mix), note, relay_cpu)
        self.samples.append(sample)
        print(f"  pair {pair} {tool:16} {phase:7} wall={m.wall:6.2f}s cpu={m.cpu:5.2f}s "
              f"rss={m.rss_mib:5.0f}MiB tree={m.tree_rss_mib:5.0f}MiB src_cpu={src_cpu:5.2f} "
              f"dst_cpu={dst_cpu:5.2f} server_cpu={server_cpu:5.2f} relay_cpu={relay_cpu:5.2f} "
              f"dst_req={sample.dst_requests} "
              f"src_req={sample.src_requests} load1={load:.1f} rc={m.rc} bad_tags={bad} {note}",
              flush=True)
        if m.rc != 0 or bad:
            print(f"    !! {tool} {phase} failed (rc={m.rc}, {bad} bad tags); see {self.log}", flush=True)
        return sample


def _regflow_note(stdout: str, dry_run: bool) -> str:
    """A short summary of regflow's --json output (or why it could not be read)."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), "")
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return "(no JSON output)"
    if dry_run:
        actions = Counter(t["action"] for r in data["repositories"] for t in r["tags"])
        return " ".join(f"{k}={v}" for k, v in sorted(actions.items()))
    copied = sum(t["copied"] for t in data["tasks"])
    return f"{data['status']} copied={copied} transfers={data['transfers']}"


# --------------------------------------------------------------------------- tables
def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cell(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(_med(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def table(samples: list[Sample], tools: Sequence[str], phases: Sequence[str]) -> list[str]:
    lines = ["| tool | phase | wall s | copier cpu s | src reg cpu s | dst reg cpu s | prefect server cpu s "
             "| relays cpu s | dst requests | src requests | peak RSS MiB | tree RSS MiB | load1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tool in tools:
        for phase in phases:
            ss = [s for s in samples if s.tool == tool and s.phase == phase]
            if not ss:
                continue

            def col(key: str, fmt: str = "{:.2f}", ss: list[Sample] = ss) -> str:
                return _cell([getattr(s, key) for s in ss], fmt)

            lines.append(f"| {tool} | {phase} | {col('wall')} | {col('cpu')} | {col('src_cpu')} | "
                         f"{col('dst_cpu')} | {col('server_cpu')} | {col('relay_cpu')} | "
                         f"{col('dst_requests', '{:.0f}')} | "
                         f"{col('src_requests', '{:.0f}')} | {col('rss_mib', '{:.0f}')} | "
                         f"{col('tree_rss_mib', '{:.0f}')} | {col('load1', '{:.1f}')} |")
    return lines


def _pair_ratios(samples: list[Sample], tool: str, phase: str, key: str,
                 versus: str = "skopeo") -> list[float]:
    """``tool``/``versus`` (regflow/skopeo by default) for ``key`` in each pair where both ran."""
    ours = {s.pair: s for s in samples if s.tool == tool and s.phase == phase}
    theirs = {s.pair: s for s in samples if s.tool == versus and s.phase == phase}
    return [getattr(ours[p], key) / getattr(theirs[p], key) for p in ours
            if p in theirs and getattr(theirs[p], key)]


def ratios(samples: list[Sample], tools: Sequence[str]) -> list[str]:
    """regflow/skopeo, per pair, then the median [min-max] over pairs."""
    lines = ["| regflow mode | full copy wall | resync wall | target requests, full | target requests, "
             "resync | peak RSS, full (tree) | copier cpu, full |",
             "|---|---|---|---|---|---|---|"]
    for tool in tools:
        if tool == "skopeo":
            continue

        def r(phase: str, key: str, tool: str = tool) -> str:
            return _cell(_pair_ratios(samples, tool, phase, key))

        lines.append(f"| {tool} | {r('full', 'wall')} | {r('resync', 'wall')} | "
                     f"{r('full', 'dst_requests')} | {r('resync', 'dst_requests')} | "
                     f"{r('full', 'rss_mib')} ({r('full', 'tree_rss_mib')}) | {r('full', 'cpu')} |")
    return lines


def verdicts(samples: list[Sample], tools: Sequence[str]) -> list[str]:
    """The issue-6 targets: ratios are medians of the per-pair ratios, memory the median peak."""
    def med(tool: str, phase: str, key: str) -> float:
        return _med([getattr(s, key) for s in samples if s.tool == tool and s.phase == phase])

    out = []
    for tool in tools:
        if tool == "skopeo":
            continue
        checks = [
            ("full copy wall <= 0.5x skopeo", _med(_pair_ratios(samples, tool, "full", "wall")),
             TARGET_WALL_RATIO),
            ("resync wall <= 0.5x skopeo", _med(_pair_ratios(samples, tool, "resync", "wall")),
             TARGET_RESYNC_RATIO),
            ("target requests (full) <= 0.5x skopeo",
             _med(_pair_ratios(samples, tool, "full", "dst_requests")), TARGET_REQUEST_RATIO),
            ("peak RSS <= 250 MiB (largest process)", med(tool, "full", "rss_mib"), TARGET_RSS_MIB),
            ("peak RSS <= 250 MiB (whole tree)", med(tool, "full", "tree_rss_mib"), TARGET_RSS_MIB),
        ]
        for text, value, limit in checks:
            out.append(f"- {tool}: {text}: {value:.2f} -> {'met' if value <= limit else 'NOT met'}")
    return out


# --------------------------------------------------------------------------- modes
# A used target's storage is removed when the benchmark ends, not before the next run. On the
# reference VM's ext4 (no journal), creating a file skips inode numbers freed in the last 60 s
# or more (ialloc's recently_deleted, one inode-table read each): removing the last target's
# tree just before a run gave that run's target registry 3.1-8.5 s of system time for the same
# medium copy, 2.5-3.4 s with the trees kept (perf: recently_deleted and the block lookups under
# it were 12% of the target's samples). The removal timed the previous run, not the tool.
@contextlib.contextmanager
def fresh_target(bench: Bench) -> Iterator[RegistryProcess]:
    dst = bench.new_registry()
    try:
        dst.start()
        yield dst
    finally:
        bench.drop_relay(dst)
        dst.close(keep_dir=True)
        bench.spent.append(dst.dir)


def sync_mode(bench: Bench, shape: corpus.Shape, pairs: int, warmup: bool) -> int:
    src = bench.start_source()
    bench.start_server_async()
    print(f"seeding {shape.name} into {src.url} ...", flush=True)
    bench.seeded = corpus.seed(src.url, shape, verify=bench.trust(src), auth=bench.client_auth())
    problems = corpus.verify(src.url, bench.seeded, bench.trust(src), bench.client_auth())
    if problems:
        print("source verification failed:", *problems[:5], sep="\n  ")
        return 1
    print(f"  {bench.seeded.describe()}; pushed in {bench.seeded.seconds:.1f} s", flush=True)
    if bench.server is not None:
        print(f"  local Prefect server starting at {bench.server.url}", flush=True)
    skopeo_groups = len(bench.skopeo_commands(src)) if "skopeo" in bench.tools else 0
    if warmup:
        with fresh_target(bench) as dst:
            bench.apply(src, dst)
            for tool in bench.tools:
                if tool != "skopeo":
                    bench.run(tool, "warmup", 0, dst, policy=WARMUP_POLICY, verify=False)
    failed = 0
    for pair in range(1, pairs + 1):
        # Rotate the order so that drift in the machine's load hits every tool alike.
        order = bench.tools[(pair - 1) % len(bench.tools):] + bench.tools[:(pair - 1) % len(bench.tools)]
        for tool in order:
            with fresh_target(bench) as dst:
                if tool != "skopeo":
                    bench.apply(src, dst)
                for phase in ("full", "resync"):
                    s = bench.run(tool, phase, pair, dst)
                    failed += bool(s.rc or s.bad_tags)
    print_report(bench, shape, pairs, skopeo_groups)
    return 1 if failed else 0


def print_report(bench: Bench, shape: corpus.Shape, pairs: int, skopeo_groups: int) -> None:
    s = bench.seeded
    where = (f"behind relays: {bench.rtt_ms:g} ms round trip, {bench.mbit:g} Mbit/s per connection"
             if bench.remote else "loopback") + (", https" if bench.tls else ", http") + (
                 ", token auth" if bench.tokens is not None else "")
    print(f"\n### {shape.name}: {s.describe()}; {where}; pairs={pairs}; median [min-max]")
    print(f"skopeo: {skopeo_groups} sync invocations (one per parent namespace)\n")
    print("\n".join(table(bench.samples, bench.tools, ("warmup", "full", "resync"))))
    if "skopeo" in bench.tools and len(bench.tools) > 1:
        print("\nregflow / skopeo, median of the per-pair ratios [min-max]:\n")
        print("\n".join(ratios(bench.samples, bench.tools)))
        print("\nissue-6 targets (medians):")
        print("\n".join(verdicts(bench.samples, bench.tools)))
    if BASELINE in bench.tools and "regflow-server" in bench.tools:
        print(f"\nthis checkout / {bench.baseline} (both server mode), median of the per-pair ratios:\n")
        for phase in ("full", "resync"):
            def versus(key: str, phase: str = phase) -> str:
                return _cell(_pair_ratios(bench.samples, "regflow-server", phase, key, BASELINE))
            print(f"  {phase:7} wall {versus('wall')}  target requests {versus('dst_requests')}")
    print("\ntarget request mix, pair 1:")
    for sample in bench.samples:
        if sample.pair == 1:
            print(f"  {sample.tool:16} {sample.phase:7} {sample.dst_requests:5}: "
                  f"{_compact(Counter(sample.dst_mix))}")


def _seed_scale(bench: Bench, shape: corpus.Shape, cache: Path | None) -> RegistryProcess:
    """The source registry with the scale corpus: pushed, or its storage copied from ``cache``
    (pushing 10,000 repositories takes longer than the runs timed on them, and needs no quiet
    machine: seed once, time later)."""
    src = bench.src = bench.new_registry()
    kept = cache / shape.name if cache is not None else None
    if kept is not None and (kept / "seeded.json").is_file():
        # Hard links: the source is only read, so the kept files stay as they are, and 72,000
        # small files link in seconds where copying them takes minutes.
        subprocess.run(["cp", "-al", f"{kept}/storage/.", str(src.data_dir)], check=True)
        src.start()
        bench.seeded = corpus.Seeded(**json.loads((kept / "seeded.json").read_text()))
        print(f"  {bench.seeded.describe()}; storage hard-linked from {kept}", flush=True)
        return src
    src.start()
    print(f"seeding {shape.name} ({corpus.estimate(shape)}) ...", flush=True)
    bench.seeded = corpus.seed(src.url, shape, verify=bench.trust(src), auth=bench.client_auth())
    print(f"  {bench.seeded.describe()}; pushed in {bench.seeded.seconds:.1f} s", flush=True)
    if kept is not None:
        (kept / "storage").mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", f"{src.data_dir}/.", str(kept / "storage")], check=True)
        (kept / "seeded.json").write_text(json.dumps(bench.seeded.to_json()))
        print(f"  storage kept in {kept} for the next --seed-cache run", flush=True)
    return src


def scale_mode(bench: Bench, repos: int, pairs: int, cache: Path | None = None) -> int:
    shape = corpus.scale_shape(repos)
    src = _seed_scale(bench, shape, cache)
    dst = bench.new_registry()
    try:
        # An identical target without a second push: the filesystem storage copied as it is.
        started = time.monotonic()
        subprocess.run(["cp", "-a", f"{src.data_dir}/.", str(dst.data_dir)], check=True)
        dst.start()
        print(f"  target = copy of the source storage ({time.monotonic() - started:.1f} s)", flush=True)
        problems = corpus.verify(dst.url, bench.seeded, bench.trust(dst), bench.client_auth())
        if problems:
            print("target verification failed:", *problems[:5], sep="\n  ")
            return 1
        bench.apply(src, dst)
        failed = 0
        startup = run_measured([bench._regflow_argv("policy", "show", POLICY)],
                               bench.regflow_env("regflow-embedded"), bench.log)
        for pair in range(1, pairs + 1):
            s = bench.run("regflow-embedded", "dry-run", pair, dst, dry_run=True, verify=False)
            s.tool = "regflow"
            failed += bool(s.rc)
        if "regflow-embedded" in bench.tools:
            bench.run("regflow-embedded", "warmup", 0, dst, policy=WARMUP_POLICY, verify=False)
            s = bench.run("regflow-embedded", "resync", 1, dst, verify=False)
            failed += bool(s.rc)
        print(f"\n### {shape.name}: {bench.seeded.describe()}; no-change resync, target identical")
        print(f"CLI start-up alone (`regflow policy show`): {startup.wall:.2f} s, "
              f"{startup.rss_mib:.0f} MiB\n")
        print("\n".join(table(bench.samples, ["regflow", "regflow-embedded"],
                              ("dry-run", "warmup", "resync"))))
        dry = [s for s in bench.samples if s.phase == "dry-run"]
        wall, rss = _med([s.wall for s in dry]), _med([s.rss_mib for s in dry])
        tags = bench.seeded.tag_count
        print(f"\ndiscover+plan (dry-run): {wall:.2f} s for {repos} repositories / {tags} tags = "
              f"{1000 * wall / tags:.2f} ms per tag; peak RSS {rss:.0f} MiB")
        if repos >= 2000:
            print(f"- target 2000x5 discover+plan <= 60 s: {wall:.1f} s -> "
                  f"{'met' if wall <= TARGET_SCALE_SECONDS else 'NOT met'}; <= 400 MiB: {rss:.0f} MiB -> "
                  f"{'met' if rss <= TARGET_SCALE_RSS_MIB else 'NOT met'}")
        return 1 if failed else 0
    finally:
        dst.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="small", choices=sorted(corpus.SHAPES))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--tools", help=f"comma-separated subset of {ALL_TOOLS} (default: all; with --smoke: "
                    f"{','.join(SMOKE_TOOLS)})")
    ap.add_argument("--smoke", action="store_true",
                    help="1 pair on a 3-repository corpus, no warm-up: checks the harness, claims no timing")
    ap.add_argument("--scale", type=int, metavar="N", help="N repositories x 5 tags: discover + plan")
    ap.add_argument("--seed-cache", type=Path, metavar="DIR",
                    help="with --scale: keep the seeded source storage in DIR/scale-N and reuse it "
                         "(the storage is the same over https or with tokens)")
    ap.add_argument("--estimate", action="store_true", help="print the corpus sizes; push nothing")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run per regflow mode")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also run the regflow of this checkout (with its own .venv) as regflow-baseline")
    ap.add_argument("--rtt-ms", type=float, default=0.0,
                    help="put each registry behind a loopback relay adding this round trip "
                    "(benchmarks/latency.py)")
    ap.add_argument("--mbit", type=float, default=0.0,
                    help="with the relay: Mbit/s per connection (0: no cap)")
    ap.add_argument("--tls", action="store_true",
                    help="registries serve https (a CA each); regflow verifies, skopeo skips verification")
    ap.add_argument("--token", action="store_true",
                    help="registries want a bearer token from a token service (behind its own relay "
                         "when remote); every tool logs in")
    ap.add_argument("--trace", action="store_true",
                    help="record each regflow run's registry requests: requests per kind and the longest "
                         "chain of sequential round trips in the notes (benchmarks/critical_path.py)")
    ap.add_argument("--results", type=Path, default=Path("/tmp/regflow-bench-sync.jsonl"),
                    help="every sample is appended here as a JSON line")
    args = ap.parse_args()

    shape = corpus.scale_shape(args.scale) if args.scale else corpus.SHAPES[
        "smoke" if args.smoke else args.corpus]
    if args.estimate:
        print(f"{shape.name}: {corpus.estimate(shape)}")
        return 0
    tools = [t for t in (args.tools or ",".join(SMOKE_TOOLS if args.smoke else ALL_TOOLS)).split(",") if t]
    if args.baseline is not None:
        if not (args.baseline / ".venv/bin/regflow").exists():
            ap.error(f"{args.baseline}/.venv/bin/regflow is missing: run `uv sync` in that checkout")
        if BASELINE not in tools:
            tools.append(BASELINE)
    elif BASELINE in tools:
        ap.error(f"{BASELINE} needs --baseline DIR")
    unknown = set(tools) - set(ALL_TOOLS) - {BASELINE}
    if unknown:
        ap.error(f"unknown tools {sorted(unknown)}")
    if "skopeo" in tools and not shutil.which("skopeo"):
        print("skopeo is missing: apt-get install skopeo", file=sys.stderr)
        return 2
    pairs = 1 if args.smoke else args.pairs
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="regflow-sync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')} {platform.node()} "
          f"{os.cpu_count()} cpus, load {Path('/proc/loadavg').read_text().strip()}; workdir {workdir}",
          flush=True)
    bench = Bench(workdir, tools, args.baseline.resolve() if args.baseline else None,
                  rtt_ms=args.rtt_ms, mbit=args.mbit, tls=args.tls, token=args.token, trace=args.trace)
    started = time.monotonic()
    rc = 1
    try:
        if args.scale:
            rc = scale_mode(bench, args.scale, pairs, args.seed_cache)
        else:
            rc = sync_mode(bench, shape, pairs, warmup=not (args.smoke or args.no_warmup))
    finally:
        bench.close()
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        with args.results.open("a") as f:
            for s in bench.samples:
                f.write(json.dumps({"ts": stamp, **asdict(s)}) + "\n")
        print(f"samples appended to {args.results}; {time.monotonic() - started:.0f} s in all")
        if rc != 0 and (bench.log).exists():
            kept = Path(tempfile.gettempdir()) / f"regflow-bench-sync-{stamp.replace(':', '')}.log"
            shutil.copy(bench.log, kept)
            print(f"something failed: the tools' output is in {kept}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
