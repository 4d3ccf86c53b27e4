"""The pieces of a spread execution that need no server: how transfers are split into parts,
how a part's results travel through its artifact and back, and how traffic adds up."""

from __future__ import annotations

import pytest

from adapters.errors import ReplicationError
from flows import liveness
from flows.part import read_result_rows, result_rows
from flows.spread import split
from policies.models import MAX_SPREAD, Policy
from tasks.models import RegistryTraffic, TagOutcome, TagPlan, Traffic, TransferResult, TransferSpec

DIGEST = "sha256:" + "b" * 64


def spec(name: str, tags: int) -> TransferSpec:
    return TransferSpec(source_repository=name, target_repository=name,
                        tags=[TagPlan(tag=f"t{i}", digest=DIGEST) for i in range(tags)])


def test_parts_are_balanced_by_tags_and_hold_every_spec_once():
    specs = [spec("big", 6), *(spec(f"r{i}", 1) for i in range(6)), spec("mid", 3)]

    shares = split(specs, 3)

    assert sorted(s.source_repository for share in shares for s in share) == sorted(
        s.source_repository for s in specs)
    loads = sorted(sum(len(s.tags) for s in share) for share in shares)
    assert loads == [4, 5, 6]  # 15 tags: the big repository alone, the rest within one tag


def test_never_more_parts_than_repositories():
    assert len(split([spec("a", 1), spec("b", 1)], 8)) == 2
    assert split([], 4) == []


def test_spread_is_bounded_like_other_limits():
    assert Policy(name="p", src_registry="s", dest_registry="d", spread=4).spread == 4
    for bad in (0, MAX_SPREAD + 1, "3"):
        with pytest.raises(ValueError):
            Policy(name="p", src_registry="s", dest_registry="d", spread=bad)


def test_a_parts_results_read_back_whole_with_their_transient_flags():
    copied = TransferResult(source_repository="app/a", target_repository="mirror/app/a", bytes=42, seconds=1,
                            tags=[TagOutcome(tag="1", digest=DIGEST, status="copied", bytes=42),
                                  TagOutcome(tag="2", digest=DIGEST, status="failed", reason="503",
                                             transient=True)])
    results: dict[str, TransferResult | BaseException] = {
        "app/a": copied, "app/b": ReplicationError("not started: stopped by user"),
        "app/c": ReplicationError("registry down", transient=True)}

    rows = result_rows(results, begun={"app/a", "app/c"})
    back = read_result_rows(rows)

    assert back["app/a"] == copied
    assert [t.transient for t in back["app/a"].tags] == [False, True]  # excluded from dumps, kept here
    assert back["app/a"].retryable
    assert isinstance(back["app/c"], ReplicationError) and back["app/c"].transient
    assert "registry down" in str(back["app/c"])
    assert [r["started"] for r in rows] == [True, False, True]


def test_traffic_of_parts_adds_up():
    mine = Traffic(blobs_uploaded=1, registries={"source": RegistryTraffic(host="s", responses={"200": 3})})
    part = Traffic(blobs_uploaded=2, blobs_mounted=1, registries={
        "source": RegistryTraffic(host="s", responses={"200": 4, "429": 1}, holds=1),
        "target": RegistryTraffic(host="t", responses={"201": 2})})

    total = mine.plus(part)

    assert (total.blobs_uploaded, total.blobs_mounted) == (3, 1)
    assert total.registries["source"].responses == {"200": 7, "429": 1}
    assert total.registries["source"].holds == 1
    assert total.registries["target"] == RegistryTraffic(host="t", responses={"201": 2})
    assert mine.blobs_uploaded == 1  # neither side changed


def test_silence_windows_come_from_the_environment_within_bounds(monkeypatch):
    monkeypatch.setenv(liveness.HEARTBEAT_ENV, "2")
    monkeypatch.setenv(liveness.SILENCE_ENV, "10")
    assert liveness._windows() == (2, 10)
    defaults = (liveness.DEFAULT_HEARTBEAT_SECONDS, liveness.DEFAULT_SILENCE_SECONDS)
    monkeypatch.setenv(liveness.SILENCE_ENV, "8")  # under Prefect's floor for a proactive trigger
    assert liveness._windows() == defaults
    monkeypatch.setenv(liveness.HEARTBEAT_ENV, "5")
    monkeypatch.setenv(liveness.SILENCE_ENV, "12")  # under three heartbeats: one late event would crash
    assert liveness._windows() == defaults
    monkeypatch.setenv(liveness.HEARTBEAT_ENV, "soon")
    assert liveness._windows() == defaults
