"""`regflow serve` keeps its deployments in step with the store; a pass that Prefect refuses
(its database locked, the server restarting) is reported and tried again, never the loop's end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployments import serve
from deployments.sync import SyncReport


async def test_a_failed_sync_is_reported_and_the_next_pass_syncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    service = serve.Service("127.0.0.1", 0, sync_seconds=0.01)
    calls = 0

    async def flaky(policies: list[object]) -> SyncReport:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database is locked")
        service._stopping.set()
        return SyncReport()

    monkeypatch.setattr(serve, "sync_deployments", flaky)
    await asyncio.wait_for(service.keep_deployments_current(), 10)

    assert calls == 2
    out = capsys.readouterr().out
    assert "deployments: not synced (RuntimeError: database is locked); trying again in 0.01 s" in out
    assert "deployments: applied -, deleted -" in out
