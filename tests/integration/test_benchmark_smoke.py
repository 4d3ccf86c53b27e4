"""CI runs the benchmark's smoke version: both tools copy the same tiny corpus, every tag
digest is verified, and the report is printed. No timing claims here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_copies_and_verifies_with_both_tools(testbed_binaries):
    result = subprocess.run([sys.executable, "-m", "benchmarks.sync", "--smoke"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "regflow-server   full" in out and "skopeo           full" in out
    assert "bad_tags=0" in out and "bad_tags=1" not in out
