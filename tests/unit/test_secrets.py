"""policies.secrets and policies.home: sealing, resolving, and the key that makes it safe."""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from adapters.errors import ConfigError
from policies import secrets
from policies.home import database_url, regflow_home

SECRET = "hunter2-literal-password"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("REGFLOW_HOME", str(home))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("REGFLOW_DATABASE_URL", raising=False)
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------ home
def test_home_is_created_private(home: Path) -> None:
    assert regflow_home() == home
    assert mode(home) == 0o700


def test_home_defaults_to_dot_regflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert regflow_home() == tmp_path / ".regflow"
    assert database_url() == f"sqlite:///{tmp_path / '.regflow' / 'regflow.db'}"


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGFLOW_DATABASE_URL", "postgresql+psycopg://db.example/regflow")
    assert database_url() == "postgresql+psycopg://db.example/regflow"


# ------------------------------------------------------------------------------- literals
def test_literal_is_encrypted_and_resolves(home: Path) -> None:
    sealed = secrets.seal(SecretStr(SECRET))
    assert sealed.startswith("enc:v1:")
    assert SECRET not in sealed
    assert secrets.resolve(sealed).get_secret_value() == SECRET
    # Fernet tokens are randomised: the same literal never seals to the same text twice.
    assert secrets.seal(SecretStr(SECRET)) != sealed


def test_key_file_is_generated_once_with_mode_0600(home: Path) -> None:
    sealed = secrets.seal(SecretStr(SECRET))
    key_file = home / "secret.key"
    assert mode(key_file) == 0o600
    key = key_file.read_bytes()
    Fernet(key.strip())  # a real Fernet key
    assert sorted(p.name for p in home.iterdir()) == ["secret.key"]  # no temp file left behind
    secrets.seal(SecretStr("another"))
    assert key_file.read_bytes() == key
    assert secrets.resolve(sealed).get_secret_value() == SECRET


def test_key_file_creation_never_replaces_an_existing_key(home: Path) -> None:
    secrets.seal(SecretStr(SECRET))
    key_file = home / "secret.key"
    key = key_file.read_bytes()
    secrets._create_key_file(key_file)  # the loser of a creation race
    assert key_file.read_bytes() == key
    assert sorted(p.name for p in home.iterdir()) == ["secret.key"]


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644])
def test_readable_key_file_is_refused(home: Path, bad_mode: int) -> None:
    sealed = secrets.seal(SecretStr(SECRET))
    key_file = home / "secret.key"
    key_file.chmod(bad_mode)
    with pytest.raises(ConfigError, match=r"accessible to group or others .*chmod 600") as info:
        secrets.resolve(sealed)
    assert str(key_file) in str(info.value)
    with pytest.raises(ConfigError, match="accessible to group or others"):
        secrets.seal(SecretStr(SECRET))


def test_key_file_that_is_no_key_is_refused(home: Path) -> None:
    home.mkdir(mode=0o700)
    key_file = home / "secret.key"
    key_file.write_text("not a key\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold a Fernet key"):
        secrets.seal(SecretStr(SECRET))


def test_fernet_key_from_environment_needs_no_key_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    sealed = secrets.seal(SecretStr(SECRET))
    assert secrets.resolve(sealed).get_secret_value() == SECRET
    assert not (home / "secret.key").exists()


def test_passphrase_is_derived_the_same_way_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGFLOW_SECRET_KEY", "correct horse battery staple")
    sealed = secrets.seal(SecretStr(SECRET))
    secrets._derive_key.cache_clear()  # as a fresh process would
    assert secrets.resolve(sealed).get_secret_value() == SECRET


def test_wrong_key_says_the_key_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    sealed = secrets.seal(SecretStr(SECRET))
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match=r"cannot decrypt .*\(REGFLOW_SECRET_KEY changed\?\)") as info:
        secrets.resolve(sealed)
    assert info.value.field == "access_secret"
    assert SECRET not in str(info.value)


def test_sealed_text_passes_through_only_under_its_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = secrets.seal(SecretStr(SECRET))
    assert secrets.seal(SecretStr(sealed)) == sealed
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match=r"sealed text .* cannot decrypt"):
        secrets.seal(SecretStr(sealed))


def test_unknown_stored_form_is_refused() -> None:
    with pytest.raises(ConfigError, match="neither encrypted nor a reference") as info:
        secrets.resolve(SECRET)
    assert SECRET not in str(info.value)


def test_matches_compares_plaintexts_not_ciphertexts(monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = secrets.seal(SecretStr(SECRET))
    assert secrets.matches(sealed, SecretStr(SECRET))
    assert secrets.matches(sealed, SecretStr(secrets.seal(SecretStr(SECRET))))
    assert not secrets.matches(sealed, SecretStr("other"))
    assert not secrets.matches(sealed, SecretStr("${SRC_PASSWORD}"))
    assert secrets.matches("${SRC_PASSWORD}", SecretStr("${SRC_PASSWORD}"))
    assert not secrets.matches("${SRC_PASSWORD}", SecretStr("${DST_PASSWORD}"))
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    assert not secrets.matches(sealed, SecretStr(SECRET))


# ----------------------------------------------------------------------------- references
def test_env_reference_is_stored_as_is_and_read_when_resolved(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secrets.seal(SecretStr("${SRC_PASSWORD}")) == "${SRC_PASSWORD}"
    monkeypatch.setenv("SRC_PASSWORD", SECRET)
    assert secrets.resolve("${SRC_PASSWORD}").get_secret_value() == SECRET
    assert not (home / "secret.key").exists()  # references need no key


@pytest.mark.parametrize("value", [None, ""])
def test_env_reference_unset_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SRC_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("SRC_PASSWORD", value)
    with pytest.raises(ConfigError, match="environment variable SRC_PASSWORD is not set") as info:
        secrets.resolve("${SRC_PASSWORD}")
    assert info.value.field == "access_secret"


class FakeSecret:
    """Stands in for prefect.blocks.system.Secret: importing prefect costs a second."""

    blocks: dict[str, str] = {}
    calls: list[dict[str, Any]] = []

    def __init__(self, value: str) -> None:
        self.value = value

    @classmethod
    def load(cls, name: str, **kwargs: Any) -> FakeSecret:
        cls.calls.append({"name": name, **kwargs})
        if name not in cls.blocks:
            raise ValueError(f"Unable to find block document named {name} for block type secret")
        return cls(cls.blocks[name])

    def get(self) -> str:
        return self.value


@pytest.fixture
def prefect_secrets(monkeypatch: pytest.MonkeyPatch) -> type[FakeSecret]:
    module = types.ModuleType("prefect.blocks.system")
    module.Secret = FakeSecret  # type: ignore[attr-defined]
    for name in ("prefect", "prefect.blocks"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "prefect.blocks.system", module)
    monkeypatch.setattr(FakeSecret, "blocks", {"src-password": SECRET})
    monkeypatch.setattr(FakeSecret, "calls", [])
    return FakeSecret


def test_prefect_secret_reference_loads_the_block(prefect_secrets: type[FakeSecret]) -> None:
    assert secrets.seal(SecretStr("prefect-secret:src-password")) == "prefect-secret:src-password"
    assert secrets.resolve("prefect-secret:src-password").get_secret_value() == SECRET
    # Forced synchronous: inside an async flow, Block.load would hand back a coroutine.
    assert prefect_secrets.calls == [{"name": "src-password", "_sync": True}]


def test_missing_prefect_secret_names_the_block(prefect_secrets: type[FakeSecret]) -> None:
    with pytest.raises(ConfigError, match="Prefect Secret block 'nope'") as info:
        secrets.resolve("prefect-secret:nope")
    assert info.value.field == "access_secret"


def test_source_labels() -> None:
    assert secrets.source_label("${SRC_PASSWORD}") == "env:SRC_PASSWORD"
    assert secrets.source_label("prefect-secret:src-password") == "prefect-secret:src-password"
    assert secrets.source_label(secrets.seal(SecretStr(SECRET))) == "encrypted"
    assert secrets.source_label(SECRET) == "literal"


def test_key_file_keeps_0600_under_a_permissive_umask(home: Path) -> None:
    old = os.umask(0)
    try:
        secrets.seal(SecretStr(SECRET))
    finally:
        os.umask(old)
    assert mode(home / "secret.key") == 0o600
