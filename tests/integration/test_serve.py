"""Issue 4 end to end: `regflow serve` against a real Prefect server, with real registries that
post their notifications to regflow's webhook receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun

from tests.support.corpus import ImageKind
from tests.support.endpoints import client_for
from tests.support.prefect_server import PrefectServer
from tests.support.registry import free_port
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOOK_SECRET = "hook-secret-7b3c1d9e5f"
# In envelopes sent without the secret: no run may ever name it.
FORGED_DIGEST = "sha256:" + "0" * 64
# Prefect's worker asks for due runs every 10 s by default; each event run here need not wait
# that long.
WORKER_QUERY_SECONDS = "1"
CONFIG = """\
version: 1
registries:
  - name: src
    type: docker-registry
    url: "{src}"
    webhook: {{kind: distribution, auth: bearer, secret: "${{HOOK_SECRET}}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: every15
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "sched/**"}}]
    # Long enough that few runs start before the policy is disabled below: each is a process of
    # its own, and those a shorter interval piles up on two cores delay every other run.
    trigger: {{type: scheduled, trigger_settings: {{interval_seconds: 15}}}}
  - name: by-api
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "api/**"}}]
  - name: on-push
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "ev/**"}}]
    trigger: {{type: event_based}}
    replicate_deletion: true
  - name: on-push-keep
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "keep/**"}}]
    trigger: {{type: event_based}}
    replicate_deletion: false
"""




@pytest.fixture
def serve(prefect_server: PrefectServer, make_registry, tmp_path: Path) -> Iterator[tuple]:
    port = free_port()
    src = make_registry("anonymous", notifications=f"http://127.0.0.1:{port}/webhooks/src",
                        notification_headers={"Authorization": f"Bearer {HOOK_SECRET}"})
    dst = make_registry("anonymous")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(src=src.url, dst=dst.url))
    env = prefect_server.env() | {"REGFLOW_HOME": str(tmp_path / "home"), "HOOK_SECRET": HOOK_SECRET}
    cli = [sys.executable, "-m", "regflow_cli.main"]
    subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*cli, "serve", "--http-port", str(port)],
                            env=env | {"PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield src, dst, port, prefect_server, (config, env)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        print((tmp_path / "serve.log").read_text()[-4000:])


async def runs_of(server: PrefectServer, policy: str) -> list[FlowRun]:
    async with server.client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"policy:{policy}"])))


async def test_schedules_api_runs_events_deletions_auth_and_bursts(serve, make_corpus):
    src, dst, port, server, serve_apply = serve
    corpus = make_corpus(src)
    sched = corpus.push("sched/app", ["1"], ImageKind.OCI)
    api = corpus.push("api/app", ["1"], ImageKind.DOCKER)

    async with server.client() as client:
        deployment = await until(lambda: _deployment(client, "replicate/by-api"), 90, "deployments")
        assert deployment.work_pool_name == "regflow"
        assert "policy:by-api" in deployment.tags
        flow_run = await client.create_flow_run_from_deployment(deployment.id)

    async with client_for(dst) as target:
        async def has(repo: str, tag: str, digest: str | None = None) -> bool:
            head = await target.head_manifest(repo, tag)
            return head is not None and (digest is None or head.digest == digest)

        # An interval policy fires on its own.
        await until(lambda: has("sched/app", "1", sched.digest), 120, "the scheduled copy")
        scheduled = [r for r in await runs_of(server, "every15") if "trigger:schedule" in r.tags]
        assert scheduled, "no run labelled as started by its schedule"

        # A policy disabled with `regflow apply` keeps its deployment, paused with its schedule
        # off (its history stays attached); serve keeps going: the runs below complete. (At once,
        # so that its runs load the machine no longer than needed.)
        config, env = serve_apply
        disabled = config.read_text().replace("  - name: every15", "  - name: every15\n    enabled: false")
        config.write_text(disabled)
        subprocess.run([sys.executable, "-m", "regflow_cli.main", "apply", "-f", str(config)], env=env,
                       check=True, capture_output=True)
        async with server.client() as client:
            await until(lambda: _paused(client, "replicate/every15"), 30, "every15's deployment paused")

        # The API-created run completes.
        await until(lambda: has("api/app", "1", api.digest), 120, "the API-triggered copy")
        async with server.client() as client:
            assert await until(lambda: _completed(client, flow_run.id), 60, "API run completed")

        # A push reaches the target through the webhook, as an event-triggered run.
        pushed_at = time.monotonic()
        ev = corpus.push("ev/app", ["1"], ImageKind.OCI_INDEX)

        # Callers without the secret start nothing (checked at the end, once any run they had
        # started would long exist).
        envelope = b'{"events": [{"id": "x", "action": "push", "target": {"mediaType": ' \
                   b'"application/vnd.oci.image.manifest.v1+json", "repository": "ev/app", "tag": "9", ' \
                   b'"digest": "' + FORGED_DIGEST.encode() + b'"}}]}'
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/webhooks/src"
            assert (await http.post(url, content=envelope)).status_code == 401
            wrong = {"Authorization": "Bearer wrong-secret-000000"}
            assert (await http.post(url, content=envelope, headers=wrong)).status_code == 401
            signed = {"X-Regflow-Signature": "sha256=" + "0" * 64}
            assert (await http.post(url, content=envelope, headers=signed)).status_code == 401

        await until(lambda: has("ev/app", "1", ev.digest), 30, "the event-driven copy")
        assert time.monotonic() - pushed_at < 30
        event_runs = [r for r in await runs_of(server, "on-push") if "trigger:event" in r.tags]
        assert event_runs and any(t.startswith("event:") for t in event_runs[0].tags)

        # A burst of 20 pushes to one repository: at most 2 runs (counted at the end), every tag
        # arrives. First, so that no run started by the other push slows it beyond two
        # coalescing windows.
        for i in range(20):
            corpus.push("ev/burst", [f"t{i}"], ImageKind.OCI, created=i)
        keep = corpus.push("keep/app", ["1"], ImageKind.OCI)
        await until(lambda: has("keep/app", "1", keep.digest), 30, "keep/app copied")
        await until(lambda: _all_tags(target, "ev/burst", 20), 60, "all 20 burst tags")

        # Deletion replicates only where the policy says so. The registry notifies in order, so
        # keep/app's deletion reaches serve right after ev/app's; ev/app's only leaves the target
        # after its coalescing window, the worker's pick-up and a run's start. A deletion run for
        # keep/app, had serve started one, would have existed for seconds by then.
        corpus.client.delete_manifest("ev/app", ev.digest)
        corpus.client.delete_manifest("keep/app", keep.digest)
        await until(lambda: _gone(target, "ev/app", "1"), 30, "ev/app deleted on the target")
        keep_runs = await runs_of(server, "on-push-keep")
        assert keep_runs and not [r for r in keep_runs if r.parameters.get("operation") == "delete"]
        assert await has("keep/app", "1", keep.digest)

        # Everything the burst and the forged calls could have started has started by now: the
        # deletion above took longer than a coalescing window after the last burst tag arrived.
        on_push = await runs_of(server, "on-push")
        assert not [r for r in on_push if FORGED_DIGEST in str(r.parameters.get("resources"))]
        burst_runs = [r for r in on_push if _repositories(r) == {"ev/burst"}]
        assert 1 <= len(burst_runs) <= 2, [r.parameters for r in burst_runs]


async def _deployment(client, name: str):  # type: ignore[no-untyped-def]
    try:
        return await client.read_deployment_by_name(name)
    except Exception:
        return None


async def _paused(client, name: str) -> bool:  # type: ignore[no-untyped-def]
    d = await _deployment(client, name)
    return d is not None and d.paused and not any(s.active for s in d.schedules)


async def _completed(client, run_id) -> bool:  # type: ignore[no-untyped-def]
    run = await client.read_flow_run(run_id)
    return run.state is not None and run.state.is_completed()


def _repositories(run: FlowRun) -> set[str]:
    return {r["repository"] for r in run.parameters.get("resources") or []}


async def _gone(target, repo: str, tag: str) -> bool:  # type: ignore[no-untyped-def]
    return await target.head_manifest(repo, tag) is None


async def _all_tags(target, repo: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        return len(await target.list_tags(repo)) >= n
    except Exception:
        return False


