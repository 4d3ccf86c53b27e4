"""The retention rule (flows/retention.expired), its settings in the config file, and serve's loop
around it, without a Prefect server (tests/integration/test_retention.py has the server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.objects import StateType

from adapters.errors import ConfigError
from flows.retention import (
    PolicyPrune,
    PrunedRun,
    PruneReport,
    RunFacts,
    expired,
    prune_periodically,
    summary,
)
from policies.config_file import load_config_file
from policies.models import (
    DEFAULT_KEEP_LAST,
    DEFAULT_RETENTION_DAYS,
    MAX_KEEP_LAST,
    MAX_RETENTION_DAYS,
    Policy,
    Retention,
    parse_config,
)
from policies.store import Store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FLOW = uuid4()


def run(name: str, days_ago: float | None, *, state: StateType = StateType.COMPLETED, policy: str = "p",
        flow: UUID = FLOW, run_id: UUID | None = None) -> RunFacts:
    return RunFacts(id=run_id or uuid4(), name=name, flow_id=flow, state=state,
                    tags=[f"policy:{policy}", "trigger:manual"],
                    end_time=None if days_ago is None else NOW - timedelta(days=days_ago))


def chosen(runs: list[RunFacts], days: int, keep_last: int, policy: str = "p") -> list[str]:
    return [r.name for r in expired(runs, flow_id=FLOW, policy=policy,
                                    retention=Retention(days=days, keep_last=keep_last), now=NOW)]


# ----------------------------------------------------------------------------------- the rule
def test_beyond_keep_last_and_older_than_days_both_needed():
    runs = [run(f"r{age}", age) for age in (1, 2, 5, 9, 11, 40)]
    # Newest 2 kept whatever their age; of the rest, only those older than 7 days go.
    assert chosen(runs, days=7, keep_last=2) == ["r9", "r11", "r40"]
    # keep_last alone protects old runs: the 5 newest stay although 9, 11 are old.
    assert chosen(runs, days=7, keep_last=5) == ["r40"]
    # days alone protects young ones beyond keep_last.
    assert chosen(runs, days=30, keep_last=1) == ["r40"]


def test_zero_means_that_limit_keeps_nothing():
    runs = [run(f"r{age}", age) for age in (1, 2, 3)]
    assert chosen(runs, days=0, keep_last=1) == ["r2", "r3"]  # Harbor's rule: the newest N only
    assert chosen(runs, days=2, keep_last=0) == ["r3"]  # age only


def test_unfinished_runs_are_never_chosen_nor_counted():
    runs = [
        run("running", 50, state=StateType.RUNNING),
        run("scheduled", 50, state=StateType.SCHEDULED),
        run("pending", 50, state=StateType.PENDING),
        run("paused", 50, state=StateType.PAUSED),
        run("cancelling", 50, state=StateType.CANCELLING),
        run("done", 20),
        run("failed", 30, state=StateType.FAILED),
        run("crashed", 31, state=StateType.CRASHED),
        run("cancelled", 32, state=StateType.CANCELLED),
    ]
    # keep_last 1 is taken by "done", not by a newer-looking unfinished run.
    assert chosen(runs, days=10, keep_last=1) == ["failed", "crashed", "cancelled"]


def test_other_policies_flows_and_runs_without_end_time_are_left_alone():
    runs = [run("mine-new", 1), run("mine-old", 90), run("other-policy", 90, policy="q"),
            run("other-flow", 90, flow=uuid4()), run("no-end", None)]
    assert chosen(runs, days=7, keep_last=1) == ["mine-old"]
    assert chosen(runs, days=7, keep_last=0, policy="q") == ["other-policy"]
    untagged = run("untagged", 90).model_copy(update={"tags": ["trigger:manual"]})
    assert chosen([untagged], days=1, keep_last=0) == []
    # A tag that merely starts like the policy's is another policy.
    assert chosen([run("prefix", 90, policy="p-2")], days=1, keep_last=0) == []


def test_cutoff_is_strict_and_ties_break_by_id():
    at_cutoff = run("at-cutoff", 7)
    assert chosen([at_cutoff], days=7, keep_last=0) == []
    assert chosen([run("just-older", 7 + 1e-6)], days=7, keep_last=0) == ["just-older"]
    low, high = UUID(int=1), UUID(int=2)
    same = [run("low", 20, run_id=low), run("high", 20, run_id=high)]
    assert chosen(same, days=1, keep_last=1) == ["low"]
    assert chosen(list(reversed(same)), days=1, keep_last=1) == ["low"]


def test_order_of_input_does_not_matter():
    runs = [run(f"r{age}", age) for age in (3, 1, 40, 2, 12)]
    assert chosen(runs, days=5, keep_last=2) == ["r12", "r40"]


# ------------------------------------------------------------------------------ the settings
CONFIG = {"version": 1, "registries": [], "policies": [
    {"name": "a", "src_registry": "s", "dest_registry": "d"},
    {"name": "b", "src_registry": "s", "dest_registry": "d", "retention": {"days": 3}}]}


def test_defaults_top_level_and_field_by_field_override():
    assert (DEFAULT_RETENTION_DAYS, DEFAULT_KEEP_LAST) == (30, 100)
    plain = parse_config(CONFIG)
    assert [p.retention for p in plain.policies] == [Retention(days=30, keep_last=100),
                                                     Retention(days=3, keep_last=100)]
    filed = parse_config(CONFIG | {"retention": {"days": 7, "keep_last": 5}})
    assert [p.retention for p in filed.policies] == [Retention(days=7, keep_last=5),
                                                     Retention(days=3, keep_last=5)]
    assert parse_config(CONFIG | {"retention": None}).policies[0].retention == Retention()
    assert Policy(name="x", src_registry="s", dest_registry="d").retention == Retention()


@pytest.mark.parametrize(("retention", "message"), [
    ({"days": -1}, "retention.days: -1 is not 0 (only keep_last keeps) to 36500 days"),
    ({"days": MAX_RETENTION_DAYS + 1}, "retention.days: 36501 is not 0"),
    ({"keep_last": -2}, "retention.keep_last: -2 is not 0 (only days keeps) to 10000 executions"),
    ({"keep_last": MAX_KEEP_LAST + 1}, "retention.keep_last: 10001 is not 0"),
    ({"days": 0, "keep_last": 0}, "retention: days 0 and keep_last 0 would delete every finished execution"),
    ({"days": True}, "retention.days: Input should be a valid integer"),
    ({"days": 7.5}, "retention.days: Input should be a valid integer"),
    ({"days": "30"}, "retention.days: Input should be a valid integer"),
    ({"weeks": 2}, "retention.weeks: Extra inputs are not permitted"),
    ("30d", "retention: Input should be a valid dictionary"),
])
def test_bad_values_are_one_line_naming_the_field(retention, message):
    for config, where in ((CONFIG | {"retention": retention}, ""),
                          ({**CONFIG, "policies": [{**CONFIG["policies"][0], "retention": retention}]},
                           "policies[0].")):
        with pytest.raises(ConfigError) as caught:
            parse_config(config)
        text = str(caught.value)
        assert "\n" not in text
        assert text.startswith(where + message), text


def test_a_policy_and_the_file_together_may_not_keep_nothing():
    config = CONFIG | {"retention": {"days": 0, "keep_last": 5},
                       "policies": [{**CONFIG["policies"][0], "retention": {"keep_last": 0}}]}
    with pytest.raises(ConfigError, match=r"^policies\[0\] \('a'\)\.retention: days 0 and keep_last 0"):
        parse_config(config)


def test_retention_is_stored_with_the_policy(tmp_path: Path):
    path = tmp_path / "regflow.yaml"
    path.write_text("""\
version: 1
retention: {days: 14}
registries:
  - {name: src, type: docker-registry, url: "http://127.0.0.1:5000"}
  - {name: dst, type: docker-registry, url: "http://127.0.0.1:5001"}
policies:
  - {name: a, src_registry: src, dest_registry: dst, dest_namespace: m}
  - {name: b, src_registry: src, dest_registry: dst, dest_namespace: m, retention: {keep_last: 7}}
""")
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.apply(load_config_file(path))
        assert store.policy("a").retention == Retention(days=14, keep_last=100)
        assert store.policy("b").retention == Retention(days=14, keep_last=7)
        assert store.public_view(store.policy("b"))["retention"] == {"days": 14, "keep_last": 7}
        again = store.apply(load_config_file(path))
        assert not again.changed and "policy a" in again.unchanged


# ------------------------------------------------------------------------- serve's loop
class _Store:
    def __init__(self, problem: Exception | None = None) -> None:
        self.calls = 0
        self.problem = problem

    def policies(self) -> list[Policy]:
        self.calls += 1
        if self.problem:
            raise self.problem
        return []


async def test_loop_stops_before_its_first_sweep():
    stopping = asyncio.Event()
    store = _Store()
    task = asyncio.create_task(prune_periodically(store, stopping, first_delay=30, interval=30))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    stopping.set()
    await asyncio.wait_for(task, 2)
    assert store.calls == 0


async def test_loop_reports_a_bad_store_and_goes_on(capsys):
    stopping = asyncio.Event()
    store = _Store(ConfigError("the stored policy 'a' no longer validates"))
    task = asyncio.create_task(prune_periodically(store, stopping, first_delay=0, interval=0.05))  # type: ignore[arg-type]
    for _ in range(100):
        if store.calls >= 2:
            break
        await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(task, 2)
    assert store.calls >= 2
    assert "retention: the stored policy 'a' no longer validates" in capsys.readouterr().out


def test_summary_line():
    gone = PrunedRun(id="1", name="a-manual-1", state="COMPLETED", end_time="2026-01-01T00:00:00+00:00")
    report = PruneReport(dry_run=False, policies=[
        PolicyPrune(policy="a", days=1, keep_last=1, executions=[gone, gone]),
        PolicyPrune(policy="b", days=1, keep_last=1),
        PolicyPrune(policy="c", days=1, keep_last=1, error="Prefect API: boom")])
    assert summary(report) == "retention: deleted 2 execution(s) (a 2); failed: c: Prefect API: boom"
    assert report.failed and report.deleted == 2
    assert summary(PruneReport(dry_run=True)) == "retention: would delete 0 execution(s)"
