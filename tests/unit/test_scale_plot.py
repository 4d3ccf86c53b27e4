"""The scale table behind docs/scale-resync.png: the newest invocation per scale counts, failed
runs and other corpora do not, and the verdict reads the 10,000-repository row."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.scale_plot import read_rows, table, verdict


def sample(ts: str, corpus: str, phase: str, wall: float, rss: float = 100.0, rc: int = 0) -> str:
    return json.dumps({"ts": ts, "corpus": corpus, "tool": "regflow", "phase": phase, "pair": 1,
                       "wall": wall, "cpu": wall / 2, "rss_mib": rss, "tree_rss_mib": rss + 1,
                       "load1": 2.0, "rc": rc})


def test_the_newest_run_per_scale_counts_and_failures_do_not(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("\n".join([
        sample("2026-12-07T10:00:00", "scale-200", "dry-run", 9.0),       # older invocation
        sample("2026-12-07T11:00:00", "scale-200", "dry-run", 5.0),
        sample("2026-12-07T11:00:00", "scale-200", "dry-run", 7.0),
        sample("2026-12-07T11:00:00", "scale-200", "resync", 8.0),
        sample("2026-12-07T11:00:00", "scale-200", "resync", 99.0, rc=1),  # a failed run
        sample("2026-12-07T12:00:00", "medium", "resync", 6.0),           # not a scale corpus
        sample("2026-12-07T12:00:00", "scale-10000", "dry-run", 200.0),
        sample("2026-12-07T12:00:00", "scale-10000", "resync", 130.0, rss=380.0),
    ]) + "\n")

    rows = read_rows(results)

    assert [(r.repos, r.tags) for r in rows] == [(200, 1200), (10_000, 60_000)]
    assert rows[0].wall == {"dry-run": 6.0, "resync": 8.0}
    assert len(table(rows)) == 2 + len(rows)
    assert "130.0 s (target <= 120 s: NOT met)" in verdict(rows)
    assert "380 MiB (target <= 400 MiB: met)" in verdict(rows)
    assert verdict(rows[:1]) == "no 10,000-repository sample yet"
