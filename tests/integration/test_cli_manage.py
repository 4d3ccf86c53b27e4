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

from tests.support.corpus import ImageKind
from tests.support.prefect_server import PrefectServer
from tests.support.registry import free_port
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPARE_SECRET = "spare-Literal-secret-5521"
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
    one_line_error(regflow(home, "apply", "-f", str(bad), "--json"), "'nope' is not a registry")

    # show: masked, with where the secret comes from and who uses the registry.
    shown = regflow(home, "registry", "show", "src")
    assert shown.returncode == 0, shown.stderr
    assert str(src.password) not in shown.stdout and "********" in shown.stdout
    assert "mirror, nightly" in shown.stdout
    view = json.loads(regflow(home, "registry", "show", "src", "--json").stdout)
    assert view["credential"] == {"type": "basic", "access_key": src.username, "access_secret": "********",
                                  "source": "encrypted"}
    assert view["url"] == src.url

    # ping: healthy 0; refused credentials or a registry down: 1, and JSON says why.
    ping = regflow(home, "registry", "ping", "src", "--json")
    assert (ping.returncode, json.loads(ping.stdout)) == (0, {"registry": "src", "status": "healthy",
                                                              "reason": ""})
    refused = regflow(home, "registry", "ping", "spare", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["status"] == "unhealthy"
    assert "credentials refused" in json.loads(refused.stdout)["reason"]

    # Refusals and unknown names: one line, exit 2, nothing changed.
    before = stored(home)
    one_line_error(regflow(home, "registry", "delete", "src"),
                   "registry 'src' is used by policy 'mirror', 'nightly'")
    one_line_error(regflow(home, "registry", "delete", "dst", "--json"), "'mirror', 'nightly'")
    for args in (("registry", "show", "nope"), ("registry", "delete", "nope"), ("registry", "ping", "nope"),
                 ("policy", "delete", "nope"), ("policy", "enable", "nope"),
                 ("policy", "disable", "nope", "--json")):
        one_line_error(regflow(home, *args), "nope")
    assert stored(home) == before

    # disable / enable: the flag, said once; a disabled policy's manual run is refused (Harbor's rule).
    disabled = regflow(home, "policy", "disable", "mirror", "--json")
    assert json.loads(disabled.stdout) == {"kind": "policy", "name": "mirror", "outcome": "disabled",
                                           "enabled": False}
    assert json.loads(regflow(home, "policy", "disable", "mirror", "--json").stdout)["outcome"] == \
        "already_disabled"
    policies = {p["name"]: p for p in json.loads(regflow(home, "policy", "list", "--json").stdout)}
    assert (policies["mirror"]["enabled"], policies["nightly"]["enabled"]) == (False, True)
    mark = dst.log_mark()
    one_line_error(regflow(home, "replicate", "mirror"), "policy 'mirror' is disabled")
    assert dst.count_requests(since=mark) == 0  # refused before any registry was asked
    enabled = regflow(home, "policy", "enable", "mirror")
    assert (enabled.returncode, enabled.stdout.strip()) == (0, "policy mirror: enabled")

    # delete: the registry's row and its sealed secret are gone from the file.
    sealed = json.loads(dict(stored(home)["registries"])["spare"])["credential"]["access_secret"]
    assert sealed.startswith("enc:v1:")
    deleted = regflow(home, "registry", "delete", "spare", "--json")
    assert json.loads(deleted.stdout) == {"kind": "registry", "name": "spare", "outcome": "deleted"}
    listed = json.loads(regflow(home, "registry", "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["dst", "src"]
    assert sealed.encode() not in (home / "regflow.db").read_bytes()
    assert json.loads(regflow(home, "policy", "delete", "mirror", "--json").stdout)["outcome"] == "deleted"
    assert regflow(home, "policy", "delete", "nightly").returncode == 0
    assert regflow(home, "registry", "delete", "src").stdout.strip() == "registry src: deleted"
    assert stored(home)["policies"] == []

    dst.stop()
    down = regflow(home, "registry", "ping", "dst")
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and "dst: unhealthy" in down.stderr


HOOK_SECRET = "hook-secret-manage-18"
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
                            env=env | {"REGFLOW_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
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
        # Prefect's scheduler queues the next runs of a new deployment within seconds.
        await until(lambda: queued(nightly.id), 30, "nightly's runs queued")
        corpus.push("ev/app", ["1"], ImageKind.OCI)
        await until(lambda: _has(dst_client, "ev/app", "1"), 120, "the webhook run before disable")
        runs_before = await event_runs()

        for name in ("nightly", "on-push"):
            assert regflow(home, "policy", "disable", name, env=env).returncode == 0
        paused = await until(lambda: deployment("nightly", True), 30, "nightly paused, schedule inactive")
        assert paused.id == nightly.id  # the same deployment: its past runs stay with it
        assert [s.active for s in paused.schedules] == [False]
        await until(lambda: deployment("on-push", True), 30, "on-push paused")
        assert await queued(nightly.id) == 0
        corpus.push("ev/app", ["2"], ImageKind.OCI, created=2)
        # Longer than the scheduler's pass over recently changed deployments, and the webhook
        # coalescing window: anything that would fire has fired by now.
        await asyncio.sleep(10)
        assert await queued(nightly.id) == 0
        assert await event_runs() == runs_before
        assert "2" not in dst_client.tags("ev/app")
        # A run started by hand from the paused deployment (the UI's "Run") is refused, as
        # Harbor refuses a disabled policy's manual trigger.
        by_hand = await client.create_flow_run_from_deployment(nightly.id)

        async def ended() -> Any:
            run = await client.read_flow_run(by_hand.id)
            return run if run.state is not None and run.state.is_final() else None

        refused = await until(ended, 120, "the run started from the paused deployment")
        assert refused.state.is_failed() and "policy 'nightly' is disabled" in refused.state.message

        for name in ("nightly", "on-push"):
            assert regflow(home, "policy", "enable", name, env=env).returncode == 0
        restored = await until(lambda: deployment("nightly", False), 30, "nightly active again")
        assert [s.active for s in restored.schedules] == [True]
        await until(lambda: queued(nightly.id), 30, "nightly's runs queued again")
        corpus.push("ev/app", ["3"], ImageKind.OCI, created=3)
        await until(lambda: _has(dst_client, "ev/app", "3"), 120, "the webhook run after enable")

        assert regflow(home, "policy", "delete", "by-hand", env=env).returncode == 0

        async def gone() -> bool:
            try:
                await client.read_deployment_by_name("replicate/by-hand")
            except Exception:
                return True
            return False

        await until(gone, 30, "by-hand's deployment removed")


async def _has(client: Any, repository: str, tag: str) -> bool:
    try:
        return tag in client.tags(repository)
    except Exception:
        return False
