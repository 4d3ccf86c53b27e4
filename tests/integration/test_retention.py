"""Retention against a real Prefect server: exactly the executions a policy's retention no longer
keeps are deleted, with their task runs, logs and artifacts; other policies' runs, other flows'
runs, runs of policies not in the store, and running or scheduled runs stay.

The runs are real: a child process runs flows named ``replicate`` (as regflow's is) that start a
task, log from flow and task, and publish a table artifact (from the task) and a keyed markdown
artifact (from the flow), all through Prefect's own machinery. Prefect records a run's end time
from its own clock and offers no way to backdate it, so "old" is made the other way round: a
batch of runs ends, the moment after it is taken as the cutoff, a second batch runs, and the
prune is told that "now" is the cutoff plus ``days`` (flows.retention.prune's ``now``). The
running and scheduled runs are created through the client, before the cutoff."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Running, Scheduled

from flows.retention import prune, prune_periodically
from policies.config_file import load_config_file
from policies.store import Store
from tests.support.prefect_server import PrefectServer
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# Runs flows the way a regflow execution is recorded; argv[1]: a JSON list of
# {"flow", "policy", "tags", "fail"}; prints the flow run ids in that order.
RUNNER = """\
import json, sys
from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

@task(name="transfer", task_run_name="{repository}")
def transfer(repository):
    get_run_logger().info("copying %s", repository)
    create_table_artifact([{"repository": repository, "copied": 1}])

def body(policy, fail):
    get_run_logger().info("execution of %s", policy)
    transfer(policy + "/app")
    create_markdown_artifact("# " + policy, key="replication-" + policy)
    if fail:
        raise RuntimeError("failed on purpose")

@flow(name="replicate")
def replicate(policy: str, fail: bool = False):
    body(policy, fail)

@flow(name="nightly-report")
def nightly_report(policy: str, fail: bool = False):
    body(policy, fail)

ids = []
for spec in json.loads(sys.argv[1]):
    run = {"replicate": replicate, "nightly-report": nightly_report}[spec["flow"]]
    with tags(*spec["tags"]):
        state = run(spec["policy"], spec.get("fail", False), return_state=True)
    ids.append(str(state.state_details.flow_run_id))
print(json.dumps(ids))
"""

# The registries are never contacted: retention reads only Prefect.
REGISTRIES = """\
registries:
  - {name: src, type: docker-registry, url: "http://127.0.0.1:9"}
  - {name: dst, type: docker-registry, url: "http://127.0.0.1:9"}
"""


def config_text(policies: dict[str, str], top: str = "") -> str:
    """A config file: ``policies`` maps each name to its retention (YAML flow text, or "")."""
    lines = [f"  - {{name: {name}, src_registry: src, dest_registry: dst, dest_namespace: m"
             + (f", retention: {retention}}}" if retention else "}") for name, retention in policies.items()]
    return "version: 1\n" + (f"retention: {top}\n" if top else "") + REGISTRIES + "policies:\n" + \
        "\n".join(lines) + "\n"


def run_flows(server: PrefectServer, specs: list[dict[str, Any]]) -> list[UUID]:
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(specs)], env=server.env(), text=True,
                          capture_output=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [UUID(i) for i in json.loads(done.stdout.strip().splitlines()[-1])]
    assert len(ids) == len(specs)
    return ids


def execution(policy: str, *, fail: bool = False, flow_name: str = "replicate",
              tags: list[str] | None = None) -> dict[str, Any]:
    return {"flow": flow_name, "policy": policy, "fail": fail,
            "tags": [f"policy:{policy}", "trigger:manual"] if tags is None else tags}


async def existing(client: PrefectClient, ids: list[UUID]) -> set[UUID]:
    runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return {r.id for r in runs}


async def task_runs_of(client: PrefectClient, ids: list[UUID]) -> dict[UUID, int]:
    runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    counts = dict.fromkeys(ids, 0)
    for t in runs:
        assert t.flow_run_id is not None
        counts[t.flow_run_id] += 1
    return counts


async def artifacts_of(client: PrefectClient, ids: list[UUID]) -> dict[UUID, int]:
    found = await client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    counts = dict.fromkeys(ids, 0)
    for a in found:
        assert a.flow_run_id is not None
        counts[a.flow_run_id] += 1
    return counts


async def logs_of(client: PrefectClient, ids: list[UUID]) -> dict[UUID, int]:
    found = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
    counts = dict.fromkeys(ids, 0)
    for line in found:
        assert line.flow_run_id is not None
        counts[line.flow_run_id] += 1
    return counts


async def recorded(client: PrefectClient, ids: list[UUID]) -> None:
    """Task runs and logs reach the server a little after the runs end: wait for all of them."""
    async def complete() -> bool:
        tasks, logs = await task_runs_of(client, ids), await logs_of(client, ids)
        return all(tasks[i] == 1 for i in ids) and all(logs[i] >= 2 for i in ids)
    await until(complete, 60, "every run's task run and logs to be recorded")


@flow(name="replicate")
def _replicate_shape(policy: str) -> None:
    """Only its name and parameters matter: runs of it are created through the client."""


async def test_prune_deletes_exactly_what_retention_no_longer_keeps(prefect_server: PrefectServer,
                                                                     tmp_path: Path) -> None:
    sfx = uuid.uuid4().hex[:8]
    alpha, beta, gamma, gone_policy = (f"{n}-{sfx}" for n in ("alpha", "beta", "gamma", "deleted"))
    config = tmp_path / "regflow.yaml"
    config.write_text(config_text({alpha: "{keep_last: 1}", beta: "", gamma: "{keep_last: 10}"},
                                  top="{days: 1, keep_last: 2}"))
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.apply(load_config_file(config))
    policies = store.policies()
    assert {p.name: (p.retention.days, p.retention.keep_last) for p in policies} == {
        alpha: (1, 1), beta: (1, 2), gamma: (1, 10)}

    old_specs = {
        "a1": execution(alpha), "a2": execution(alpha, fail=True), "a3": execution(alpha),
        "retried": execution(alpha, fail=True),
        "b1": execution(beta), "b2": execution(beta), "b3": execution(beta),
        "g1": execution(gamma), "g2": execution(gamma),
        "other-flow": execution(alpha, flow_name="nightly-report"),
        "not-stored": execution(gone_policy),
        "untagged": execution(alpha, tags=["trigger:manual"]),
    }
    ids = dict(zip(old_specs, run_flows(prefect_server, list(old_specs.values())), strict=True))
    async with prefect_server.client() as client:
        # Unfinished runs, all from before the cutoff: one running, one scheduled in the past,
        # and a failed one put back to Scheduled (a retry from the UI does this).
        running = await client.create_flow_run(_replicate_shape, parameters={"policy": alpha},
                                               tags=[f"policy:{alpha}"], state=Running())
        scheduled = await client.create_flow_run(
            _replicate_shape, parameters={"policy": alpha}, tags=[f"policy:{alpha}"],
            state=Scheduled(scheduled_time=datetime.now(UTC) - timedelta(hours=1)))
        await client.set_flow_run_state(ids["retried"], Scheduled(), force=True)
        ids["running"], ids["scheduled"] = running.id, scheduled.id

        await asyncio.sleep(0.2)
        cutoff = datetime.now(UTC)
        await asyncio.sleep(0.2)
        new_specs = {"a4": execution(alpha), "a5": execution(alpha), "b4": execution(beta)}
        ids |= dict(zip(new_specs, run_flows(prefect_server, list(new_specs.values())), strict=True))
        finished = [ids[k] for k in (*old_specs, *new_specs) if k != "retried"]
        await recorded(client, finished)
        for name in (*old_specs, *new_specs):
            run = await client.read_flow_run(ids[name])
            assert run.state is not None
            if name in old_specs and name != "retried":
                assert run.end_time is not None and run.end_time < cutoff, name
            elif name in new_specs:
                assert run.end_time is not None and run.end_time > cutoff, name

        expected = {alpha: {"a1", "a2", "a3"}, beta: {"b1", "b2"}, gamma: set()}
        doomed = [ids[k] for names in expected.values() for k in names]
        staying = [i for k, i in ids.items() if i not in doomed]
        now = cutoff + timedelta(days=1)
        before = {"tasks": await task_runs_of(client, doomed), "logs": await logs_of(client, doomed),
                  "artifacts": await artifacts_of(client, doomed)}
        # Each has its task run, logs, and at least its two artifacts (a failed one a third:
        # Prefect's record of its persisted exception).
        assert set(before["tasks"].values()) == {1}
        assert min(before["logs"].values()) >= 2 and min(before["artifacts"].values()) >= 2
        parts = {policy: (sum(before["tasks"][ids[k]] for k in names),
                          sum(before["artifacts"][ids[k]] for k in names))
                 for policy, names in expected.items()}
        name_of = {v: k for k, v in ids.items()}

        # Dry run: the same choice, nothing deleted.
        dry = await prune(policies, dry_run=True, now=now, client=client)
        assert not dry.failed
        assert {p.policy: {name_of[UUID(r.id)] for r in p.executions} for p in dry.policies} == expected
        assert {p.policy: (p.task_runs, p.artifacts) for p in dry.policies} == parts
        assert await existing(client, list(ids.values())) == set(ids.values())

        report = await prune(policies, now=now, client=client)
        assert not report.failed
        assert {p.policy: {name_of[UUID(r.id)] for r in p.executions} for p in report.policies} == expected
        assert {p.policy: (p.task_runs, p.artifacts) for p in report.policies} == parts

        assert await existing(client, list(ids.values())) == set(staying)
        assert set((await task_runs_of(client, doomed)).values()) == {0}
        assert set((await artifacts_of(client, doomed)).values()) == {0}

        async def logs_gone() -> bool:  # the server deletes them in a background task of its own
            return set((await logs_of(client, doomed)).values()) == {0}
        await until(logs_gone, 30, "the deleted runs' logs to be deleted")

        # What stays keeps all of its parts, and its state.
        kept_done = [ids[k] for k in ("a4", "a5", "b3", "b4", "g1", "g2", "other-flow", "not-stored",
                                      "untagged")]
        assert set((await task_runs_of(client, kept_done)).values()) == {1}
        assert min((await artifacts_of(client, kept_done)).values()) >= 2
        assert min((await logs_of(client, kept_done)).values()) >= 2
        states = {k: (await client.read_flow_run(ids[k])).state for k in ("running", "scheduled", "retried")}
        assert {k: s.type if s else None for k, s in states.items()} == {
            "running": StateType.RUNNING, "scheduled": StateType.SCHEDULED, "retried": StateType.SCHEDULED}
        # The key's latest version is still the newest run's: Prefect moved nothing it had to keep.
        latest = await client.read_latest_artifacts(artifact_filter=None)
        by_key = {a.key: a for a in latest if a.key}
        assert by_key[f"replication-{alpha}"].flow_run_id == ids["a5"]

        # Nothing more to do: a second sweep deletes nothing; at the real time, neither.
        again = await prune(policies, now=now, client=client)
        assert again.deleted == 0 and not again.failed
        assert (await prune(policies, client=client)).deleted == 0


async def test_serve_loop_prunes_and_stops(prefect_server: PrefectServer, tmp_path: Path) -> None:
    policy = f"loop-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "regflow.yaml"
    config.write_text(config_text({policy: "{days: 0, keep_last: 1}"}))
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.apply(load_config_file(config))
    older, newer = run_flows(prefect_server, [execution(policy), execution(policy)])
    stopping = asyncio.Event()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        loop = asyncio.create_task(prune_periodically(store, stopping, first_delay=0, interval=3600))
        async with prefect_server.client() as client:
            async def pruned() -> bool:
                return await existing(client, [older, newer]) == {newer}
            await until(pruned, 60, "the loop's first sweep")
        stopping.set()
        await asyncio.wait_for(loop, 5)


def regflow(server: PrefectServer, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # `executions prune` registers itself when regflow_cli.prune is imported (main.py does so).
    bootstrap = "import regflow_cli.prune; from regflow_cli.main import app; app()"
    env = server.env() | {"REGFLOW_HOME": str(home)}
    env = {k: v for k, v in env.items() if not k.startswith("REGFLOW_") or k == "REGFLOW_HOME"}
    return subprocess.run([sys.executable, "-c", bootstrap, *args], env=env, text=True,
                          capture_output=True, timeout=300, cwd=ROOT)


async def test_cli_prune_dry_run_then_prune(prefect_server: PrefectServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    policy = f"cli-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "regflow.yaml"
    config.write_text(config_text({policy: "{days: 0, keep_last: 0}"}))
    refused = regflow(prefect_server, home, "apply", "-f", str(config))
    assert refused.returncode == 2
    assert "retention: days 0 and keep_last 0 would delete every finished execution" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    config.write_text(config_text({policy: "{days: 0, keep_last: 1}"}))
    applied = regflow(prefect_server, home, "apply", "-f", str(config))
    assert applied.returncode == 0, applied.stderr
    older, newer = run_flows(prefect_server, [execution(policy), execution(policy)])

    dry = regflow(prefect_server, home, "executions", "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    [entry] = [p for p in report["policies"] if p["policy"] == policy]
    assert [e["id"] for e in entry["executions"]] == [str(older)]
    assert (entry["days"], entry["keep_last"], entry["error"]) == (0, 1, None)

    done = regflow(prefect_server, home, "executions", "prune")
    assert done.returncode == 0, done.stderr
    assert policy in done.stdout and "deleted 1 execution(s)" in done.stdout

    async with prefect_server.client() as client:
        assert await existing(client, [older, newer]) == {newer}
