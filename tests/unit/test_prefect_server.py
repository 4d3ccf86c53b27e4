"""The local Prefect server's auth string, private files and environment (flows/prefect_server.py);
no server is started here."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adapters.errors import ConfigError
from flows import prefect_server
from flows.prefect_server import (
    AUTH_FILE,
    CLIENT_AUTH_ENV,
    IDLE_ENV,
    SERVER_AUTH_ENV,
    LocalPrefectServer,
    auth_string,
    client_environment,
    idle_seconds,
)


def test_the_auth_string_is_generated_once_private_and_the_same_for_racing_callers(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    with ThreadPoolExecutor(max_workers=8) as pool:
        strings = set(pool.map(lambda _: auth_string(home), range(16)))
    assert len(strings) == 1
    (auth,) = strings
    user, password = auth.split(":", 1)
    assert user == "regflow" and len(password) >= 40
    assert stat.S_IMODE((home / AUTH_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert sorted(p.name for p in home.iterdir()) == [AUTH_FILE]  # no staging file left
    assert auth_string(home) == auth


def test_a_server_gets_its_auth_and_the_users_server_settings_but_no_client_settings(tmp_path: Path) -> None:
    user_env = {"PATH": "/usr/bin", "PREFECT_API_URL": "http://elsewhere/api", CLIENT_AUTH_ENV: "a:b",
                SERVER_AUTH_ENV: "user:chosen", "PREFECT_PROFILES_PATH": "/x",
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://db/prefect",
                "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50"}
    server = LocalPrefectServer(tmp_path / "p", 4321, auth="regflow:s3cret", base_env=user_env)
    env = server.process_env
    assert env[SERVER_AUTH_ENV] == "regflow:s3cret"
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4321/api" == server.api_url
    assert env["PREFECT_HOME"] == str(tmp_path / "p")
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://db/prefect"
    assert env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "50"  # the user's tuning wins
    assert env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL"] == "1"
    for gone in ("PREFECT_API_URL", CLIENT_AUTH_ENV, "PREFECT_PROFILES_PATH"):
        assert gone not in env
    assert server.argv[-4:] == ["--host", "127.0.0.1", "--port", "4321"]
    # Without auth (the tests' own server, a user's): none, even if the caller's environment had one.
    assert SERVER_AUTH_ENV not in LocalPrefectServer(tmp_path / "q", 1, base_env=user_env).process_env


def test_clients_get_the_url_and_the_auth_string() -> None:
    assert client_environment("http://127.0.0.1:1/api", "regflow:x") == {
        "PREFECT_API_URL": "http://127.0.0.1:1/api", CLIENT_AUTH_ENV: "regflow:x"}
    assert client_environment("http://127.0.0.1:1/api", None) == {"PREFECT_API_URL": "http://127.0.0.1:1/api"}


def test_the_idle_time_is_named_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IDLE_ENV, raising=False)
    assert idle_seconds() == prefect_server.DEFAULT_IDLE_SECONDS == 600
    monkeypatch.setenv(IDLE_ENV, "0")
    assert idle_seconds() == 0
    for bad in ("-1", "nan", "ten"):
        monkeypatch.setenv(IDLE_ENV, bad)
        with pytest.raises(ConfigError, match=IDLE_ENV):
            idle_seconds()
