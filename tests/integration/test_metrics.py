"""Issue 18 item 5 end to end: a real Prometheus, configured from deploy/prometheus/, scrapes a
real `regflow serve` with the metrics token; after a replication between real registries its
query API answers the figures the run reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.scrape import TOKEN_FILE_NAME
from tests.support.corpus import ImageKind
from tests.support.prefect_server import PrefectServer
from tests.support.registry import free_port
from tests.support.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
STOP_SECONDS = 30
POLICY = "metrics-mirror"
CONFIG = """\
version: 1
registries:
  - {{name: msrc, type: docker-registry, url: "{src}"}}
  - {{name: mdst, type: docker-registry, url: "{dst}"}}
policies:
  - name: {policy}
    src_registry: msrc
    dest_registry: mdst
    filters: [{{type: name, value: "team/**"}}]
    # Scheduled, so that the stale alert applies to it; the first of January is far enough.
    trigger: {{type: scheduled, trigger_settings: {{cron: "0 0 1 1 *"}}}}
"""


def _stop(proc: subprocess.Popen[bytes], *, group: bool) -> None:
    """SIGTERM to the process we started (and, for serve, the worker and runs it started in its
    own session), SIGKILL if it does not end in time."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
    try:
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()


@pytest.fixture
def serve(prefect_server: PrefectServer, make_registry, tmp_path: Path) -> Iterator[tuple]:
    src, dst = make_registry("anonymous"), make_registry("anonymous")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(src=src.url, dst=dst.url, policy=POLICY))
    home = tmp_path / "home"
    env = prefect_server.env() | {"REGFLOW_HOME": str(home)}
    env.pop("REGFLOW_METRICS_TOKEN", None)
    cli = [sys.executable, "-m", "regflow_cli.main"]
    subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--webhook-port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield src, dst, port, home, env
        finally:
            _stop(proc, group=True)
            print(log_path.read_text()[-4000:])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int, Path], str]]:
    if not PROMETHEUS_BIN.is_file():
        pytest.fail(f"missing {PROMETHEUS_BIN}: install the Debian package `prometheus`", pytrace=False)
    started: list[subprocess.Popen[bytes]] = []

    def start(target_port: int, token_file: Path) -> str:
        """Prometheus with the documented scrape job and alert rules, aimed at the test's serve."""
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        job = config["scrape_configs"][0]
        assert (job["metrics_path"], job["authorization"]["type"]) == ("/metrics", "Bearer")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        job["authorization"]["credentials_file"] = str(token_file)
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [str(PROMETHEUS_BIN), f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(proc)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in started:
            _stop(proc, group=False)
        if (tmp_path / "prometheus.log").exists():
            print((tmp_path / "prometheus.log").read_text()[-3000:])


async def _query(http: httpx.AsyncClient, promql: str) -> list[dict[str, object]]:
    answer = (await http.get("/api/v1/query", params={"query": promql})).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


async def _value(http: httpx.AsyncClient, promql: str) -> float | None:
    result = await _query(http, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None  # type: ignore[index]


async def test_prometheus_reads_a_replications_figures_through_serve(serve, prometheus, make_corpus):
    src, _dst, port, home, env = serve
    corpus = make_corpus(src)
    pushed = [corpus.push("team/app", ["1.0"], ImageKind.OCI, created=1),
              corpus.push("team/app", ["1.1"], ImageKind.DOCKER, created=2),
              corpus.push("team/tool", ["1.0"], ImageKind.OCI_INDEX, created=3)]
    corpus.push("other/x", ["1.0"], ImageKind.OCI, created=4)  # outside the filter: not copied

    token_file = home / TOKEN_FILE_NAME
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    async with httpx.AsyncClient() as direct:
        async def refuses() -> bool:
            try:
                return (await direct.get(metrics_url)).status_code == 401
            except httpx.TransportError:
                return False

        await until(refuses, 60, "serve's /metrics refusing a caller without the token")
        assert token_file.is_file()
        wrong = await direct.get(metrics_url, headers={"Authorization": "Bearer not-the-token-000000"})
        assert wrong.status_code == 401

    # The replication runs while Prometheus starts: it ends after serve started, so it counts.
    started = time.time()
    replication = subprocess.Popen([sys.executable, "-m", "regflow_cli.main", "replicate", POLICY, "--json"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = prometheus(port, token_file)
        async with httpx.AsyncClient(base_url=base) as http:
            async def ready() -> bool:
                try:
                    return (await http.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(ready, 30, "Prometheus ready")

            async def scraped_up() -> bool:
                return await _value(http, 'up{job="regflow"}') == 1.0

            await until(scraped_up, 30, "Prometheus scraping serve with the token")
            rules = (await http.get("/api/v1/rules")).json()["data"]["groups"]
        stdout, stderr = replication.communicate(timeout=120)
    finally:
        if replication.poll() is None:
            replication.kill()
            replication.wait()
    stale = [r for g in rules for r in g["rules"] if r["name"] == "RegflowPolicyStale"]
    assert len(stale) == 1 and stale[0]["health"] == "ok", rules
    assert replication.returncode == 0, stderr
    execution = json.loads(stdout)
    copied = sum(t["copied"] for t in execution["tasks"])
    assert copied == 3 and execution["bytes"] > 0

    selector = f'policy="{POLICY}"'
    async with httpx.AsyncClient(base_url=base) as http:
        async def tags_copied() -> float | None:
            return await _value(http, f'regflow_tags_total{{{selector},result="copied"}}')

        assert await until(tags_copied, 40, "tags copied through Prometheus") == copied
        assert await _value(http, f"regflow_copied_bytes_total{{{selector}}}") == execution["bytes"]
        assert await _value(http, f'regflow_runs_total{{{selector},outcome="succeeded"}}') == 1.0
        assert await _value(http, f'regflow_runs_total{{{selector},outcome="failed"}}') in (None, 0.0)
        assert await _value(http, f"regflow_run_duration_seconds_count{{{selector}}}") == 1.0
        assert await _value(http, f'regflow_policy_last_run_status{{{selector},status="succeeded"}}') == 1.0
        success = await _value(http, f"regflow_policy_last_success_timestamp_seconds{{{selector}}}")
        assert success is not None and started - 1 <= success <= time.time() + 1
        # Each blob goes up once (202 opens its upload, 201 closes it); its second repository
        # mounts it (201); every manifest is one PUT (201). Nothing failed or was held (404s
        # are the plan's HEADs of tags not on the target yet).
        placed = {(p.repository, b) for p in pushed for b in p.blobs}
        uploaded = len({b for _, b in placed})
        manifests = sum(len(p.manifests) for p in pushed)
        blobs = f"regflow_blobs_total{{{selector}"
        assert await _value(http, f'{blobs},route="uploaded"}}') == uploaded
        assert await _value(http, f'{blobs},route="mounted"}}') == len(placed) - uploaded
        requests = f"regflow_registry_requests_total{{{selector}"
        assert await _value(http, f'{requests},registry="target",status="202"}}') == uploaded
        assert await _value(http, f'{requests},registry="target",status="201"}}') == len(placed) + manifests
        assert await _query(http, f'{requests},status=~"5..|429|error"}}') == []
        holds = f"regflow_registry_rate_limit_holds_total{{{selector}"
        assert await _value(http, f'{holds},registry="target"}}') == 0
        assert await _value(http, f'regflow_policy_enabled{{{selector},trigger="scheduled"}}') == 1.0
        # The alert's own expression: quiet for a policy that has just succeeded; with no
        # grace at all, it names the policy (so the quiet is not that of a query matching nothing).
        assert await _query(http, stale[0]["query"]) == []
        eager = stale[0]["query"].replace("6 * 3600", "0")
        assert eager != stale[0]["query"]
        assert [r["metric"]["policy"] for r in await _query(http, eager)] == [POLICY]  # type: ignore[index]
