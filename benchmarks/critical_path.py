"""The requests of one regflow run, from the traces its registry clients wrote
(``REGFLOW_TRACE_DIR``, adapters/distribution/trace.py): how many of each kind went to each side,
and the longest chain of requests that followed one another, each sent only after the one
before had its answer.

The chain is read from the times alone: a longest sequence of requests in which each starts
after the previous one's answer came back. A request that merely happened to follow another
counts too, so it is an upper bound of the round trips the run had to wait for one after the
other; with a known round trip it says how much of the wall time waiting can explain.

    uv run python -m benchmarks.critical_path DIR
"""

from __future__ import annotations

import argparse
import bisect
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from adapters.distribution.trace import TracedRequest, read_traces


@dataclass
class CriticalPath:
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # "<host> <METHOD> <kind>" -> count
    longest_chain: int = 0
    # The chain's requests' own durations added up, and the wall time the trace spans.
    chain_seconds: float = 0.0
    span_seconds: float = 0.0

    def line(self) -> str:
        return (f"requests={self.requests} chain={self.longest_chain} "
                f"chain_s={self.chain_seconds:.2f} span_s={self.span_seconds:.2f}")


def longest_chain(requests: list[TracedRequest]) -> list[TracedRequest]:
    """A longest sequence of requests each sent after the previous one's answer (ties: the
    one that ended first), by dynamic programming over the requests in order of their answers."""
    ordered = sorted(requests, key=lambda r: (r.end, r.start))
    ends = [r.end for r in ordered]
    best_len = [0] * len(ordered)
    back = [-1] * len(ordered)
    # The best chain ending at or before each index: (length, index), a running maximum.
    prefix: list[tuple[int, int]] = []
    for i, request in enumerate(ordered):
        before = bisect.bisect_right(ends, request.start, hi=i) - 1
        length, previous = prefix[before] if before >= 0 else (0, -1)
        best_len[i], back[i] = length + 1, previous
        keep = bool(prefix) and prefix[-1][0] >= best_len[i]  # equal length: the earlier end
        prefix.append(prefix[-1] if keep else (best_len[i], i))
    if not ordered:
        return []
    chain, i = [], prefix[-1][1]
    while i != -1:
        chain.append(ordered[i])
        i = back[i]
    return chain[::-1]


def summarize(requests: list[TracedRequest]) -> CriticalPath:
    if not requests:
        return CriticalPath()
    chain = longest_chain(requests)
    kinds = Counter(f"{r.host} {r.method} {r.kind}" for r in requests)
    return CriticalPath(requests=len(requests), by_kind=dict(sorted(kinds.items())), longest_chain=len(chain),
                        chain_seconds=sum(r.end - r.start for r in chain),
                        span_seconds=max(r.end for r in requests) - min(r.start for r in requests))


def summarize_directory(directory: Path) -> CriticalPath:
    return summarize(read_traces(directory)) if directory.is_dir() else CriticalPath()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", type=Path)
    args = ap.parse_args()
    path = summarize_directory(args.directory)
    print(path.line())
    for kind, count in path.by_kind.items():
        print(f"  {count:6d}  {kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
