"""``regflow replicate`` through a warm process (regflow_cli/warm.py): the second call of the
same environment runs in a fork of it, with the caller's output, exit code, environment and
Ctrl-C; another environment gets another warm process; 0 turns it off; idle ones leave."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from regflow_cli import warm
from tests.support.corpus import ImageKind
from tests.support.prefect_server import PrefectServer
from tests.support.registry import RegistryProcess
from tests.support.residents import alive
from tests.support.skopeo import inspect_raw_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: mirror
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "team/**"}}]
    trigger: {{type: manual}}
"""


def env_for(home: Path, server: PrefectServer | None = None, **extra: str) -> dict[str, str]:
    """The embedded default, or (quicker: no resident server to start) the session's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    if server is not None:
        env |= {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(home / "prefect-client")}
    return env | {"REGFLOW_HOME": str(home), warm.IDLE_ENV: "60"} | extra


def launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The ``regflow`` command as installed (regflow_cli.launch), not the in-process module."""
    return subprocess.run([sys.executable, "-m", "regflow_cli.launch", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def in_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def warm_pids(home: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in sorted((home / "warm").glob("*.json"))]


def runs(home: Path) -> list[dict[str, float]]:
    return [json.loads(line) for p in sorted((home / "warm").glob("*.runs"))
            for line in p.read_text().splitlines()]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    warm.stop(home)


@pytest.fixture
def applied(home: Path, tmp_path: Path, make_corpus,
            testbed_binaries) -> Iterator[tuple[RegistryProcess, RegistryProcess, str]]:
    with RegistryProcess("anonymous") as src, RegistryProcess("anonymous") as dst:
        pushed = make_corpus(src).push("team/app", ["1.0"], ImageKind.OCI)
        config = tmp_path / "regflow.yaml"
        config.write_text(CONFIG.format(src=src.url, dst=dst.url))
        done = in_process(env_for(home), "apply", "-f", str(config))
        assert done.returncode == 0, done.stderr
        yield src, dst, pushed.digest


def test_repeated_calls_share_one_warm_process_and_behave_as_in_process(home: Path, applied) -> None:
    _src, dst, digest = applied
    env = env_for(home)

    first = launch(env, "replicate", "mirror", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "Succeeded"
    assert inspect_raw_digest(f"docker://{dst.host}/team/app:1.0") == digest
    [server] = warm_pids(home)
    assert alive(server)

    second = launch(env, "replicate", "mirror", "--json")
    assert second.returncode == 0, second.stderr
    resync = json.loads(second.stdout)
    assert resync["status"] == "Succeeded" and resync["tasks"][0]["skipped"] == 1
    assert warm_pids(home) == [server]  # the same warm process took the second call
    calls = runs(home)
    assert [c["exit"] for c in calls] == [0, 0] and calls[0]["pid"] != calls[1]["pid"]
    assert all(c["pid"] != server for c in calls)  # each call ran in a fork of its own

    here = in_process(env, "replicate", "mirror", "--json")
    assert here.returncode == 0, here.stderr
    assert json.loads(here.stdout)["message"] == resync["message"]

    # Bad input: the same exit code and message as in-process, and the warm process stays.
    refused, refused_here = launch(env, "replicate", "no-such"), in_process(env, "replicate", "no-such")
    assert refused.returncode == refused_here.returncode == 2
    assert refused.stderr == refused_here.stderr and "no-such" in refused.stderr
    assert warm_pids(home) == [server] and alive(server)
    assert runs(home)[-1]["exit"] == 2


def test_another_environment_gets_another_warm_process(home: Path, applied, prefect_server) -> None:
    assert launch(env_for(home, prefect_server), "replicate", "mirror", "--json").returncode == 0
    # PWD and terminal size do not change what regflow does; any other variable may.
    moved = env_for(home, prefect_server, PWD="/elsewhere", COLUMNS="99")
    same = launch(moved, "replicate", "mirror", "--json")
    assert same.returncode == 0 and len(warm_pids(home)) == 1
    other = launch(env_for(home, prefect_server, TZ="UTC"), "replicate", "mirror", "--json")
    assert other.returncode == 0, other.stderr
    pids = warm_pids(home)
    assert len(set(pids)) == 2
    assert sorted(warm.stop(home)) == sorted(pids)
    assert not any(warm.running(p) for p in pids)


def test_ctrl_c_reaches_the_run_and_the_caller_gets_its_exit_code(home: Path, tmp_path: Path, prefect_server,
                                                                 testbed_binaries) -> None:
    # A source that accepts connections and never answers: the run waits until interrupted.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    with RegistryProcess("anonymous") as dst:
        config = tmp_path / "regflow.yaml"
        config.write_text(CONFIG.format(src=f"http://127.0.0.1:{silent.getsockname()[1]}", dst=dst.url)
                          .replace('name: "team/**"', 'name: "team/app"'))
        env = env_for(home, prefect_server)
        assert in_process(env, "apply", "-f", str(config)).returncode == 0
        assert launch(env, "replicate", "no-such").returncode == 2  # starts the warm process
        caller = subprocess.Popen([sys.executable, "-m", "regflow_cli.launch", "replicate", "mirror"],
                                  env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not held and time.monotonic() < deadline:  # the run reached the source
                time.sleep(0.1)
            assert held, "the run never contacted the source"
            caller.send_signal(signal.SIGINT)
            _, err = caller.communicate(timeout=60)
        finally:
            if caller.poll() is None:
                caller.kill()
            stop.set()
            acceptor.join()
            for conn in held:
                conn.close()
            silent.close()
    assert caller.returncode not in (0, None), err
    interrupted = runs(home)[-1]
    assert interrupted["exit"] == caller.returncode
    assert not warm.running(int(interrupted["pid"]))


def test_zero_idle_runs_every_call_in_its_own_process(home: Path, applied, prefect_server) -> None:
    done = launch(env_for(home, prefect_server, **{warm.IDLE_ENV: "0"}), "replicate", "mirror", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "Succeeded"
    assert not (home / "warm").exists()


def test_a_warm_process_leaves_after_its_idle_time(home: Path, applied, prefect_server) -> None:
    idle = {warm.IDLE_ENV: "2"}
    assert launch(env_for(home, prefect_server, **idle), "replicate", "mirror", "--json").returncode == 0
    [server] = warm_pids(home)
    deadline = time.monotonic() + 30
    while warm.running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not warm.running(server)
    assert not list((home / "warm").glob("*.json"))
