"""Two runs to one target registry at once, both killed mid-upload: each run's session is its
own row of the shared store, so the next runs continue both, from the saved offsets.

The two runs are two workers: each has its own REGFLOW_HOME (its own Prefect server), and they
share only the store (REGFLOW_DATABASE_URL). The second round swaps them, so each upload is
continued by the worker that did not start it.
"""

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

MiB = 1024 * 1024
LAYER_MIB = 150  # over the chunked threshold: PATCHes of 64 MiB, 64 + 64 + 22
NAMESPACES = ("team-a", "team-b")  # one policy each, both onto the one target
CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - {{name: team-a, src_registry: src, dest_registry: dst, dest_namespace: team-a,
     filters: [{{type: name, value: "{repo}"}}]}}
  - {{name: team-b, src_registry: src, dest_registry: dst, dest_namespace: team-b,
     filters: [{{type: name, value: "{repo}"}}]}}
"""
CLI = [sys.executable, "-m", "regflow_cli.main"]


def uploads(namespace: str) -> str:
    return rf"/v2/{namespace}/large/blobs/uploads/.+"


def saved_sessions(db: Path) -> dict[str, tuple[str, int]]:
    """repository -> (target, offset) of every upload session row in the shared store."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute('SELECT repository, target, "offset" FROM upload_sessions').fetchall()
    return {repository: (target, offset) for repository, target, offset in rows}


def test_two_runs_to_one_target_both_continue_their_own_sessions(make_registry, tmp_path):
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    digest = asyncio.run(seed_image(src.url, LAYER_MIB))
    db = tmp_path / "store.db"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    workers = [{**base, "REGFLOW_HOME": str(tmp_path / f"worker-{i}"),
                "REGFLOW_DATABASE_URL": f"sqlite:///{db}"} for i in (1, 2)]

    # Each run is killed while its second PATCH is held at the proxy: its first 64 MiB are
    # acknowledged and saved, the rest never arrives.
    proxy = FaultProxy(dst).start()
    for namespace in NAMESPACES:
        proxy.rule("PATCH", uploads(namespace), delay(120), nth=2)
    (tmp_path / "c.yaml").write_text(CONFIG.format(src=src.url, dst=proxy.url, repo=REPOSITORY))
    subprocess.run([*CLI, "apply", "-f", str(tmp_path / "c.yaml")], env=workers[0], check=True,
                   capture_output=True)

    runs = [subprocess.Popen([*CLI, "replicate", namespace], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            for namespace, env in zip(NAMESPACES, workers, strict=True)]
    try:
        deadline = time.monotonic() + 180
        while not all(len(proxy.requests("PATCH", uploads(n))) >= 2 for n in NAMESPACES):
            assert time.monotonic() < deadline, "the uploads never reached their second PATCH"
            assert all(r.poll() is None for r in runs), "a run ended before it could be killed"
            time.sleep(0.1)
    finally:
        for run in runs:
            os.killpg(run.pid, signal.SIGKILL)  # the CLI and the Prefect server it started
            run.wait()
        proxy.close()
    assert [len(proxy.requests("PATCH", uploads(n))) for n in NAMESPACES] == [2, 2]
    saved = saved_sessions(db)
    assert saved == {f"{n}/large": (proxy.url, 64 * MiB) for n in NAMESPACES}, saved

    # The next runs, at the same target address and without faults, each on the other worker.
    with FaultProxy(dst, port=proxy.port).start() as again:
        runs = [subprocess.Popen([*CLI, "replicate", namespace, "--json"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for namespace, env in zip(NAMESPACES, reversed(workers), strict=True)]
        for run in runs:
            out, err = run.communicate(timeout=300)
            assert run.returncode == 0, err[-2000:]
            assert json.loads(out)["status"] == "Succeeded"

    for namespace in NAMESPACES:
        status = again.requests("GET", uploads(namespace))
        assert [s.status for s in status] == [204]  # where the saved session stands
        patches = again.requests("PATCH", uploads(namespace))
        # The resumed upload starts at the saved offset, not at 0, and sends only the rest.
        assert [p.request_header("Content-Range") for p in patches] == [
            f"{64 * MiB}-{128 * MiB - 1}", f"{128 * MiB}-{LAYER_MIB * MiB - 1}"]
        # No new session: at most the config's mount probe, answered "already there".
        posts = again.requests("POST", rf"/v2/{namespace}/large/blobs/uploads/")
        assert [p.status for p in posts] in ([], [201])
        assert inspect_raw_digest(dst.ref(f"{namespace}/large", TAG)) == digest
    assert saved_sessions(db) == {}  # finished sessions are forgotten
