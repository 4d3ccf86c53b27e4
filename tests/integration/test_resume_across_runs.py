"""A run killed mid-upload leaves its chunked session (a row of the store); the next run
continues it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from benchmarks.large_layer import REPOSITORY, TAG, seed_image
from tests.support.faultproxy import FaultProxy, delay
from tests.support.skopeo import inspect_raw_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAYER_MIB = 150  # over the chunked threshold: PATCHes of 64 MiB, 64 + 64 + 22
CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: big
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "{repo}"}}]
"""
MiB = 1024 * 1024


def saved_sessions(db: Path) -> list[tuple[str, str, int]]:
    """(target, repository, offset) of every upload session row in the store."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT target, repository, \"offset\" FROM upload_sessions").fetchall()


def test_the_next_run_continues_an_upload_the_killed_one_left(make_registry, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    digest = asyncio.run(seed_image(src.url, LAYER_MIB))
    # The run is killed while its second PATCH is held at the proxy: between PATCHes, the one
    # moment distribution 2.8 can resume from (a PATCH cut mid-body voids its session).
    proxy = FaultProxy(dst).start()
    proxy.rule("PATCH", r"/v2/bench/large/blobs/uploads/.+", delay(60), nth=2)
    (tmp_path / "c.yaml").write_text(CONFIG.format(src=src.url, dst=proxy.url, repo=REPOSITORY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    env["REGFLOW_HOME"] = str(tmp_path / "home")
    cli = [sys.executable, "-m", "regflow_cli.main"]
    subprocess.run([*cli, "apply", "-f", str(tmp_path / "c.yaml")], env=env, check=True, capture_output=True)

    first = subprocess.Popen([*cli, "replicate", "big"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(proxy.requests("PATCH", r"/v2/bench/large/blobs/uploads/.+")) < 2:
            assert time.monotonic() < deadline, "the upload never reached its second PATCH"
            assert first.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the CLI and the Prefect server it started
        first.wait()
        proxy.close()
    patched_before = dst.count_requests("PATCH")
    assert patched_before == 1
    db = tmp_path / "home" / "regflow.db"
    assert saved_sessions(db) == [(proxy.url, REPOSITORY, 64 * MiB)]  # after the first PATCH
    assert not (tmp_path / "home" / "uploads.json").exists()

    # The same target address (sessions are kept per registry URL), now without faults.
    mark = dst.log_mark()
    with FaultProxy(dst, port=proxy.port).start() as again:
        second = subprocess.run([*cli, "replicate", "big", "--json"], env=env, capture_output=True,
                                text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["status"] == "Succeeded"
    # Starting over would take 3 PATCHes; continuing takes the ones the first run did not do.
    assert dst.count_requests("PATCH", since=mark) == 3 - patched_before
    assert dst.count_requests("POST", r"/v2/bench/large/blobs/uploads/", since=mark) <= 1  # config only
    resumed = again.requests("PATCH", r"/v2/bench/large/blobs/uploads/.+")
    assert (resumed[0].request_header("Content-Range") or "").startswith(f"{64 * MiB}-")  # not 0-
    assert inspect_raw_digest(dst.ref(REPOSITORY, TAG)) == digest
    assert saved_sessions(db) == []  # finished sessions are forgotten
