"""The API's execution and task ids (policies.store ``run_ids``) on a real PostgreSQL server:
stores in different threads (standing in for serve processes behind one database) asking for
ids of overlapping runs at once get one id per run, each id once. The server comes from
test_store_postgres.py's fixtures (skipped there, and here, without the `postgresql` package)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from policies.store import Store
from tests.integration.test_store_postgres import postgres, store  # noqa: F401
from tests.support.postgres import Postgres

pytestmark = pytest.mark.integration


def test_run_ids_are_unique_across_stores_and_kept(store: Store, postgres: Postgres) -> None:  # noqa: F811
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="regflow", dbname="postgres") as conn:
        conn.execute("DROP TABLE IF EXISTS api_run_ids")  # the shared fixture's teardown predates it
    runs = [str(uuid.uuid4()) for _ in range(12)]

    def ask(start: int) -> dict[str, int]:
        with Store() as other:
            return other.run_ids(runs[start:start + 6])

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [0, 3, 6, 2, 5, 0]))
    ids = store.run_ids(runs)
    assert sorted(ids.values()) == list(range(1, 13))
    for answer in answers:
        assert answer == {key: ids[key] for key in answer}
    assert all(store.run_key(number) == key for key, number in ids.items())
    assert store.run_key(13) is None
