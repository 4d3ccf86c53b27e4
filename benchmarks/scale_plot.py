"""How a no-change resync grows with the number of repositories: a markdown table and a plot
image, drawn from the samples that ``benchmarks.sync --scale N`` appended to its results file.

    uv run python -m benchmarks.sync --scale 200 --pairs 1 --tools regflow-embedded
    uv run python -m benchmarks.sync --scale 2000 --pairs 1 --tools regflow-embedded
    uv run python -m benchmarks.sync --scale 10000 --pairs 1 --tools regflow-embedded
    uv run --group bench python -m benchmarks.scale_plot --out docs/scale-resync.png

For each scale the newest invocation counts (median of its samples per phase). Needs the
``bench`` dependency group (matplotlib) for the image; without it, the table alone is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import corpus

# Issue 21's bar for the largest scale: a no-change resync of 10,000 x 5 through the flow.
TARGET_REPOS, TARGET_SECONDS, TARGET_RSS_MIB = 10_000, 120.0, 400.0
PHASES = ("dry-run", "resync")


@dataclass
class Row:
    repos: int
    tags: int
    stamp: str
    wall: dict[str, float]
    cpu: dict[str, float]
    rss: dict[str, float]
    tree_rss: dict[str, float]
    load1: float


def read_rows(results: Path) -> list[Row]:
    """The newest invocation's samples per scale, medians per phase."""
    newest: dict[int, tuple[str, list[dict[str, object]]]] = {}
    for line in results.read_text().splitlines():
        sample = json.loads(line)
        name = str(sample.get("corpus", ""))
        if not name.startswith("scale-") or sample.get("phase") not in PHASES or sample.get("rc"):
            continue
        repos, stamp = int(name.removeprefix("scale-")), str(sample["ts"])
        kept = newest.get(repos)
        if kept is None or stamp > kept[0]:
            newest[repos] = (stamp, [sample])
        elif stamp == kept[0]:
            kept[1].append(sample)
    rows = []
    for repos, (stamp, samples) in sorted(newest.items()):
        def med(key: str, phase: str, samples: list[dict[str, object]] = samples) -> float:
            values = [float(s[key]) for s in samples if s["phase"] == phase]  # type: ignore[arg-type]
            return statistics.median(values) if values else float("nan")
        rows.append(Row(
            repos=repos, tags=corpus.estimate(corpus.scale_shape(repos)).tags, stamp=stamp,
            wall={p: med("wall", p) for p in PHASES}, cpu={p: med("cpu", p) for p in PHASES},
            rss={p: med("rss_mib", p) for p in PHASES},
            tree_rss={p: med("tree_rss_mib", p) for p in PHASES},
            load1=statistics.median(float(s["load1"]) for s in samples),  # type: ignore[arg-type]
        ))
    return rows


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| repositories | tags | dry-run wall s | dry-run peak RSS MiB | resync wall s | resync CPU s "
        "| resync peak RSS MiB (largest process / tree) | resync ms per tag | load1 | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_tag = 1000 * r.wall["resync"] / r.tags
        lines.append(
            f"| {r.repos:,} | {r.tags:,} | {r.wall['dry-run']:.1f} | {r.rss['dry-run']:.0f} "
            f"| {r.wall['resync']:.1f} | {r.cpu['resync']:.1f} | {r.rss['resync']:.0f} / "
            f"{r.tree_rss['resync']:.0f} | {per_tag:.2f} | {r.load1:.1f} | {r.stamp} |")
    return lines


def verdict(rows: list[Row]) -> str:
    top = next((r for r in rows if r.repos == TARGET_REPOS), None)
    if top is None:
        return f"no {TARGET_REPOS:,}-repository sample yet"
    wall, rss = top.wall["resync"], top.rss["resync"]
    return (f"{TARGET_REPOS:,} x 5 no-change resync: {wall:.1f} s (target <= {TARGET_SECONDS:.0f} s: "
            f"{'met' if wall <= TARGET_SECONDS else 'NOT met'}), peak RSS {rss:.0f} MiB (target <= "
            f"{TARGET_RSS_MIB:.0f} MiB: {'met' if rss <= TARGET_RSS_MIB else 'NOT met'})")


def draw(rows: list[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here: draw straight into the file
    import matplotlib.pyplot as plt

    repos = [r.repos for r in rows]
    fig, (time_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for phase, style in zip(PHASES, ("o--", "s-"), strict=True):
        time_ax.plot(repos, [r.wall[phase] for r in rows], style, label=f"{phase} wall")
        mem_ax.plot(repos, [r.rss[phase] for r in rows], style, label=f"{phase} peak RSS")
    time_ax.plot(repos, [r.cpu["resync"] for r in rows], "^:", label="resync CPU")
    time_ax.axhline(TARGET_SECONDS, color="grey", linewidth=0.8)
    mem_ax.axhline(TARGET_RSS_MIB, color="grey", linewidth=0.8)
    time_ax.set(xscale="log", yscale="log", xlabel="repositories (x 6 tags)", ylabel="seconds",
                title="no-change resync: time")
    mem_ax.set(xscale="log", xlabel="repositories (x 6 tags)", ylabel="MiB",
               title="no-change resync: memory")
    for ax in (time_ax, mem_ax):
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize="small")
    fig.text(0.5, 0.005, f"grey: issue 21's bar at {TARGET_REPOS:,} repositories", ha="center",
             fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("/tmp/regflow-bench-sync.jsonl"),
                    help="the results file benchmarks.sync appended to")
    ap.add_argument("--out", type=Path, default=Path("docs/scale-resync.png"), help="the plot image")
    args = ap.parse_args()
    if not args.results.is_file():
        print(f"{args.results}: no results yet; run benchmarks.sync --scale N first", file=sys.stderr)
        return 2
    rows = read_rows(args.results)
    if not rows:
        print(f"{args.results}: no --scale samples in it", file=sys.stderr)
        return 2
    print("\n".join(table(rows)))
    print(verdict(rows))
    try:
        draw(rows, args.out)
    except ImportError:
        print("matplotlib is missing: `uv sync --group bench`, then run this again for the image",
              file=sys.stderr)
        return 1
    print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
