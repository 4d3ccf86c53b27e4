"""policies.store against a real, throwaway PostgreSQL server (initdb into a temp directory).

Skipped when no PostgreSQL server binaries are installed (Debian package `postgresql`). The server
(tests/support/postgres.py) is stopped by its own PID at teardown and its directory removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.errors import ConfigError
from policies.models import parse_config
from policies.store import ApplyReport, Store, UploadSession
from tests.support.postgres import Postgres, PostgresError, throwaway_postgres, unavailable_reason

pytestmark = pytest.mark.integration

SECRET = "pg-literal-Secret-99"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        with throwaway_postgres(tmp_path_factory.mktemp("pg")) as server:
            yield server
    except PostgresError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def store(postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.setenv("REGFLOW_DATABASE_URL", postgres.url())
    store = Store()
    try:
        yield store
    finally:
        store.close()
        postgres.drop_tables()


def config_data() -> dict[str, Any]:
    return {
        "version": 1,
        "registries": [
            {"name": "src", "type": "docker-registry", "url": "https://src.example",
             "credential": {"access_key": "puller", "access_secret": SECRET}},
            {"name": "dst", "type": "docker-registry", "url": "http://127.0.0.1:5001", "insecure": True},
        ],
        "policies": [{"name": "mirror-team-a", "src_registry": "src", "dest_registry": "dst",
                      "dest_namespace": "mirror"}],
    }


ALL = ["registry src", "registry dst", "policy mirror-team-a"]


def test_apply_and_read_back(store: Store, postgres: Postgres) -> None:
    assert store.apply(parse_config(config_data())) == ApplyReport(created=ALL)
    assert store.apply(parse_config(config_data())) == ApplyReport(unchanged=ALL)
    assert [r.name for r in store.registries()] == ["dst", "src"]
    assert store.policy("mirror-team-a").dest_namespace == "mirror"
    endpoint = store.endpoint("src")
    assert (endpoint.username, endpoint.password) == ("puller", SecretStr(SECRET))
    assert store.endpoint("dst").insecure is True
    specs = postgres.query("SELECT spec FROM registries")
    assert specs and all(SECRET not in spec for (spec,) in specs)
    assert any("enc:v1:" in spec for (spec,) in specs)


def test_update_prune_and_refusals(store: Store, postgres: Postgres) -> None:
    store.apply(parse_config(config_data()))
    data = config_data()
    data["registries"][1]["url"] = "http://127.0.0.1:5002"
    assert store.apply(parse_config(data)).updated == ["registry dst"]

    before = postgres.query("SELECT name, spec, created_at, updated_at FROM registries ORDER BY name")
    bad = config_data()
    bad["registries"][1]["type"] = "no-such-type"
    with pytest.raises(ConfigError, match="not supported") as info:
        store.apply(parse_config(bad))
    assert info.value.field == "registries[1].type"
    assert postgres.query("SELECT name, spec, created_at, updated_at FROM registries ORDER BY name") == before

    with pytest.raises(ConfigError, match="used by policy 'mirror-team-a'"):
        store.delete_registry("dst")
    data["policies"] = []
    data["registries"] = data["registries"][:1]
    assert store.apply(parse_config(data), prune=True).deleted == ["policy mirror-team-a", "registry dst"]
    assert [r.name for r in store.registries()] == ["src"]


def test_plain_postgresql_url_uses_psycopg(postgres: Postgres, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGFLOW_HOME", str(tmp_path / "home"))
    with Store(postgres.url("postgresql")) as store:
        try:
            assert store.apply(parse_config(config_data())).created == ALL
        finally:
            postgres.drop_tables()


def test_upload_session_rows(store: Store, postgres: Postgres) -> None:
    """A session row written, updated in place (one upsert), read by another worker's store,
    deleted; rows of other targets and repositories untouched throughout."""
    target, digest = "http://127.0.0.1:5001", "sha256:" + "cd" * 32
    store.save_upload_session(target, "app", digest, UploadSession(location="/u/1?_state=a", offset=64))
    store.save_upload_session(target, "other", digest, UploadSession(location="/u/2", offset=1))
    store.save_upload_session(target, "app", digest, UploadSession(location="/u/1?_state=b", offset=128))
    with Store() as elsewhere:
        assert elsewhere.upload_session(target, "app", digest) == UploadSession(location="/u/1?_state=b",
                                                                                offset=128)
        assert elsewhere.upload_session("https://else.example", "app", digest) is None
    assert postgres.query('SELECT repository, "offset" FROM upload_sessions ORDER BY repository') == [
        ("app", 128), ("other", 1)]
    store.drop_upload_session(target, "app", digest)
    assert store.upload_session(target, "app", digest) is None
    assert store.upload_session(target, "other", digest) == UploadSession(location="/u/2", offset=1)
    postgres.query("UPDATE upload_sessions SET updated_at = now() - interval '2 days' RETURNING 1")
    assert store.upload_session(target, "other", digest) is None  # stale: no longer offered
    assert store.expire_upload_sessions() == 1
    assert postgres.query("SELECT count(*) FROM upload_sessions") == [(0,)]


def test_runs_starting_at_once_on_a_new_store_all_get_its_tables(store: Store, postgres: Postgres) -> None:
    """Each first use creates the missing tables; runs starting together must not fail on the
    one that loses that race (nor on an older store that lacks the upload_sessions table)."""
    def first_use(i: int) -> None:
        with Store() as own:
            own.save_upload_session("http://t", f"repo-{i}", "sha256:00",
                                    UploadSession(location="/", offset=i))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(first_use, range(6)))
    assert postgres.query("SELECT count(*) FROM upload_sessions") == [(6,)]
