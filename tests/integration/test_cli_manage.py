"""Issue 18, CLI management end to end: `regflow registry show|delete|ping`, `regflow policy
delete|enable|disable` and `apply --json`, each run as the real console script, against real
registries; and, with `regflow serve` on a real Prefect server, what a disabled policy's
deployment becomes (paused, no schedule active, no webhook run) and what enabling brings back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType

from deployments.coalesce import COALESCE_WINDOW_SECONDS
from tests.support.corpus import ImageKind
from tests.support.prefect_server import PrefectServer
from tests.support.registry import free_port
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPARE_SECRET = "spare-Literal-secret-5521"
# CLI processes run at once by regflow_all: enough to keep two cores busy.
CONCURRENT_CALLS = 4
MANAGE_CONFIG = """\
version: 1
registries:
  - name: src
    type: docker-registry
    url: {src}
    credential: {{type: basic, access_key: {user}, access_secret: "{password}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
  - name: spare
    type: docker-registry
    url: {src}
    credential: {{type: basic, access_key: {user}, access_secret: "{spare_secret}"}}
policies:
  - {{name: mirror, src_registry: src, dest_registry: dst, filters: [{{type: name, value: "app/**"}}]}}
  - name: nightly
    src_registry: src
    dest_registry: dst
    trigger: {{type: scheduled, trigger_settings: {{cron: "0 3 * * *"}}}}
"""


def regflow(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REGFLOW_"))}
    return subprocess.run([sys.executable, "-m", "regflow_cli.main", *args], text=True, capture_output=True,
                          env=(env or base) | {"REGFLOW_HOME": str(home)}, timeout=300)


def regflow_all(home: Path, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent calls at once, results in order: each process spends most of its time
    importing, which the machine's other core can do meanwhile."""
    with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
        return list(pool.map(lambda args: regflow(home, *args), calls))


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def stored(home: Path) -> dict[str, list[tuple[str, str]]]:
    with closing(sqlite3.connect(home / "regflow.db")) as db:
        return {t: db.execute(f"SELECT name, spec FROM {t} ORDER BY name").fetchall()
                for t in ("registries", "policies")}


def test_show_ping_delete_and_switches(tmp_path: Path, make_registry: Any, make_corpus: Any) -> None:
    src = make_registry("basic")
    dst = make_registry("anonymous")
    make_corpus(src).push("app/one", ["1"], ImageKind.OCI)
    home = tmp_path / "home"
    config = tmp_path / "c.yaml"
    config.write_text(MANAGE_CONFIG.format(src=src.url, dst=dst.url, user=src.username, password=src.password,
                                           spare_secret=SPARE_SECRET))

    applied = regflow(home, "apply", "-f", str(config), "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout) == {
        "created": ["registry src", "registry dst", "registry spare", "policy mirror", "policy nightly"],
        "updated": [], "unchanged": [], "deleted": []}
    again = json.loads(regflow(home, "apply", "-f", str(config), "--json").stdout)
    assert (again["created"], len(again["unchanged"])) == ([], 5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npolicies: [{name: x, src_registry: nope, dest_registry: dst}]\n")

    # Nothing below changes the store until `policy disable`: these calls run at once.
    before = stored(home)
    unknown = (("registry", "show", "nope"), ("registry", "delete", "nope"), ("registry", "ping", "nope"),
               ("policy", "delete", "nope"), ("policy", "enable", "nope"),
               ("policy", "disable", "nope", "--json"))
    bad_apply, shown, view_call, ping, refused, in_use, in_use_json, *unknowns = regflow_all(
        home, ("apply", "-f", str(bad), "--json"), ("registry", "show", "src"),
        ("registry", "show", "src", "--json"), ("registry", "ping", "src", "--json"),
        ("registry", "ping", "spare", "--json"), ("registry", "delete", "src"),
        ("registry", "delete", "dst", "--json"), *unknown)
    one_line_error(bad_apply, "'nope' is not a registry")

    # show: masked, with where the secret comes from and who uses the registry.
    assert shown.returncode == 0, shown.stderr
    assert str(src.password) not in shown.stdout and "********" in shown.stdout
    assert "mirror, nightly" in shown.stdout
    view = json.loads(view_call.stdout)
    assert view["credential"] == {"type": "basic", "access_key": src.username, "access_secret": "********",
                                  "source": "encrypted"}
    assert view["url"] == src.url

    # ping: healthy 0; refused credentials or a registry down: 1, and JSON says why.
    assert (ping.returncode, json.loads(ping.stdout)) == (0, {"registry": "src", "status": "healthy",
                                                              "reason": ""})
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["status"] == "unhealthy"
    assert "credentials refused" in json.loads(refused.stdout)["reason"]

    # Refusals and unknown names: one line, exit 2, nothing changed.
    one_line_error(in_use, "registry 'src' is used by policy 'mirror', 'nightly'")
    one_line_error(in_use_json, "'mirror', 'nightly'")
    for result in unknowns:
        one_line_error(result, "nope")
    assert stored(home) == before

    # disable / enable: the flag, said once; a disabled policy's manual run is refused (Harbor's rule).
    disabled = regflow(home, "policy", "disable", "mirror", "--json")
    assert json.loads(disabled.stdout) == {"kind": "policy", "name": "mirror", "outcome": "disabled",
                                           "enabled": False}
    mark = dst.log_mark()
    again_disabled, listed_policies, refused_run = regflow_all(
        home, ("policy", "disable", "mirror", "--json"), ("policy", "list", "--json"),
        ("replicate", "mirror"))
    assert json.loads(again_disabled.stdout)["outcome"] == "already_disabled"
    policies = {p["name"]: p for p in json.loads(listed_policies.stdout)}
    assert (policies["mirror"]["enabled"], policies["nightly"]["enabled"]) == (False, True)
    one_line_error(refused_run, "policy 'mirror' is disabled")
    assert dst.count_requests(since=mark) == 0  # refused before any registry was asked
    enabled = regflow(home, "policy", "enable", "mirror")
    assert (enabled.returncode, enabled.stdout.strip()) == (0, "policy mirror: enabled")

    # delete: the registry's row and its sealed secret are gone from the file.
    sealed = json.loads(dict(stored(home)["registries"])["spare"])["credential"]["access_secret"]
    assert sealed.startswith("enc:v1:")
    deleted = regflow(home, "registry", "delete", "spare", "--json")
    assert json.loads(deleted.stdout) == {"kind": "registry", "name": "spare", "outcome": "deleted"}
    assert sealed.encode() not in (home / "regflow.db").read_bytes()
    dst.stop()
    listed_call, deleted_mirror, deleted_nightly, down = regflow_all(
        home, ("registry", "list", "--json"), ("policy", "delete", "mirror", "--json"),
        ("policy", "delete", "nightly"), ("registry", "ping", "dst"))
    assert [r["name"] for r in json.loads(listed_call.stdout)] == ["dst", "src"]
    assert json.loads(deleted_mirror.stdout)["outcome"] == "deleted"
    assert deleted_nightly.returncode == 0
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and "dst: unhealthy" in down.stderr
    assert regflow(home, "registry", "delete", "src").stdout.strip() == "registry src: deleted"
    assert stored(home)["policies"] == []


HOOK_SECRET = "hook-secret-manage-18"
# Prefect's worker asks for due runs every 10 s by default; each run here need not wait that long.
WORKER_QUERY_SECONDS = "1"
# Prefect's scheduler looks at recently changed deployments every 5 s (its default, which the
# test server keeps); events start a run one coalescing window after they arrive.
QUIET_SECONDS = max(5.0, COALESCE_WINDOW_SECONDS) + 2.0
SERVE_CONFIG = """\
version: 1
registries:
  - name: src
    type: docker-registry
    url: "{src}"
    webhook: {{kind: distribution, auth: bearer, secret: "{hook_secret}"}}
  - {{name: dst, type: docker-registry, url: "{dst}"}}
policies:
  - name: nightly
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "nothing/**"}}]
    trigger: {{type: scheduled, trigger_settings: {{cron: "0 3 * * *"}}}}
  - name: on-push
    src_registry: src
    dest_registry: dst
    filters: [{{type: name, value: "ev/**"}}]
    trigger: {{type: event_based}}
  - {{name: by-hand, src_registry: src, dest_registry: dst}}
"""


@pytest.fixture
def served(prefect_server: PrefectServer, make_registry: Any, tmp_path: Path) -> Iterator[tuple[Any, ...]]:
    port = free_port()
    src = make_registry("anonymous", notifications=f"http://127.0.0.1:{port}/webhooks/src",
                        notification_headers={"Authorization": f"Bearer {HOOK_SECRET}"})
    dst = make_registry("anonymous")
    config = tmp_path / "c.yaml"
    config.write_text(SERVE_CONFIG.format(src=src.url, dst=dst.url, hook_secret=HOOK_SECRET))
    home = tmp_path / "home"
    env = {k: v for k, v in prefect_server.env().items() if not k.startswith("REGFLOW_")}
    assert regflow(home, "apply", "-f", str(config), env=env).returncode == 0
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "regflow_cli.main", "serve", "--webhook-port", str(port)],
                            env=env | {"REGFLOW_HOME": str(home),
                                       "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield src, dst, home, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        print((tmp_path / "serve.log").read_text()[-4000:])


async def test_disable_pauses_the_deployment_and_enable_restores_it(
        served: tuple[Any, ...], prefect_server: PrefectServer, make_corpus: Any) -> None:
    src, dst, home, env = served
    corpus = make_corpus(src)
    dst_client = corpus.client.__class__(dst.url, None)

    async with prefect_server.client() as client:
        async def deployment(name: str, paused: bool) -> Any:
            try:
                found = await client.read_deployment_by_name(f"replicate/{name}")
            except Exception:
                return None
            active = [s.active for s in found.schedules]
            return found if found.paused is paused and all(a is not paused for a in active) else None

        async def queued(deployment_id: Any) -> int:
            return len(await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))))

        async def event_runs() -> int:
            return len(await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["policy:on-push"]))))

        nightly = await until(lambda: deployment("nightly", False), 90, "nightly's deployment")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
        # serve applies the deployments one by one: an event before on-push's is lost, and
        # by-hand's removal at the end must be of one that existed.
        await until(lambda: deployment("on-push", False), 30, "on-push's deployment")
        await until(lambda: deployment("by-hand", False), 30, "by-hand's deployment")
        corpus.push("ev/app", ["1"], ImageKind.OCI)
        # Prefect's scheduler queues the next runs of a new deployment within seconds.
        await until(lambda: queued(nightly.id), 30, "nightly's runs queued")
        await until(lambda: _has(dst_client, "ev/app", "1"), 120, "the webhook run before disable")
        runs_before = await event_runs()

        await switch(home, env, "disable", "nightly", "on-push")
        paused = await until(lambda: deployment("nightly", True), 30, "nightly paused, schedule inactive")
        assert paused.id == nightly.id  # the same deployment: its past runs stay with it
        assert [s.active for s in paused.schedules] == [False]
        await until(lambda: deployment("on-push", True), 30, "on-push paused")
        assert await queued(nightly.id) == 0
        corpus.push("ev/app", ["2"], ImageKind.OCI, created=2)
        # A run started by hand from the paused deployment (the UI's "Run") is refused, as
        # Harbor refuses a disabled policy's manual trigger.
        by_hand = await client.create_flow_run_from_deployment(nightly.id)
        # A scheduled run the worker took ahead of its time, just before the pause (tagged as
        # Prefect's scheduler tags its runs): skipped, as Stopped, not failed.
        late = await client.create_flow_run_from_deployment(nightly.id, tags=["auto-scheduled"])

        def ended(run_id: Any) -> Any:
            async def final() -> Any:
                run = await client.read_flow_run(run_id)
                return run if run.state is not None and run.state.is_final() else None
            return final

        # While the hand-started run goes its way, anything that would fire has time to: the
        # quiet time is longer than the scheduler's pass over recently changed deployments and
        # than the webhook coalescing window. The runs are final before the counts below, so
        # they are not counted as queued.
        refused, skipped, _ = await asyncio.gather(
            until(ended(by_hand.id), 120, "the run started from the paused deployment"),
            until(ended(late.id), 120, "the late scheduled run"), asyncio.sleep(QUIET_SECONDS))
        assert await queued(nightly.id) == 0
        assert await event_runs() == runs_before
        assert "2" not in dst_client.tags("ev/app")
        assert refused.state.is_failed() and "policy 'nightly' is disabled" in refused.state.message
        assert skipped.state.is_cancelled(), skipped.state
        assert "policy 'nightly' was disabled before this scheduled run started" in skipped.state.message

        # Enabled again, the webhook starts runs at once (serve reads the store per event); the
        # deployment follows at serve's next look at the store.
        await switch(home, env, "enable", "nightly", "on-push")
        corpus.push("ev/app", ["3"], ImageKind.OCI, created=3)
        deleting = asyncio.create_task(
            asyncio.to_thread(regflow, home, "policy", "delete", "by-hand", env=env))
        restored = await until(lambda: deployment("nightly", False), 30, "nightly active again")
        assert [s.active for s in restored.schedules] == [True]
        await until(lambda: queued(nightly.id), 30, "nightly's runs queued again")
        await until(lambda: _has(dst_client, "ev/app", "3"), 120, "the webhook run after enable")
        assert (await deleting).returncode == 0

        async def gone() -> bool:
            try:
                await client.read_deployment_by_name("replicate/by-hand")
            except Exception:
                return True
            return False

        await until(gone, 30, "by-hand's deployment removed")


async def switch(home: Path, env: dict[str, str], verb: str, *names: str) -> None:
    """`regflow policy <verb>` for each name, the processes at once."""
    results = await asyncio.gather(*(asyncio.to_thread(regflow, home, "policy", verb, name, env=env)
                                     for name in names))
    for result in results:
        assert result.returncode == 0, result.stderr


async def _has(client: Any, repository: str, tag: str) -> bool:
    try:
        return tag in client.tags(repository)
    except Exception:
        return False
