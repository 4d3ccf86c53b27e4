"""Issue 19 end to end: harborapi (Harbor's Python client from PyPI) drives `regflow serve` as it
would drive a Harbor: it creates two registries and a policy through Harbor's API, starts an
execution, waits for Succeeded and reads its tasks and a task's log, while serve's worker copies
between two real registries through the session's real Prefect server. skopeo witnesses that the
target holds the tags byte for byte. Every API call goes through harborapi: it has a method for
each, so the test makes no HTTP request of its own to the API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from harborapi import HarborAsyncClient
from harborapi.exceptions import BadRequest
from harborapi.models import Registry, ReplicationFilter, ReplicationPolicy, ReplicationTrigger

from adapters.distribution.client import DistributionClient
from tests.support.corpus import ImageKind, sha256_digest
from tests.support.endpoints import client_for
from tests.support.prefect_server import PrefectServer
from tests.support.registry import free_port
from tests.support.skopeo import inspect_raw

pytestmark = [
    pytest.mark.integration,
    # harborapi's own retry helper reads a deprecated pydantic attribute; nothing of regflow's.
    pytest.mark.filterwarnings("ignore:Accessing the 'model_fields' attribute:DeprecationWarning"),
]

T = TypeVar("T")

PASSWORD = "e2e-Pa55word-19"
# The Prefect server is the session's, and the API lists executions by policy name: other tests'
# policies (several named "all") must not show up in this one's history.
POLICY = "harbor-api-e2e-mirror"
# Prefect's worker asks for due runs every 10 s by default; an API-started run need not wait that long here.
WORKER_QUERY_SECONDS = "1"
# Bounds for failure only: serve usually answers within a few seconds and the run ends within ~15 s.
START_SECONDS = 60
RUN_SECONDS = 120
TAIL_CHARS = 4000


@dataclass
class Serve:
    api: str
    proc: subprocess.Popen[bytes]
    log: Path
    home: Path

    def tail(self) -> str:
        """serve's output and its worker's log, for a failure message."""
        worker = self.home / "logs" / "worker.log"
        parts = [f"--- {path.name} ---\n{path.read_text(errors='replace')[-TAIL_CHARS:]}"
                 for path in (self.log, worker) if path.exists()]
        return "\n".join(parts)

    async def wait(self, probe: Callable[[], Awaitable[T | None]], seconds: float, what: str) -> T:
        """``probe``'s first true answer; a clear failure with serve's log when it does not come."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited ({self.proc.returncode}) while waiting for {what}\n{self.tail()}")
            value = await probe()
            if value:
                return value
            await asyncio.sleep(0.5)
        pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}\n{self.tail()}")


@pytest.fixture
def serve(prefect_server: PrefectServer, tmp_path: Path) -> Iterator[Serve]:
    port = free_port()
    home = tmp_path / "home"
    env = prefect_server.env() | {"REGFLOW_HOME": str(home), "REGFLOW_ADMIN_PASSWORD": PASSWORD,
                                  "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "regflow_cli.main", "serve",
                                 "--http-host", "127.0.0.1", "--http-port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield Serve(f"http://127.0.0.1:{port}/api/v2.0", proc, log_path, home)
        finally:
            # serve's process group holds its worker and the flow runs under it; serve ends them
            # itself on SIGTERM. The group is gone already when serve failed at start-up.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _id(location: str) -> int:
    """The id at the end of a ``Location`` answer (``/api/v2.0/registries/3``)."""
    return int(location.rstrip("/").rsplit("/", 1)[1])


async def test_harborapi_replicates_through_serve(serve: Serve, make_registry: Any, make_corpus: Any) -> None:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    corpus = make_corpus(src)
    pushed = {("e2e/alpha", "1"): corpus.push("e2e/alpha", ["1"], ImageKind.OCI).digest,
              ("e2e/alpha", "2"): corpus.push("e2e/alpha", ["2"], ImageKind.DOCKER).digest,
              ("e2e/beta", "1"): corpus.push("e2e/beta", ["1"], ImageKind.OCI_INDEX).digest}
    corpus.push("other/gamma", ["1"], ImageKind.OCI)  # outside the policy's name filter

    # No retries of harborapi's own: serve's waits below are bounded and name what they wait for.
    client = HarborAsyncClient(url=serve.api, username="admin", secret=PASSWORD, retry=None)
    try:
        async def pong() -> bool:
            try:
                return await client.ping() == "Pong"
            except httpx.TransportError:
                return False

        await serve.wait(pong, START_SECONDS, "serve's Harbor API to answer /ping")

        # A plain-HTTP registry is "insecure" in Harbor's words (no certificate to verify).
        src_id = _id(await client.create_registry(Registry(
            name="e2e-src", type="docker-registry", url=src.url, insecure=True)))
        dst_id = _id(await client.create_registry(Registry(
            name="e2e-dst", type="docker-registry", url=dst.url, insecure=True)))
        policy_id = _id(await client.create_replication_policy(ReplicationPolicy(
            name=POLICY, src_registry=Registry(id=src_id), dest_registry=Registry(id=dst_id),
            filters=[ReplicationFilter(type="name", value="e2e/**")],
            trigger=ReplicationTrigger(type="manual"), override=True, enabled=True)))
        assert (await client.get_replication_policy(policy_id)).name == POLICY

        async def started() -> int | None:
            # serve creates the policy's deployment right after the API changed the store; until
            # then the API answers 400 and says so.
            try:
                return _id(await client.start_replication(policy_id))
            except BadRequest as error:
                if "no deployment yet" not in str(error):
                    raise
                return None

        execution_id = await serve.wait(started, START_SECONDS, f"{POLICY}'s deployment to start a run")

        async def ended() -> bool:
            # What Harbor's own automation waits for: any status but InProgress is the outcome
            # (a run its worker was still submitting once read as Failed here).
            execution = await client.get_replication(execution_id)
            return execution.status != "InProgress"

        await serve.wait(ended, RUN_SECONDS, f"execution {execution_id} to end")
        execution = await client.get_replication(execution_id)
        assert (execution.status, execution.policy_id, execution.trigger, execution.total, execution.succeed,
                execution.failed) == ("Succeeded", policy_id, "manual", 2, 2, 0), \
            f"{execution!r}\n{serve.tail()}"
        assert [e.id for e in await client.get_replications(policy_id=policy_id)] == [execution_id]

        # One task per source repository the filter selected, in Harbor's job words.
        tasks = sorted(await client.get_replication_tasks(execution_id), key=lambda t: str(t.src_resource))
        assert [(t.src_resource, t.dst_resource, t.status, t.operation, t.execution_id) for t in tasks] == [
            ("e2e/alpha", "e2e/alpha", "Success", "copy", execution_id),
            ("e2e/beta", "e2e/beta", "Success", "copy", execution_id)]
        assert tasks[0].id is not None
        log = await client.get_replication_task_log(execution_id, tasks[0].id)
        assert log.strip() and "e2e/alpha" in log, log
    finally:
        await client.client.aclose()

    # The target holds every selected tag byte for byte, and nothing the filter left out.
    for (repository, tag), digest in pushed.items():
        source = inspect_raw(f"{src.url}/{repository}:{tag}")
        target = inspect_raw(f"{dst.url}/{repository}:{tag}")
        assert target == source, f"{repository}:{tag} differs on the target"
        assert sha256_digest(target) == digest, f"{repository}:{tag} is not the pushed manifest"
    async with client_for(dst) as target_client:
        assert await _absent(target_client, "other/gamma", "1")


async def _absent(client: DistributionClient, repository: str, tag: str) -> bool:
    return await client.head_manifest(repository, tag) is None
