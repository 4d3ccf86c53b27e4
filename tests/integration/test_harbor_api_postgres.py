"""The API's integer ids (policies.store ``api_ids``) on a real PostgreSQL server: handed out
under the store's change lock, so stores in different threads (standing in for processes) never
give two names one id, and a name deleted and applied again gets its id back. The server comes
from test_store_postgres.py's fixtures (skipped there, and here, without the `postgresql` package)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from policies.models import parse_config
from policies.store import Store
from tests.integration.test_store_postgres import config_data, postgres, store  # noqa: F401
from tests.support.postgres import Postgres

pytestmark = pytest.mark.integration


def test_ids_are_unique_across_stores_and_kept_per_name(store: Store, postgres: Postgres) -> None:  # noqa: F811
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="regflow", dbname="postgres") as conn:
        conn.execute("DROP TABLE IF EXISTS api_ids")  # the shared fixture's teardown predates it
    store.apply(parse_config(config_data()))
    assert store.api_ids("registry") == {"dst": 1, "src": 2}  # same moment: by name
    assert store.api_ids("policy") == {"mirror-team-a": 1}

    def add(name: str) -> None:
        with Store() as other:
            other.apply(parse_config({"version": 1, "registries": [
                {"name": name, "type": "docker-registry", "url": f"http://127.0.0.1:1/{name}"}]}))

    names = [f"r{i}" for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, names))
    ids = store.api_ids("registry")
    assert sorted(ids.values()) == list(range(1, 11))
    store.delete_registry("r3")
    assert "r3" not in store.api_ids("registry")
    add("r3")
    assert store.api_ids("registry")["r3"] == ids["r3"]
