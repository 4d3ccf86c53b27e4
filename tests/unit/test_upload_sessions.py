"""Upload sessions as rows of the store (SQLite here; PostgreSQL in
tests/integration/test_store_postgres.py): one row per session, written on its own, expired
after UPLOAD_SESSION_MAX_AGE, and never lost to another run writing its own."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policies.store import UPLOAD_SESSION_MAX_AGE, Store, UploadSession
from tasks.sessions import UploadSessions

TARGET = "http://127.0.0.1:5001"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGFLOW_DATABASE_URL", raising=False)
    return tmp_path / "home"


def rows(home: Path) -> list[tuple[str, str, str, str, int]]:
    with closing(sqlite3.connect(home / "regflow.db")) as db:
        return db.execute("SELECT target, repository, digest, location, offset FROM upload_sessions "
                          "ORDER BY target, repository, digest").fetchall()


def test_a_session_row_round_trip(home: Path) -> None:
    with Store() as store:
        assert store.upload_session(TARGET, "app", DIGEST) is None
        store.save_upload_session(TARGET, "app", DIGEST, UploadSession(location="/u/1?_state=a", offset=64))
        store.save_upload_session(TARGET, "app", DIGEST, UploadSession(location="/u/1?_state=b", offset=128))
        assert store.upload_session(TARGET, "app", DIGEST) == UploadSession(location="/u/1?_state=b",
                                                                             offset=128)
        assert store.upload_session(TARGET, "other", DIGEST) is None
        assert store.upload_session("http://elsewhere", "app", DIGEST) is None
        assert rows(home) == [(TARGET, "app", DIGEST, "/u/1?_state=b", 128)]
        store.drop_upload_session(TARGET, "app", DIGEST)
        store.drop_upload_session(TARGET, "app", DIGEST)  # twice is harmless
        assert store.upload_session(TARGET, "app", DIGEST) is None
        assert rows(home) == []


def test_a_stale_session_is_not_offered_and_is_expired(home: Path) -> None:
    with Store() as store:
        store.save_upload_session(TARGET, "old", DIGEST, UploadSession(location="/u/old", offset=1))
        store.save_upload_session(TARGET, "new", DIGEST, UploadSession(location="/u/new", offset=2))
        stale = (datetime.now(UTC) - UPLOAD_SESSION_MAX_AGE).replace(tzinfo=None) \
            .strftime("%Y-%m-%d %H:%M:%S.%f")
        with closing(sqlite3.connect(home / "regflow.db")) as db, db:
            db.execute("UPDATE upload_sessions SET updated_at = ? WHERE repository = 'old'", (stale,))
        assert store.upload_session(TARGET, "old", DIGEST) is None
        assert store.upload_session(TARGET, "new", DIGEST) is not None
        assert store.expire_upload_sessions() == 1
        assert [r[1] for r in rows(home)] == ["new"]


def test_runs_writing_at_once_to_one_target_keep_each_others_sessions(home: Path) -> None:
    """Each run has its own store connection (as separate processes would), on a store none of
    them has created yet; every save and drop touches one row, so none can undo another run's."""

    def run(name: str) -> None:
        with Store() as store:
            for i in range(20):
                store.save_upload_session(TARGET, name, f"sha256:{i:064x}",
                                          UploadSession(location=f"/{name}/{i}", offset=i))
                if i % 4 == 0:
                    store.drop_upload_session(TARGET, name, f"sha256:{i:064x}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, ["run-a", "run-b", "run-c", "run-d"]))
    saved = rows(home)
    assert len(saved) == 4 * 15
    assert {(r[1], r[3]) for r in saved} == {(n, f"/{n}/{i}") for n in ("run-a", "run-b", "run-c", "run-d")
                                             for i in range(20) if i % 4}


async def test_upload_sessions_keep_one_target_apart_from_another(home: Path) -> None:
    with Store() as store:
        one, two = UploadSessions(TARGET, store), UploadSessions("https://other.example", store)
        await one.put("app", DIGEST, UploadSession(location="/1", offset=10))
        await two.put("app", DIGEST, UploadSession(location="/2", offset=20))
        # Another worker sharing the store sees what this one saved.
        with Store() as elsewhere:
            assert await UploadSessions(TARGET, elsewhere).get("app", DIGEST) == UploadSession(location="/1",
                                                                                               offset=10)
        await one.drop("app", DIGEST)
        assert await one.get("app", DIGEST) is None
        assert await two.get("app", DIGEST) == UploadSession(location="/2", offset=20)


async def test_without_a_store_sessions_stay_in_memory(home: Path) -> None:
    sessions = UploadSessions(TARGET)
    await sessions.put("app", DIGEST, UploadSession(location="/1", offset=10))
    assert await sessions.get("app", DIGEST) == UploadSession(location="/1", offset=10)
    await sessions.drop("app", DIGEST)
    assert await sessions.get("app", DIGEST) is None
    assert not (home / "regflow.db").exists()
