"""The embedded default's resident Prefect server: started by the first CLI call, reused by the
next, kept while any regflow process uses it, gone after its idle time; 0 turns it off."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployments.resident import IDLE_ENV, read_info
from tests.support.residents import alive

pytestmark = pytest.mark.integration

IDLE = 4.0


def regflow(home: Path, *args: str, idle: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env |= {"REGFLOW_HOME": str(home), IDLE_ENV: idle}
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_one_server_serves_consecutive_calls_while_used_then_leaves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    prefect_home = home / "prefect"

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
        time.sleep(IDLE * 2.5)
        assert alive(info.pid)
        assert httpx.get(f"{info.api_url}/health", timeout=5).status_code == 200
    os.utime(prefect_home / "resident.users")  # the idle clock starts when the last user leaves

    assert wait_until(lambda: not alive(info.pid), IDLE + 30), "resident did not leave when idle"
    assert read_info(prefect_home) is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{info.api_url}/health", timeout=2)


def test_zero_idle_means_no_resident_and_bad_values_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    off = regflow(home, "executions", "--json", idle="0")
    assert off.returncode == 0, off.stderr
    assert read_info(home / "prefect") is None
    assert not (home / "prefect" / "resident.log").exists()

    bad = regflow(home, "executions", "--json", idle="ten minutes")
    assert bad.returncode == 2
    assert f"{IDLE_ENV}='ten minutes' is not a number of seconds" in bad.stderr
