"""Run control from the command line (issue 18): show, logs, stop mid-blob, retry of exactly what
failed (pinned, linked), the failed-images report; real registries, a real Prefect server, the
real console script in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from tests.support.corpus import ImageKind
from tests.support.endpoints import client_for
from tests.support.faultproxy import FaultProxy, distribution_error, respond
from tests.support.prefect_server import PrefectServer
from tests.support.registry import RegistryProcess, free_port
from tests.support.skopeo import inspect_raw_digest
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
version: 1
registries:
  - {{name: src, type: docker-registry, url: "{src}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: all
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "app/**"}}]
  - name: slow
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: big/app}}]
    speed: 8000
"""
LAYER = 24 * 1024 * 1024  # 24 s at the policy's 8000 Kbit/s: a stop (a new process) lands mid-blob
# CLI processes run at once by regflow_all: enough to keep two cores busy.
CONCURRENT_CALLS = 4
# Prefect's worker asks for due runs every 10 s by default; the deployment run here need not wait
# that long (no scheduled policy runs in this module).
WORKER_QUERY_SECONDS = "1"


def regflow(server: PrefectServer, home: Path, *args: str, timeout: float = 300,
            ) -> subprocess.CompletedProcess[str]:
    env = server.env() | {"REGFLOW_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


def regflow_all(server: PrefectServer, home: Path, *calls: tuple[str, ...],
                ) -> list[subprocess.CompletedProcess[str]]:
    """Independent calls at once, results in order: each process spends most of its time
    importing, which the machine's other core can do meanwhile."""
    with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
        return list(pool.map(lambda args: regflow(server, home, *args), calls))


def started(server: PrefectServer, home: Path, *args: str) -> subprocess.Popen[str]:
    env = server.env() | {"REGFLOW_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "regflow_cli.main", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def setup(prefect_server: PrefectServer, make_registry, make_corpus, tmp_path: Path,
          ) -> Iterator[tuple[RegistryProcess, RegistryProcess, FaultProxy, object, Path]]:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    with FaultProxy(dst) as proxy:
        config = tmp_path / "c.yaml"
        config.write_text(CONFIG.format(src=src.url, dst=proxy.url))
        home = tmp_path / "home"
        applied = regflow(prefect_server, home, "apply", "-f", str(config))
        assert applied.returncode == 0, applied.stderr
        yield src, dst, proxy, make_corpus(src), home


def one_line_exit_2(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert needle in result.stderr


async def test_retry_copies_exactly_the_two_failed_repositories_pinned_and_linked(prefect_server, setup,
                                                                                  tmp_path):
    src, dst, proxy, corpus, home = setup
    pushed = {repo: corpus.push(repo, tags, ImageKind.DOCKER, created=i)
              for i, (repo, tags) in enumerate([("app/a", ["1"]), ("app/b", ["1"]), ("app/c", ["1", "2"]),
                                                ("app/d", ["1"])])}
    # The target refuses the manifests of two repositories: a permanent error, no task retries.
    proxy.rule("PUT", r"/v2/app/(b|c)/manifests/.*", respond(403, body=distribution_error("DENIED", "no")),
               nth=None)

    first_report = tmp_path / "first.json"
    first = regflow(prefect_server, home, "replicate", "all", "--json", "--report", str(first_report))
    assert first.returncode == 1, first.stderr
    run1 = json.loads(first.stdout)
    assert (run1["status"], run1["failed"], run1["succeed"]) == ("Failed", 2, 2)
    first_id = run1["flow_run_id"]

    report = json.loads(first_report.read_text())
    assert report["version"] == 1 and report["policy"] == "all" and report["execution_id"] == first_id
    images = sorted(report["images"], key=lambda i: (i["source_repository"], i["tag"]))
    assert [(i["source_repository"], i["tag"]) for i in images] == [("app/b", "1"), ("app/c", "1"),
                                                                     ("app/c", "2")]
    for image in images:
        digest = pushed[image["source_repository"]].digest
        assert image["digest"] == digest
        assert image["source"] == f"{src.host}/{image['source_repository']}:{image['tag']}@{digest}"
        assert image["target"] == f"{proxy.host}/{image['source_repository']}:{image['tag']}"
        assert (image["status"], image["error_class"], image["transient"]) == \
            ("failed", "PermissionDeniedError", False)
        assert "403" in image["reason"] or "DENIED" in image["reason"] or "denied" in image["reason"]

    # show, and bad input in one line: none of these changes anything, so they run at once.
    (tmp_path / "bad.json").write_text('{"policy": "all"}')
    shown, *refusals = regflow_all(
        prefect_server, home,
        ("executions", "show", first_id, "--json", "--report", str(tmp_path / "shown.json")),
        ("executions", "show", "no-such-run"), ("executions", "retry", "no-such-run"),
        ("executions", "stop", "no-such-run"),
        ("executions", "retry", "--from-report", str(tmp_path / "bad.json")), ("executions", "retry"))
    for refusal, needle in zip(refusals, ["no-such-run"] * 3 + ["bad.json", "--from-report"], strict=True):
        one_line_exit_2(refusal, needle)

    # show: the tasks, each tag, and the same report from Prefect's artifact.
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["execution"]["state"] == "Failed"
    assert sorted(t["name"] for t in detail["execution"]["tasks"]) == ["app/a", "app/b", "app/c", "app/d"]
    assert sorted((t["repository"], t["tag"], t["status"]) for t in detail["tags"]) == [
        ("app/a", "1", "copied"), ("app/b", "1", "failed"), ("app/c", "1", "failed"),
        ("app/c", "2", "failed"), ("app/d", "1", "copied")]
    assert detail["failed_images"]["images"] == report["images"]
    assert json.loads((tmp_path / "shown.json").read_text())["images"] == report["images"]
    # By name too; and logs (show has seen every task run recorded): these run at once.
    logs_calls = (("executions", "logs", first_id, "--task", "app/b"), ("executions", "logs", first_id))
    human, unknown_task, logs, whole = regflow_all(
        prefect_server, home, ("executions", "show", run_name(detail)),
        ("executions", "logs", first_id, "--task", "app/zz"), *logs_calls)
    assert human.returncode == 0 and "app/c" in human.stdout and "Failed" in human.stdout
    one_line_exit_2(unknown_task, "app/zz")

    # logs: the failed task's own lines, by repository.
    deadline = time.monotonic() + 30
    while True:  # log lines reach the server in batches, after the run
        assert logs.returncode == 0, logs.stderr
        assert whole.returncode == 0, whole.stderr
        if ("app/b:1 failed" in logs.stdout and "app/c:2 failed" in whole.stdout) \
                or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
        logs, whole = regflow_all(prefect_server, home, *logs_calls)
    assert "app/b:1 failed" in logs.stdout and "app/c" not in logs.stdout
    assert "app/c:2 failed" in whole.stdout and "plan: 4 repositories" in whole.stdout

    # Meanwhile the source moves on: b:1 points elsewhere, a has a new tag. The retry copies
    # neither: b at the digest the first run planned, nothing of a.
    moved = corpus.push("app/b", ["1"], ImageKind.OCI, name="moved", created=50)
    assert moved.digest != pushed["app/b"].digest
    corpus.push("app/a", ["2"], ImageKind.DOCKER, created=51)
    proxy.clear_rules()

    retried = regflow(prefect_server, home, "executions", "retry", first_id, "--json",
                      "--report", str(tmp_path / "retry.json"))
    assert retried.returncode == 0, retried.stderr
    run2 = json.loads(retried.stdout)
    assert run2["status"] == "Succeeded" and run2["retry_of"] == first_id
    assert sorted(t["source"] for t in run2["tasks"]) == ["app/b", "app/c"]
    assert sorted((t["source"], o["tag"], o["status"]) for t in run2["tasks"] for o in t["tags"]) == [
        ("app/b", "1", "copied"), ("app/c", "1", "copied"), ("app/c", "2", "copied")]
    assert json.loads((tmp_path / "retry.json").read_text())["images"] == []
    assert inspect_raw_digest(dst.ref("app/b", "1"), dst.creds) == pushed["app/b"].digest
    for tag in ("1", "2"):
        assert inspect_raw_digest(dst.ref("app/c", tag), dst.creds) == pushed["app/c"].digest
    async with client_for(dst) as target:
        assert await target.head_manifest("app/a", "2") is None

    # Linked back: a tag and a parameter of the retry's flow run, and in the listing.
    async with prefect_server.client() as client:
        run = await client.read_flow_run(run2["flow_run_id"])
    assert f"retry-of:{first_id}" in run.tags and run.parameters["retry_of"] == first_id
    # Nothing to retry (it starts no execution, so the listing runs at the same time).
    listed_call, nothing = regflow_all(prefect_server, home, ("executions", "all", "--json"),
                                       ("executions", "retry", run2["flow_run_id"]))
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stderr
    listed = json.loads(listed_call.stdout)
    assert [(r["id"], r["retry_of"]) for r in listed[:2]] == [(run2["flow_run_id"], first_id),
                                                              (first_id, None)]

    # The report file instead of an id: the same selection (all identical by now).
    from_file = regflow(prefect_server, home, "executions", "retry", "--from-report", str(first_report),
                        "--json")
    assert from_file.returncode == 0, from_file.stderr
    run3 = json.loads(from_file.stdout)
    assert sorted(t["source"] for t in run3["tasks"]) == ["app/b", "app/c"]
    assert all(o["status"] == "skipped" for t in run3["tasks"] for o in t["tags"])
    assert run3["retry_of"] == first_id


def run_name(detail: dict[str, object]) -> str:
    execution = detail["execution"]
    assert isinstance(execution, dict)
    return str(execution["name"])


async def running_run(server: PrefectServer, policy: str) -> str:
    deadline = time.monotonic() + 90
    async with server.client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"policy:{policy}"]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
            if runs:
                return str(runs[0].id)
            await asyncio.sleep(0.2)
    raise AssertionError(f"no running execution of {policy}")


async def test_stop_mid_blob_from_the_cli_then_retry_the_stopped_image(prefect_server, setup, tmp_path):
    _, dst, proxy, corpus, home = setup
    big = corpus.push("big/app", ["1"], ImageKind.OCI, layer_sizes=[LAYER])

    slow = started(prefect_server, home, "replicate", "slow", "--json", "--report", str(tmp_path / "r.json"))
    run_id = await running_run(prefect_server, "slow")
    deadline = time.monotonic() + 60
    while proxy.bytes_forwarded() < 1024 * 1024:  # well into the blob
        assert time.monotonic() < deadline, "the blob never started"
        await asyncio.sleep(0.2)

    asked = time.monotonic()
    stopped = regflow(prefect_server, home, "executions", "stop", run_id, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "Cancelled" in stopped.stdout
    out, err = slow.communicate(timeout=60)
    assert time.monotonic() - asked < 15, "stop took too long"
    assert slow.returncode == 1, err
    execution = json.loads(out)
    assert execution["status"] == "Stopped"
    assert execution["tasks"][0]["tags"][0]["status"] == "stopped"
    async with client_for(dst) as target:
        assert await target.head_manifest("big/app", "1") is None
    async with prefect_server.client() as client:
        assert (await client.read_flow_run(run_id)).state.type == StateType.CANCELLED
    [image] = json.loads((tmp_path / "r.json").read_text())["images"]
    assert (image["tag"], image["digest"], image["status"], image["transient"]) == \
        ("1", big.digest, "stopped", True)

    # The retry need not crawl: the policy loses its cap (it only made the stop land mid-blob),
    # while the stopped execution is asked again, at the same time.
    unthrottled = tmp_path / "unthrottled.yaml"
    unthrottled.write_text((tmp_path / "c.yaml").read_text().replace("    speed: 8000\n", ""))
    again, applied = regflow_all(prefect_server, home, ("executions", "stop", run_id),
                                 ("apply", "-f", str(unthrottled), "--json"))
    assert again.returncode == 0 and "already stopped" in again.stdout
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["updated"] == ["policy slow"]

    retried = regflow(prefect_server, home, "executions", "retry", run_id, "--json")
    assert retried.returncode == 0, retried.stderr
    run2 = json.loads(retried.stdout)
    assert [(t["source"], t["copied"]) for t in run2["tasks"]] == [("big/app", 1)]
    assert inspect_raw_digest(dst.ref("big/app", "1"), dst.creds) == big.digest

    # An execution that ended otherwise cannot be stopped: exit 1, one line.
    ended = regflow(prefect_server, home, "executions", "stop", run2["flow_run_id"])
    assert ended.returncode == 1 and "already ended Completed" in ended.stderr


async def test_a_retry_started_as_a_deployment_run_with_the_parameter_alone(prefect_server, setup, tmp_path):
    """What the UI's custom run of the policy's deployment does: only `retry_of` is given; the
    flow finds the report, copies the failed image at its planned digest and links itself."""
    _, dst, proxy, corpus, home = setup
    good = corpus.push("app/good", ["1"], ImageKind.DOCKER)
    bad = corpus.push("app/bad", ["1"], ImageKind.OCI)
    proxy.rule("PUT", r"/v2/app/bad/manifests/.*", respond(403, body=distribution_error("DENIED", "no")),
               nth=None)
    first = regflow(prefect_server, home, "replicate", "all", "--json")
    assert first.returncode == 1, first.stderr
    run1 = json.loads(first.stdout)
    proxy.clear_rules()
    corpus.push("app/bad", ["1"], ImageKind.DOCKER, name="moved", created=9)  # the tag moves on

    env = prefect_server.env() | {"REGFLOW_HOME": str(home),
                                  "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS}
    log = (tmp_path / "serve.log").open("wb")
    served = subprocess.Popen([sys.executable, "-m", "regflow_cli.main", "serve", "--webhook-port",
                               str(free_port())], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        async with prefect_server.client() as client:
            # By its name, as a UI user would paste it from the runs list (Prefect's own name).
            first_name = (await client.read_flow_run(run1["flow_run_id"])).name

            async def deployment() -> object:
                try:
                    return await client.read_deployment_by_name("replicate/all")
                except ObjectNotFound:
                    return None

            found = await until(deployment, 120, "deployment replicate/all")
            created = await client.create_flow_run_from_deployment(
                found.id, parameters={"retry_of": first_name})

            async def ended() -> object:
                run = await client.read_flow_run(created.id)
                return run if run.state is not None and run.state.is_final() else None

            run = await until(ended, 180, "the retry to end")
        assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
        assert f"retry-of:{run1['flow_run_id']}" in run.tags
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait()
        log.close()

    assert inspect_raw_digest(dst.ref("app/bad", "1"), dst.creds) == bad.digest
    assert inspect_raw_digest(dst.ref("app/good", "1"), dst.creds) == good.digest
    shown = json.loads(regflow(prefect_server, home, "executions", "show", str(created.id), "--json").stdout)
    assert shown["execution"]["retry_of"] == run1["flow_run_id"]
    assert [t["name"] for t in shown["execution"]["tasks"]] == ["app/bad"]
    assert [(t["repository"], t["tag"], t["status"]) for t in shown["tags"]] == [("app/bad", "1", "copied")]
