"""The embedded default's resident Prefect server (flows/prefect_server.py): started by the first
CLI call, reused by the next, kept while any regflow process uses it, gone after its idle time;
closed to anyone without its auth string; no call is ever handed a server that is stopping."""

from __future__ import annotations

import base64
import concurrent.futures
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from flows.prefect_server import AUTH_FILE, CHECK_SECONDS, IDLE_ENV, read_info
from tests.support.residents import alive

pytestmark = pytest.mark.integration

IDLE = 4.0
REPO = Path(__file__).resolve().parents[2]


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prefect database with its schema already made, copied into the homes of the tests that
    are not about a new database: migrating one is most of a first server start."""
    home = tmp_path_factory.mktemp("migrated-prefect")
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                   env=clean_environment() | {"PREFECT_HOME": str(home)}, check=True, capture_output=True,
                   timeout=300)
    return home / "prefect.db"


def seeded(prefect_home: Path, database: Path) -> Path:
    """``prefect_home`` holding a copy of ``database``, as a home that has been used before."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(database, prefect_home / "prefect.db")
    return prefect_home


def regflow(home: Path, *args: str, idle: str) -> subprocess.CompletedProcess[str]:
    env = clean_environment() | {"REGFLOW_HOME": str(home), IDLE_ENV: idle}
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_one_server_serves_consecutive_calls_while_used_then_leaves(tmp_path: Path,
                                                                    migrated_db: Path) -> None:
    home = tmp_path / "home"
    prefect_home = seeded(home / "prefect", migrated_db)

    first = regflow(home, "executions", "--json", idle=str(IDLE))
    assert first.returncode == 0, first.stderr
    info = read_info(prefect_home)
    assert info is not None and alive(info.pid)
    assert httpx.get(f"{info.api_url}/health", timeout=5).status_code == 200

    second = regflow(home, "executions", "--json", idle=str(IDLE))
    assert second.returncode == 0, second.stderr
    assert read_info(prefect_home) == info  # the same server, not a second one

    # A regflow process that is still running (a long replication) holds the users lock:
    # the server stays however long that takes.
    with (prefect_home / "resident.users").open("ab") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        # As long as a watcher deaf to the lock would take to begin its stop (the idle time
        # since the last use, then its next check), and one check more; its first step is
        # removing resident.json.
        last_use = (prefect_home / "resident.users").stat().st_mtime
        time.sleep(max(0.0, last_use + IDLE + 2 * CHECK_SECONDS - time.time()))
        assert read_info(prefect_home) == info
        assert alive(info.pid)
        assert httpx.get(f"{info.api_url}/health", timeout=5).status_code == 200
    os.utime(prefect_home / "resident.users")  # the idle clock starts when the last user leaves

    assert wait_until(lambda: not alive(info.pid), IDLE + 30), "resident did not leave when idle"
    assert read_info(prefect_home) is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{info.api_url}/health", timeout=2)


def test_the_resident_needs_its_auth_string_and_its_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"  # not seeded: the database checked below is the one the server makes
    prefect_home = home / "prefect"
    done = regflow(home, "executions", "--json", idle="60")
    assert done.returncode == 0, done.stderr
    info = read_info(prefect_home)
    assert info is not None
    auth_file = prefect_home / AUTH_FILE
    auth = auth_file.read_text().strip()
    assert len(auth) > 40 and auth.startswith("regflow:")
    assert mode(auth_file) == 0o600
    assert mode(prefect_home) == 0o700
    assert mode(prefect_home / "prefect.db") == 0o600

    secrets_query = f"{info.api_url}/block_documents/filter"
    body = {"include_secrets": True}
    assert httpx.post(secrets_query, json=body, timeout=10).status_code == 401
    assert httpx.post(secrets_query, json=body, headers=basic("regflow:wrong"), timeout=10).status_code == 401
    assert httpx.post(f"{info.api_url}/flow_runs/filter", json={}, timeout=10).status_code == 401
    assert httpx.post(secrets_query, json=body, headers=basic(auth), timeout=10).status_code == 200
    # The UI is served and told to ask for the auth string.
    ui = httpx.get(f"{info.api_url.removesuffix('/api')}/ui-settings", timeout=10).json()
    assert ui["auth"] == "BASIC" and ui["api_url"] == info.api_url

    # The same string next time: generated once.
    again = regflow(home, "executions", "--json", idle="60")
    assert again.returncode == 0, again.stderr
    assert auth_file.read_text().strip() == auth


def test_zero_idle_means_no_resident_and_bad_values_are_refused(tmp_path: Path, migrated_db: Path) -> None:
    home = tmp_path / "home"
    seeded(home / "prefect", migrated_db)
    off = regflow(home, "executions", "--json", idle="0")
    assert off.returncode == 0, off.stderr
    assert read_info(home / "prefect") is None
    assert not (home / "prefect" / "resident.log").exists()

    bad = regflow(home, "executions", "--json", idle="ten minutes")
    assert bad.returncode == 2
    assert f"{IDLE_ENV}='ten minutes' is not a number of seconds" in bad.stderr


# One user process of the race test: it takes the resident (starting one if needed), and the
# server must answer for as long as the process lives, however the watcher's stop falls.
USER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from flows.prefect_server import auth_string, healthy, read_info, resident_url
    home = Path(sys.argv[1])
    url = resident_url(home, dict(os.environ), idle=float(sys.argv[2]))
    auth = auth_string(home)
    checks = [healthy(url, auth)]
    time.sleep(0.3)
    checks.append(healthy(url, auth))
    info = read_info(home)
    print(json.dumps({"url": url, "checks": checks, "watcher": info.pid if info else None}))
""")
RACE_IDLE = 1.0
RACE_SECONDS = 240.0
RACE_STOPS = 3  # watchers seen: the calls spanned at least this many starts and stops


def test_calls_arriving_while_the_resident_stops_get_a_live_server(tmp_path: Path, migrated_db: Path) -> None:
    prefect_home = seeded(tmp_path / "prefect", migrated_db)
    env = clean_environment()

    def user() -> dict:
        done = subprocess.run([sys.executable, "-c", USER, str(prefect_home), str(RACE_IDLE)], env=env,
                              cwd=REPO, text=True, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    results: list[dict] = []
    watchers: set[int] = set()
    deadline = time.monotonic() + RACE_SECONDS
    gap = 0.0
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        while len(watchers) < RACE_STOPS and time.monotonic() < deadline:
            # Bursts of three, with pauses that step across the idle time: some arrive while
            # the server is idle but up, some while its watcher is stopping it, some after.
            burst = [pool.submit(user) for _ in range(3)]
            for future in burst:
                results.append(future.result())
                watchers.update(r["watcher"] for r in results[-1:] if r["watcher"])
            time.sleep(gap)
            gap = (gap + 0.45) % 2.5
            info = read_info(prefect_home)
            if info is not None and gap < 0.5:
                # Wait for the stop to begin (resident.json removed), then arrive at once.
                wait_until(lambda: read_info(prefect_home) is None, 10)
    bad = [r for r in results if not all(r["checks"])]
    assert not bad, f"calls given a server that was going away: {bad}"
    assert len(watchers) >= RACE_STOPS, f"only {len(watchers)} residents in {len(results)} calls"
    # The last one leaves on its own.
    assert wait_until(lambda: read_info(prefect_home) is None, RACE_IDLE + 30)
    assert all(wait_until(lambda pid=pid: not alive(pid), 30) for pid in watchers)


def test_serve_and_the_cli_share_one_server_that_leaves_with_serve(tmp_path: Path, migrated_db: Path) -> None:
    from tests.support.registry import free_port

    home = tmp_path / "home"
    prefect_home = seeded(home / "prefect", migrated_db)
    prefect_port, webhook_port = free_port(), free_port()
    env = clean_environment() | {"REGFLOW_HOME": str(home), IDLE_ENV: "600"}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "regflow_cli.main", "serve", "--prefect-port",
                                  str(prefect_port), "--webhook-port", str(webhook_port)],
                                 env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        assert wait_until(lambda: "webhooks on" in log_path.read_text() or serve.poll() is not None, 180), \
            log_path.read_text()
        assert serve.poll() is None, log_path.read_text()
        info = read_info(prefect_home)
        assert info is not None and info.api_url == f"http://127.0.0.1:{prefect_port}/api"
        assert f"Prefect UI: http://127.0.0.1:{prefect_port}" in log_path.read_text()

        # A CLI call uses serve's server: the same database, no second server.
        call = regflow(home, "executions", "--json", idle="600")
        assert call.returncode == 0, call.stderr
        assert read_info(prefect_home) == info
        watchers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_watcher(p, prefect_home)]
        assert len(watchers) == 1
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    # serve started it: it leaves with serve (and the calls using it), not after ten idle minutes.
    assert wait_until(lambda: not alive(info.pid), 45), "serve's server outlived serve"
    assert read_info(prefect_home) is None


def _is_watcher(proc: Path, prefect_home: Path) -> bool:
    try:
        args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "flows.prefect_server" in args and str(prefect_home) in args
