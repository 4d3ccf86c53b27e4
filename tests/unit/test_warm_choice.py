"""Which calls go to a warm process, and which warm process (regflow_cli/warm.py)."""

from __future__ import annotations

import socket

import pytest

from regflow_cli import warm


def test_only_repeated_commands_go_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(warm.IDLE_ENV, raising=False)
    assert warm.wanted(["regflow", "replicate", "p"])
    assert not warm.wanted(["regflow", "apply", "-f", "x.yaml"])
    assert not warm.wanted(["regflow"])
    monkeypatch.setenv(warm.IDLE_ENV, "0")
    assert not warm.wanted(["regflow", "replicate", "p"])


@pytest.mark.parametrize("raw", ["soon", "-1", "nan"])
def test_a_bad_idle_time_is_said_and_turns_warm_processes_off(raw: str, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(warm.IDLE_ENV, raw)
    assert warm.idle_seconds() == 0
    assert warm.IDLE_ENV in capsys.readouterr().err


def test_the_key_follows_the_environment_except_shell_bookkeeping() -> None:
    env = {"REGFLOW_HOME": "/h", "PATH": "/usr/bin", "PWD": "/a", "COLUMNS": "80"}
    key = warm.fingerprint(env)
    assert warm.fingerprint(dict(env)) == key
    assert warm.fingerprint(env | {"PWD": "/b", "COLUMNS": "120", "TERM": "dumb"}) == key
    assert warm.fingerprint(env | {"REGFLOW_HOME": "/other"}) != key
    assert warm.fingerprint(env | {"SRC_PASSWORD": "x"}) != key
    assert len(key) == 32


def test_the_key_follows_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"REGFLOW_HOME": "/h"}
    key = warm.fingerprint(env)
    real = warm._stamp
    monkeypatch.setattr(warm, "_stamp", lambda path: (1, 2) if path.name == "plan.py" else real(path))
    assert warm.fingerprint(env) != key  # an edited module is never run by an older warm process


def test_a_socket_owned_by_another_user_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(warm.address("test-other-user"))
    listener.listen(1)
    try:
        monkeypatch.setattr(warm, "peer_uid", lambda sock: 4242)
        with pytest.raises(warm.Unavailable, match="another user"):
            warm._connect("test-other-user")
    finally:
        listener.close()
