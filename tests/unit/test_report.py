"""The failed-images report: what goes in it, what a retry takes from it, the file a user hands
back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.errors import ConfigError, ReplicationError, TransportError
from adapters.oci import Digest
from tasks.models import TagOutcome, TransferResult
from tasks.plan import Plan, PlannedRepository, PlannedTag
from tasks.report import FailedImagesReport, build_report, read_report_file, write_report_file

D1, D2, D3 = (Digest.of(x) for x in (b"one", b"two", b"three"))


def planned(repository: str, *tags: tuple[str, Digest, str], error: str = "") -> PlannedRepository:
    return PlannedRepository(source_repository=repository, target_repository=f"m/{repository}",
                             tags=[PlannedTag(tag=t, digest=d, target_digest=None, action=a)  # type: ignore[arg-type]
                                   for t, d, a in tags], error=error,
                             error_class="PermissionDeniedError" if error else "")


def test_failed_stopped_unstarted_and_unplanned_images_each_say_why() -> None:
    plan = Plan(repositories=[
        planned("ok", ("1", D1, "copy")),
        planned("mixed", ("1", D1, "copy"), ("2", D2, "copy"), ("3", D3, "identical")),
        planned("late", ("1", D1, "copy"), ("2", D2, "identical")),
        planned("denied", error="listing denied"),
    ])
    results: dict[str, TransferResult | BaseException] = {
        "ok": TransferResult(source_repository="ok", target_repository="m/ok",
                             tags=[TagOutcome(tag="1", digest=D1, status="copied")]),
        "mixed": TransferResult(source_repository="mixed", target_repository="m/mixed", tags=[
            TagOutcome(tag="1", digest=D1, status="failed", reason="TransportError: reset", transient=True),
            TagOutcome(tag="2", digest=D2, status="stopped", reason="stopped by user")]),
        "late": ReplicationError("not started: stopped by user"),
    }
    report = build_report("p", plan, results, source_host="src:5000", target_host="dst:5000", stopped=True)

    rows = [(i.source_repository, i.tag, i.digest, i.status, i.error_class, i.transient)
            for i in report.images]
    assert rows == [
        ("mixed", "1", D1, "failed", "TransportError", True),
        ("mixed", "2", D2, "stopped", "CancelledReplication", True),
        ("late", "1", D1, "stopped", "CancelledReplication", True),  # its identical tag is not there
        ("denied", None, None, "failed", "PermissionDeniedError", False),
    ]
    first = report.images[0]
    assert (first.source, first.target) == (f"src:5000/mixed:1@{D1}", "dst:5000/m/mixed:1")
    assert report.images[3].source == "src:5000/denied" and report.images[3].reason == "listing denied"


def test_a_transfer_that_broke_without_a_stop_fails_each_planned_tag_with_its_class() -> None:
    plan = Plan(repositories=[planned("app", ("1", D1, "copy"), ("2", D2, "overwrite"))])
    report = build_report("p", plan, {"app": TransportError("connection reset")}, source_host="s",
                          target_host="t", stopped=False)
    assert [(i.tag, i.status, i.error_class, i.transient, i.reason) for i in report.images] == [
        ("1", "failed", "TransportError", True, "connection reset"),
        ("2", "failed", "TransportError", True, "connection reset")]


def test_a_retry_takes_each_tag_at_its_digest_and_a_whole_repository_when_no_tag_was_known() -> None:
    plan = Plan(repositories=[planned("a", ("1", D1, "copy"), ("2", D2, "copy")), planned("b", error="x")])
    results: dict[str, TransferResult | BaseException] = {"a": ReplicationError("not started")}
    report = build_report("p", plan, results, source_host="s", target_host="t", stopped=True)
    resources, pins = report.retry_selection()
    assert [(r.repository, r.tag) for r in resources] == [("b", None), ("a", "1"), ("a", "2")]
    assert pins == {"a": {"1": D1, "2": D2}}


def test_the_file_round_trips_and_anything_else_is_one_line_of_bad_input(tmp_path: Path) -> None:
    plan = Plan(repositories=[planned("a", ("1", D1, "copy"))])
    report = build_report("p", plan, {"a": ReplicationError("boom")}, source_host="s", target_host="t",
                          stopped=False)
    report.execution_id = "0b1c"
    path = tmp_path / "r.json"
    write_report_file(report, path)
    assert json.loads(path.read_text())["version"] == 1
    assert read_report_file(path) == report

    path.write_text('{"policy": "p", "created": "2026-01-01T00:00:00Z", "images": [{"tag": 1}]}')
    with pytest.raises(ConfigError, match=r"r.json is not a failed-images report: images.0") as bad:
        read_report_file(path)
    assert "\n" not in str(bad.value)
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not a failed-images report"):
        read_report_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_report_file(tmp_path / "missing.json")
    empty = FailedImagesReport(policy="p", created=datetime.now(UTC))
    assert empty.retry_selection() == ([], {})


async def test_an_untagged_image_is_written_by_digest_and_a_retry_from_the_file_takes_it_again(
        tmp_path: Path) -> None:
    """An untagged manifest travels under its digest where a tag would stand (tasks/discover.py):
    the report names it ``host/repo@<digest>``, and the file read back selects that digest."""
    from adapters.endpoint import Endpoint
    from adapters.native import NativeAdapter
    from policies.models import Policy
    from tasks.discover import discover

    untagged = str(D2)
    plan = Plan(repositories=[planned("app", ("1", D1, "copy"), (untagged, D2, "copy"))])
    results: dict[str, TransferResult | BaseException] = {
        "app": TransferResult(source_repository="app", target_repository="m/app", tags=[
            TagOutcome(tag="1", digest=D1, status="failed", reason="TransportError: reset", transient=True),
            TagOutcome(tag=untagged, digest=D2, status="failed", reason="TransportError: reset",
                       transient=True)])}
    report = build_report("p", plan, results, source_host="src:5000", target_host="dst:5000", stopped=False)
    assert [(i.source, i.target) for i in report.images] == [
        (f"src:5000/app:1@{D1}", "dst:5000/m/app:1"),
        (f"src:5000/app@{D2}", f"dst:5000/m/app@{D2}")]

    path = tmp_path / "report.json"
    write_report_file(report, path)
    resources, pins = read_report_file(path).retry_selection()  # what `executions retry --from-report` runs
    assert [(r.repository, r.tag) for r in resources] == [("app", "1"), ("app", untagged)]
    assert pins == {"app": {"1": D1, untagged: D2}}

    class Source(NativeAdapter):
        async def list_tags(self, repository: str) -> list[str]:
            return ["1", "2"]

    source = Source(Endpoint(url="http://reg.test"))
    try:
        [found] = await discover(source, Policy(name="p", src_registry="s", dest_registry="d"), resources)
    finally:
        await source.aclose()
    assert (found.repository, found.tags) == ("app", ["1", untagged])
