"""The per-tag table of an execution (flows/details.py, ``regflow executions show``): a tag whose
target digest is not the source's (an index rewritten for the policy's platforms) shows both."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from adapters.oci import Digest
from flows.details import tag_rows
from regflow_cli.runs import tag_table
from tasks.models import TagOutcome
from tasks.summary import Execution, TaskSummary

SOURCE, REWRITTEN = Digest.of(b"source index"), Digest.of(b"rewritten index")


def execution(*outcomes: TagOutcome) -> Execution:
    task = TaskSummary(source="app", target="mirror/app", status="Succeeded", tags=list(outcomes), copied=1,
                       skipped=0, failed=0, bytes=0, seconds=0.0)
    return Execution(policy="p", status="Succeeded", message="", total=1, succeed=1, failed=0, stopped=0,
                     tasks=[task])


def test_rows_carry_the_pushed_digest_only_where_it_differs() -> None:
    rows = tag_rows(execution(
        TagOutcome(tag="1.0", digest=SOURCE, pushed_digest=REWRITTEN, status="copied",
                   reason=f"index rewritten for linux/amd64: {REWRITTEN}"),
        TagOutcome(tag="2.0", digest=SOURCE, status="copied"),
        TagOutcome(tag="3.0", digest=SOURCE, pushed_digest=REWRITTEN, status="skipped",
                   reason="identical on target")))  # not listed, as every identical tag
    assert [(r["tag"], r["digest"], r["pushed_digest"]) for r in rows] == [
        ("1.0", str(SOURCE), str(REWRITTEN)), ("2.0", str(SOURCE), "")]


def rendered(records: list[SimpleNamespace]) -> str:
    console = Console(width=250, record=True)
    console.print(tag_table(records))  # type: ignore[arg-type]
    return console.export_text()


def record(tag: str, pushed: str = "") -> SimpleNamespace:
    return SimpleNamespace(repository="app", tag=tag, status="copied", digest=str(SOURCE),
                           pushed_digest=pushed, reason="")


def test_the_table_has_a_pushed_column_only_when_a_tag_needs_one() -> None:
    plain = rendered([record("2.0")])
    assert "pushed" not in plain and str(SOURCE)[:19] in plain
    both = rendered([record("1.0", str(REWRITTEN)), record("2.0")])
    header, first = [line for line in both.splitlines() if "pushed" in line or "1.0" in line][:2]
    assert "pushed" in header and str(SOURCE)[:19] in first and str(REWRITTEN)[:19] in first
