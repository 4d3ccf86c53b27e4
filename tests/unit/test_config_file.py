"""policies.config_file: YAML in, a validated Config out, and every problem said with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.errors import ConfigError
from policies.config_file import load_config_file

SECRET = "yaml-literal-Secret-77"

GOOD = f"""\
version: 1
registries:
  - name: src
    type: docker-registry
    url: https://src.example
    credential:
      access_key: puller
      access_secret: {SECRET}
  - name: dst
    type: docker-registry
    url: http://127.0.0.1:5001
    insecure: true
policies:
  - name: mirror-team-a
    src_registry: src
    dest_registry: dst
    filters:
      - type: name
        value: "team-a/**"
    trigger:
      type: scheduled
      trigger_settings: {{cron: "0 0 * * * *"}}
"""


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("REGFLOW_HOME", str(home))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("REGFLOW_DATABASE_URL", raising=False)
    return home


def write(tmp_path: Path, text: str, name: str = "regflow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file(tmp_path: Path) -> None:
    config = load_config_file(str(write(tmp_path, GOOD)))
    assert [r.name for r in config.registries] == ["src", "dst"]
    assert config.registries[1].insecure is True
    assert config.policies[0].trigger.trigger_settings.cron == "0 * * * *"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_config_file(tmp_path / "nope.yaml")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 1\nregistries:\n  - name: src\n   type: x\n", "line 4, column 4"),
        ("version: 1\nregistries: [\n", "line 3, column 1"),
        ('version: 1\npolicies:\n  - name: "unterminated\n', "line 4, column 1"),
        ("version: 1\n\tregistries: []\n", "line 2, column 1"),
    ],
)
def test_malformed_yaml_gives_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_config_file(path)
    assert f"{path}: {where}: invalid YAML" in str(info.value)


def test_yaml_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    text = GOOD.replace(f"access_secret: {SECRET}", f'access_secret: "{SECRET}')
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_config_file(write(tmp_path, text))
    assert SECRET not in str(info.value)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace("      access_key: puller\n", "      access_key: puller\n      access_key: other\n")
    with pytest.raises(ConfigError, match=r"line 8, column 7: the key 'access_key' appears twice"):
        load_config_file(write(tmp_path, text))


def test_unsafe_tags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 1, column 10: invalid YAML"):
        load_config_file(write(tmp_path, "version: !!python/object/apply:os.system ['true']\n"))


@pytest.mark.parametrize(
    ("text", "found"), [("", "nothing"), ("- a\n- b\n", "a list"), ("just text\n", "a str")]
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    expected = f"must be a mapping with version, registries and policies, not {found}"
    with pytest.raises(ConfigError, match=expected):
        load_config_file(write(tmp_path, text))


def test_unknown_field_is_named(tmp_path: Path) -> None:
    text = GOOD.replace("    insecure: true\n", "    insecure: true\n    colour: blue\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"registries\[1\]\.colour: Extra inputs are not permitted") as info:
        load_config_file(path)
    assert info.value.field == "registries[1].colour"
    assert str(info.value).startswith(f"{path}: ")


def test_validation_errors_do_not_echo_the_secret(tmp_path: Path) -> None:
    text = GOOD.replace("      access_key: puller\n", "      access_key: puller\n      extra: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(write(tmp_path, text))
    assert SECRET not in str(info.value)


def test_a_policy_may_name_a_registry_outside_the_file(tmp_path: Path) -> None:
    # The store, at apply, refuses a name it does not hold (tests/unit/test_store.py).
    text = GOOD.replace("dest_registry: dst", "dest_registry: elsewhere")
    assert load_config_file(write(tmp_path, text)).policies[0].dest_registry == "elsewhere"


def test_relative_ca_path_is_relative_to_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "certs").mkdir()
    (conf / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    text = GOOD.replace("    insecure: true\n", "    ca_certificate: certs/ca.pem\n")
    config = load_config_file(write(conf, text))
    assert config.registries[1].ca_certificate == str(conf / "certs" / "ca.pem")


def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    text = GOOD.replace("    insecure: true\n", "    ca_certificate: certs/missing.pem\n")
    with pytest.raises(ConfigError, match=r"missing\.pem is not a file") as info:
        load_config_file(write(tmp_path, text))
    assert info.value.field == "registries[1].ca_certificate"


@pytest.mark.parametrize(("path", "problem"), [
    ("~no-such-user-here/ca.pem", "no such user's home directory"),
    ('"ca\\0.pem"', "is not a usable path: embedded null byte"),
    ("a" * 5000, "is not a usable path: File name too long"),
])
def test_an_unusable_ca_path_is_one_config_error(tmp_path: Path, path: str, problem: str) -> None:
    # Found by tests/unit/test_fuzz_inputs.py: each escaped as a bare RuntimeError/ValueError/OSError.
    text = GOOD.replace("    insecure: true\n", f"    ca_certificate: {path}\n")
    with pytest.raises(ConfigError, match=problem) as info:
        load_config_file(write(tmp_path, text))
    assert info.value.field == "registries[1].ca_certificate"
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_pem_text_is_kept_as_it_is(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    block = "".join(f"      {line}\n" for line in pem.splitlines())
    text = GOOD.replace("    insecure: true\n", f"    ca_certificate: |\n{block}")
    config = load_config_file(write(tmp_path, text))
    assert config.registries[1].ca_certificate == pem
