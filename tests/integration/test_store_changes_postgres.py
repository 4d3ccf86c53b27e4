"""policies.store's single changes (issue 18) on a real PostgreSQL server: a registry delete that
races a policy naming it is refused, and switches land. The server comes from
test_store_postgres.py's fixtures (skipped there, and here, without the `postgresql` package)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest

from adapters.errors import ConfigError
from policies.models import Policy, parse_config
from policies.store import PolicyRow, Store
from tests.integration.test_store_postgres import config_data, postgres, store  # noqa: F401
from tests.support.postgres import Postgres

pytestmark = pytest.mark.integration


def test_a_registry_deleted_while_another_process_adds_its_user_is_refused(
        store: Store, postgres: Postgres) -> None:  # noqa: F811 - the imported fixtures
    store.apply(parse_config(config_data()))
    other = Store()
    holding, added = threading.Event(), threading.Event()
    spec = Policy(name="late", src_registry="src", dest_registry="dst").model_dump(mode="json")
    store.delete_policy("mirror-team-a")  # "src" is unused now, until "late" lands

    def add_user() -> None:
        with other._changing() as session:
            now = datetime.now(UTC)
            session.add(PolicyRow(name="late", spec=json.dumps(spec), created_at=now, updated_at=now))
            session.flush()
            holding.set()
            time.sleep(1.0)  # the delete below starts in this window
        added.set()

    writer = threading.Thread(target=add_user)
    writer.start()
    try:
        assert holding.wait(10)
        with pytest.raises(ConfigError, match="'src' is used by policy 'late'"):
            store.delete_registry("src")
        assert added.is_set()
    finally:
        writer.join()
        other.close()
    assert postgres.query("SELECT name FROM registries ORDER BY name") == [("dst",), ("src",)]


def test_switches_land_and_apply_sets_them_back(store: Store, postgres: Postgres) -> None:  # noqa: F811
    store.apply(parse_config(config_data()))
    assert store.disable_policy("mirror-team-a") is True
    assert store.disable_policy("mirror-team-a") is False
    spec = json.loads(postgres.query("SELECT spec FROM policies WHERE name = 'mirror-team-a'")[0][0])
    assert spec["enabled"] is False
    assert store.apply(parse_config(config_data())).updated == ["policy mirror-team-a"]
    assert store.enable_policy("mirror-team-a") is False
