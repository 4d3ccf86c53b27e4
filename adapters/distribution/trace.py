"""An optional record of every request a registry client sends: when it left, when its answer's
headers came back, what it asked for and what came back. Off unless ``REGFLOW_TRACE_DIR`` names
a directory; each client then writes one tab-separated file there when it is closed. The
benchmarks read them to count requests per kind and the longest chain of round trips that
followed one another (benchmarks/critical_path.py).

Times are the wall clock (``time.time()``), so files from several processes of one execution (a
spread execution's parts) line up.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

TRACE_DIR_ENV = "REGFLOW_TRACE_DIR"
# The file's columns, in order.
COLUMNS = ("start", "end", "host", "method", "kind", "status", "bulk")

_KINDS = (
    (re.compile(r"/v2/?$"), "ping"),
    (re.compile(r"/v2/_catalog$"), "catalog"),
    (re.compile(r"/tags/list$"), "tags"),
    (re.compile(r"/manifests/[^/]+$"), "manifest"),
    (re.compile(r"/blobs/uploads/?[^/]*$"), "upload"),
    (re.compile(r"/blobs/[^/]+$"), "blob"),
    (re.compile(r"/referrers/[^/]+$"), "referrers"),
)


def request_kind(path: str) -> str:
    """What a registry request path asks for: ping, catalog, tags, manifest, upload, blob,
    referrers, or other (a vendor's own API). Token fetches are traced as ``token``."""
    for pattern, kind in _KINDS:
        if pattern.search(path):
            return kind
    return "other"


@dataclass(frozen=True)
class TracedRequest:
    start: float
    end: float
    host: str
    method: str
    kind: str
    status: str  # the HTTP status, or the exception's name when no answer came
    bulk: bool  # it carried a blob's bytes (the HTTP/1.1 connections)

    def row(self) -> str:
        return "\t".join((f"{self.start:.6f}", f"{self.end:.6f}", self.host, self.method, self.kind,
                          self.status, "1" if self.bulk else "0"))

    @classmethod
    def parse(cls, line: str) -> TracedRequest:
        start, end, host, method, kind, status, bulk = line.rstrip("\n").split("\t")
        return cls(float(start), float(end), host, method, kind, status, bulk == "1")


class RequestTrace:
    def __init__(self, directory: Path, host: str) -> None:
        self.directory = directory
        self.host = host
        self.requests: list[TracedRequest] = []

    @classmethod
    def from_environment(cls, host: str) -> RequestTrace | None:
        directory = os.environ.get(TRACE_DIR_ENV, "").strip()
        return cls(Path(directory), host) if directory else None

    def add(self, started: float, method: str, path: str, status: str, *, bulk: bool,
            kind: str | None = None) -> None:
        """``kind``: for a request whose path says nothing (a token service's realm is any URL)."""
        self.requests.append(TracedRequest(started, time.time(), self.host, method,
                                           kind or request_kind(path), status, bulk))

    def write(self) -> Path | None:
        """One file per client: ``<pid>-<host>-<id>.tsv``. A trace that cannot be written is
        left out: it is a measurement, never a reason to fail a run."""
        if not self.requests:
            return None
        name = re.sub(r"[^A-Za-z0-9.-]", "-", self.host)
        path = self.directory / f"{os.getpid()}-{name}-{id(self):x}.tsv"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(r.row() + "\n" for r in self.requests))
        except OSError:
            return None
        return path


def read_traces(directory: Path) -> list[TracedRequest]:
    return [TracedRequest.parse(line) for path in sorted(directory.glob("*.tsv"))
            for line in path.read_text().splitlines() if line.strip()]
