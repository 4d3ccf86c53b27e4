"""policies.store's single changes (issue 18): delete, enable, disable; nothing left of a deleted
registry's secret in the file; and changes from two processes taken one at a time."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event

from adapters.errors import ConfigError
from policies.models import Policy, parse_config
from policies.store import PolicyRow, Store

SPARE_SECRET = "spare-literal-Secret-4711"
CONFIG = {
    "version": 1,
    "registries": [
        {"name": "src", "type": "docker-registry", "url": "http://127.0.0.1:5000"},
        {"name": "dst", "type": "docker-registry", "url": "http://127.0.0.1:5001"},
        {"name": "spare", "type": "docker-registry", "url": "http://127.0.0.1:5002",
         "credential": {"access_key": "al", "access_secret": SPARE_SECRET}},
    ],
    "policies": [
        {"name": "nightly", "src_registry": "src", "dest_registry": "dst",
         "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 3 * * *"}}},
    ],
}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("REGFLOW_HOME", str(home))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("REGFLOW_DATABASE_URL", raising=False)
    return home


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with Store() as store:
        store.apply(parse_config(CONFIG))
        yield store


def rows(db: Path, table: str) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(f"SELECT name, spec FROM {table} ORDER BY name").fetchall()


def test_disable_and_enable_change_only_the_flag_and_say_whether_they_did(store: Store, home: Path) -> None:
    before = dict(rows(home / "regflow.db", "policies"))
    assert store.disable_policy("nightly") is True
    assert store.policy("nightly").enabled is False
    assert store.disable_policy("nightly") is False
    after = json.loads(dict(rows(home / "regflow.db", "policies"))["nightly"])
    assert after == json.loads(before["nightly"]) | {"enabled": False}

    assert store.enable_policy("nightly") is True
    assert store.enable_policy("nightly") is False
    assert json.loads(dict(rows(home / "regflow.db", "policies"))["nightly"]) == json.loads(before["nightly"])


def test_apply_sets_the_flag_back_to_what_the_file_says(store: Store) -> None:
    # The file is the source of truth: a switch made with `policy disable` lasts until a file
    # naming the policy is applied again, and that apply reports it.
    store.disable_policy("nightly")
    report = store.apply(parse_config(CONFIG))
    assert report.updated == ["policy nightly"]
    assert store.policy("nightly").enabled is True


def test_unknown_names_change_nothing(store: Store, home: Path) -> None:
    before = {t: rows(home / "regflow.db", t) for t in ("registries", "policies")}
    for call in (store.enable_policy, store.disable_policy, store.delete_policy):
        with pytest.raises(ConfigError, match="no policy named 'nope'"):
            call("nope")
    with pytest.raises(ConfigError, match="no registry named 'nope'"):
        store.delete_registry("nope")
    with pytest.raises(ConfigError, match="'src' is used by policy 'nightly'"):
        store.delete_registry("src")
    assert {t: rows(home / "regflow.db", t) for t in ("registries", "policies")} == before


def test_a_deleted_registry_leaves_no_trace_of_its_sealed_secret_in_the_file(home: Path) -> None:
    db = home / "regflow.db"
    with Store() as store:
        # As on SQLite builds whose default keeps deleted rows' bytes in free pages.
        event.listen(store._engine, "connect",
                     lambda connection, _: connection.execute("PRAGMA secure_delete = OFF"))
        store.apply(parse_config(CONFIG))
        sealed = json.loads(dict(rows(db, "registries"))["spare"])["credential"]["access_secret"]
        assert sealed.startswith("enc:v1:") and sealed.encode() in db.read_bytes()
        store.delete_registry("spare")
        assert [name for name, _ in rows(db, "registries")] == ["dst", "src"]
    assert sealed.encode() not in db.read_bytes()
    assert SPARE_SECRET.encode() not in db.read_bytes()


def test_a_registry_deleted_while_another_process_adds_its_user_is_refused(store: Store, home: Path) -> None:
    """The check "no policy uses it" and the delete are one step: a policy committed by another
    writer meanwhile is seen, and the delete refused, never a policy left naming no registry."""
    other = Store()
    holding, added = threading.Event(), threading.Event()
    spec = Policy(name="late", src_registry="spare", dest_registry="dst").model_dump(mode="json")

    def add_user() -> None:
        with other._changing() as session:
            now = datetime.now(UTC)
            session.add(PolicyRow(name="late", spec=json.dumps(spec), created_at=now, updated_at=now))
            holding.set()
            time.sleep(1.0)  # the delete below starts in this window
        added.set()

    writer = threading.Thread(target=add_user)
    writer.start()
    try:
        assert holding.wait(10)
        with pytest.raises(ConfigError, match="'spare' is used by policy 'late'"):
            store.delete_registry("spare")
        assert added.is_set()  # it waited for the other change to commit
    finally:
        writer.join()
        other.close()
    assert "spare" in [name for name, _ in rows(home / "regflow.db", "registries")]


def test_switches_and_applies_from_many_threads_all_land(store: Store, home: Path) -> None:
    stores = [Store() for _ in range(4)]
    errors: list[BaseException] = []

    def toggle(db: Store, n: int) -> None:
        try:
            for i in range(n):
                (db.disable_policy if i % 2 == 0 else db.enable_policy)("nightly")
                db.apply(parse_config(CONFIG))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=toggle, args=(db, 5)) for db in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for db in stores:
        db.close()
    assert errors == []
    # Every apply ended with the file's view: the last change to land was an apply.
    assert store.policy("nightly").enabled is True
