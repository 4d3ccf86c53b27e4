"""serve's /metrics without a server: the token, who may scrape, and how ended runs as Prefect
holds them become figures (the real Prefect and Prometheus: tests/integration/test_metrics.py)."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from prefect.client.schemas.objects import Artifact, FlowRun, State, StateType
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.applications import Starlette

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.errors import ConfigError
from deployments.metrics import Figures, MetricsCollector, PolicyState, RunFigures, _ended
from deployments.scrape import METRICS_TOKEN_ENV, TOKEN_FILE_NAME, metrics_route, metrics_token
from tasks.blobs import BlobCopier
from tasks.models import RegistryTraffic, Traffic
from tasks.traffic import traffic_of

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def sample(figures: Figures, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(figures.text().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def run(policy: str, outcome: str, ended: datetime, **kw: int) -> RunFigures:
    return RunFigures.model_validate({"id": str(uuid4()), "policy": policy, "outcome": outcome,
                                      "ended": ended, "seconds": 42.0, **kw})


# -- figures ----------------------------------------------------------------------------------

def test_ended_runs_add_up_per_policy_and_result() -> None:
    figures = Figures()
    traffic = Traffic(blobs_uploaded=5, blobs_mounted=2, registries={
        "source": RegistryTraffic(host="a", responses={"200": 30, "404": 1}),
        "target": RegistryTraffic(host="b", responses={"201": 7, "429": 2}, holds=2)})
    figures.count(run("p", "succeeded", T0, copied=3, skipped=1, bytes=1000).model_copy(
        update={"traffic": traffic}))
    figures.count(run("p", "failed", T0 + timedelta(minutes=1), copied=1, failed=2, bytes=24))
    figures.count(run("q", "succeeded", T0, copied=7))

    assert sample(figures, "regflow_tags_total", policy="p", result="copied") == 4
    assert sample(figures, "regflow_tags_total", policy="p", result="failed") == 2
    assert sample(figures, "regflow_tags_total", policy="p", result="skipped") == 1
    assert sample(figures, "regflow_tags_total", policy="q", result="copied") == 7
    assert sample(figures, "regflow_copied_bytes_total", policy="p") == 1024
    assert sample(figures, "regflow_runs_total", policy="p", outcome="succeeded") == 1
    assert sample(figures, "regflow_runs_total", policy="p", outcome="failed") == 1
    assert sample(figures, "regflow_run_duration_seconds_count", policy="p") == 2
    assert sample(figures, "regflow_run_duration_seconds_bucket", policy="p", le="30.0") == 0
    assert sample(figures, "regflow_run_duration_seconds_bucket", policy="p", le="60.0") == 2
    assert sample(figures, "regflow_blobs_total", policy="p", route="uploaded") == 5
    assert sample(figures, "regflow_blobs_total", policy="p", route="mounted") == 2
    requests = "regflow_registry_requests_total"
    assert sample(figures, requests, policy="p", registry="target", status="429") == 2
    assert sample(figures, requests, policy="p", registry="source", status="200") == 30
    assert sample(figures, "regflow_registry_rate_limit_holds_total", policy="p", registry="target") == 2


def test_the_gauges_follow_the_latest_run_not_the_last_read() -> None:
    figures = Figures()
    figures.count(run("p", "failed", T0 + timedelta(hours=2)))
    figures.count(run("p", "succeeded", T0))  # read later, ended earlier
    assert sample(figures, "regflow_policy_last_success_timestamp_seconds", policy="p") == T0.timestamp()
    assert sample(figures, "regflow_policy_last_run_status", policy="p", status="failed") == 1
    assert sample(figures, "regflow_policy_last_run_status", policy="p", status="succeeded") == 0
    assert sample(figures, "regflow_policy_last_run_timestamp_seconds", policy="p") == \
        (T0 + timedelta(hours=2)).timestamp()
    figures.count(run("p", "stopped", T0 + timedelta(hours=3)))
    assert sample(figures, "regflow_policy_last_run_status", policy="p", status="stopped") == 1
    assert sample(figures, "regflow_policy_last_success_timestamp_seconds", policy="p") == T0.timestamp()


def test_a_policy_that_never_succeeded_has_no_success_gauge() -> None:
    figures = Figures()
    figures.count(run("never", "crashed", T0))
    assert sample(figures, "regflow_policy_last_success_timestamp_seconds", policy="never") is None
    assert sample(figures, "regflow_policy_last_run_status", policy="never", status="crashed") == 1


# -- reading Prefect's records ----------------------------------------------------------------

def flow_run(state: StateType, tags: list[str], start: datetime, end: datetime | None) -> FlowRun:
    return FlowRun.model_validate({"id": uuid4(), "flow_id": uuid4(), "tags": tags,
                                   "parameters": {"policy": "from-params"}, "state": State(type=state),
                                   "start_time": start, "end_time": end})


def table(run: FlowRun, key: str, rows: list[dict[str, object]]) -> Artifact:
    return Artifact(key=key, type="table", data=json.dumps(rows), flow_run_id=run.id)


def test_a_run_is_read_from_its_state_tags_and_tables() -> None:
    fr = flow_run(StateType.FAILED, ["policy:mirror", "trigger:manual"], T0, T0 + timedelta(seconds=90))
    traffic = Traffic(blobs_uploaded=4,
                      registries={"target": RegistryTraffic(host="t", responses={"500": 3})})
    figures = _ended(fr, None, [
        table(fr, "replication-mirror", [
            {"repository": "a", "copied": 2, "skipped": 1, "failed": 0, "bytes": 300},
            {"repository": "b", "copied": 0, "skipped": 0, "failed": 2, "bytes": 0},
            {"repository": "c", "copied": "junk", "failed": True, "bytes": -5}]),
        table(fr, "traffic-mirror", traffic.rows())])
    assert figures is not None
    assert (figures.policy, figures.outcome, figures.seconds) == ("mirror", "failed", 90.0)
    assert (figures.copied, figures.skipped, figures.failed, figures.bytes) == (2, 1, 2, 300)
    assert figures.traffic == traffic


def test_only_ended_runs_count() -> None:
    assert _ended(flow_run(StateType.RUNNING, ["policy:p"], T0, None), None) is None
    assert _ended(flow_run(StateType.COMPLETED, ["policy:p"], T0, None), None) is None
    no_tag = _ended(flow_run(StateType.CANCELLED, [], T0, T0), None)
    assert no_tag is not None and (no_tag.policy, no_tag.outcome) == ("from-params", "stopped")


def test_traffic_rows_read_back_and_junk_is_left_out() -> None:
    traffic = Traffic(blobs_uploaded=1, blobs_mounted=9, registries={
        "source": RegistryTraffic(host="s:5000", responses={"200": 4, "error": 1}, holds=0),
        "target": RegistryTraffic(host="t:5000", responses={"202": 2}, holds=3)})
    rows = [*traffic.rows(), {"role": "elsewhere", "kind": "holds", "count": 5},
            {"role": "source", "kind": "responses", "key": "200", "count": -1},
            {"role": "target", "kind": "novel", "count": 2}]
    assert Traffic.from_rows(rows) == traffic


async def test_traffic_is_read_from_the_clients_counters() -> None:
    source = DistributionClient(Endpoint(url="http://127.0.0.1:1"))
    target = DistributionClient(Endpoint(url="http://127.0.0.1:2"))
    async with source, target:
        source.responses["200"] += 3
        target.responses.update({"201": 2, "429": 1})
        target.hold_for(0.0)  # no hold
        target.hold_for(0.01)
        blobs = BlobCopier(source, target)
        blobs.blobs_uploaded, blobs.blobs_mounted = 2, 5
        traffic = traffic_of(source, target, blobs)
    assert traffic.registries["source"].responses == {"200": 3}
    assert traffic.registries["target"] == RegistryTraffic(host="127.0.0.1:2", responses={"201": 2, "429": 1},
                                                           holds=1)
    assert (traffic.blobs_uploaded, traffic.blobs_mounted) == (2, 5)


class FakePrefect:
    """The two reads the collector makes, answering from lists; a seed query (by policy tag)
    gets ``seed``, the query of ended runs every run (the server's filter is not the point)."""

    def __init__(self, runs: list[FlowRun], artifacts: list[Artifact], seed: list[FlowRun]) -> None:
        self.runs, self.artifacts, self.seed, self.reads = runs, artifacts, seed, 0

    async def __aenter__(self) -> FakePrefect:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_flow_runs(self, *, flow_run_filter: object, limit: int, offset: int = 0,
                             **_: object) -> list[FlowRun]:
        self.reads += 1
        if getattr(flow_run_filter, "tags", None) is not None:
            return self.seed[:limit]
        return self.runs[offset:offset + limit]

    async def read_artifacts(self, *, artifact_filter: object, limit: int, offset: int) -> list[Artifact]:
        ids = set(artifact_filter.flow_run_id.any_)  # type: ignore[attr-defined]
        return [a for a in self.artifacts if a.flow_run_id in ids][offset:offset + limit]


async def test_each_run_counts_once_and_reads_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    old = flow_run(StateType.COMPLETED, ["policy:p"], T0 - timedelta(days=2), T0 - timedelta(days=1))
    new = flow_run(StateType.COMPLETED, ["policy:p"], T0, T0 + timedelta(seconds=30))
    prefect = FakePrefect([new], [table(new, "replication-p", [{"copied": 3, "bytes": 10}])], seed=[old])
    monkeypatch.setattr("deployments.metrics.get_client", lambda: prefect)
    collector = MetricsCollector(lambda: [PolicyState(name="p", trigger="scheduled")], cache_seconds=3600,
                                 since=T0)
    await collector.refresh()
    await collector.refresh()  # within the cache: no read
    reads = prefect.reads
    await collector.refresh(force=True)  # the same run again, inside the lookback
    assert prefect.reads > reads
    figures = collector.figures
    assert sample(figures, "regflow_tags_total", policy="p", result="copied") == 3
    assert sample(figures, "regflow_runs_total", policy="p", outcome="succeeded") == 1
    assert new.end_time is not None
    success = sample(figures, "regflow_policy_last_success_timestamp_seconds", policy="p")
    assert success == new.end_time.timestamp()
    assert sample(figures, "regflow_metrics_prefect_up") == 1
    assert sample(figures, "regflow_policy_enabled", policy="p", trigger="scheduled") == 1


async def test_the_policies_shown_are_the_stores_and_survive_its_failures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deployments.metrics.get_client", lambda: FakePrefect([], [], []))
    answers: list[list[PolicyState] | Exception] = [
        [PolicyState(name="a", enabled=False), PolicyState(name="b", trigger="event_based")],
        ConfigError("the store is locked"),
        [PolicyState(name="b", trigger="event_based")]]

    def policies() -> list[PolicyState]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    collector = MetricsCollector(policies, cache_seconds=0)
    await collector.refresh()
    assert sample(collector.figures, "regflow_policy_enabled", policy="a", trigger="manual") == 0
    assert sample(collector.figures, "regflow_policy_enabled", policy="b", trigger="event_based") == 1
    await collector.refresh()  # the store failed: the last answer stays
    assert sample(collector.figures, "regflow_policy_enabled", policy="a") == 0
    await collector.refresh()  # "a" was removed
    assert sample(collector.figures, "regflow_policy_enabled", policy="a") is None
    assert sample(collector.figures, "regflow_policy_enabled", policy="b") == 1


async def test_a_silent_prefect_leaves_the_last_figures_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    class Silent(FakePrefect):
        async def __aenter__(self) -> FakePrefect:
            await asyncio.sleep(3600)
            return self

    monkeypatch.setattr("deployments.metrics.get_client", lambda: Silent([], [], []))
    monkeypatch.setattr("deployments.metrics.READ_TIMEOUT_SECONDS", 0.2)
    collector = MetricsCollector(lambda: [PolicyState(name="p")], cache_seconds=0)
    collector.figures.count(run("p", "succeeded", T0, copied=2))
    text = await asyncio.wait_for(collector.exposition(), 5)
    assert b'regflow_tags_total{policy="p",result="copied"} 2.0' in text
    assert sample(collector.figures, "regflow_metrics_prefect_up") == 0


# -- the token and the endpoint ---------------------------------------------------------------

@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(METRICS_TOKEN_ENV, raising=False)
    return tmp_path / "home"


def test_the_token_file_is_made_once_private(home: Path) -> None:
    first = metrics_token()
    path = home / TOKEN_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.get_secret_value()
    assert len(first.get_secret_value()) >= 32
    assert metrics_token() == first


def test_a_token_file_open_to_others_is_refused(home: Path) -> None:
    metrics_token()
    path = home / TOKEN_FILE_NAME
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        metrics_token()
    assert path.read_text().strip() not in str(caught.value)
    path.chmod(0o640)  # the prometheus group may read it
    assert metrics_token().get_secret_value() == path.read_text().strip()


def test_the_variable_wins_and_a_weak_one_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS_TOKEN_ENV, "scrape-token-1234567890")
    assert metrics_token().get_secret_value() == "scrape-token-1234567890"
    assert not (home / TOKEN_FILE_NAME).exists()
    monkeypatch.setenv(METRICS_TOKEN_ENV, "short")
    with pytest.raises(ConfigError) as caught:
        metrics_token()
    assert "short" not in str(caught.value)


class _Fixed(MetricsCollector):
    """Figures set by the test; Prefect is not asked."""

    async def refresh(self, *, force: bool = False) -> None:
        self.refreshed = getattr(self, "refreshed", 0) + 1


TOKEN = "metrics-token-5c2e9a7b1d"


async def test_only_the_token_holder_gets_the_figures(caplog: pytest.LogCaptureFixture) -> None:
    collector = _Fixed(lambda: [])
    collector.figures.count(run("p", "succeeded", T0, copied=6))
    app = Starlette(routes=[metrics_route(collector, SecretStr(TOKEN))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "regflow_" not in refused.text
        assert getattr(collector, "refreshed", 0) == 0  # refused callers cost Prefect nothing
        answer = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'regflow_tags_total{policy="p",result="copied"} 6.0' in answer.text
    assert TOKEN not in caplog.text
