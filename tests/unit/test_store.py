"""policies.store on SQLite: apply, idempotence, validation before writing, prune, deletes,
endpoints, and no plaintext secret anywhere on disk."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from pydantic import SecretStr

from adapters.endpoint import Endpoint
from adapters.errors import ConfigError
from policies.config_file import load_config_file
from policies.models import Config, parse_config
from policies.store import ApplyReport, ResolvedWebhook, Store

SECRET = "s3cret-literal-Pa55word"
WEBHOOK_SECRET = "w3bhook-literal-Sh4red-secret"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("REGFLOW_HOME", str(home))
    monkeypatch.delenv("REGFLOW_SECRET_KEY", raising=False)
    monkeypatch.delenv("REGFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("DST_PASSWORD", "dst-env-password")
    monkeypatch.setenv("DST_HOOK_SECRET", "dst-env-hook-secret")
    return home


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with Store() as store:
        yield store


@pytest.fixture
def db_file(home: Path) -> Path:
    return home / "regflow.db"


def config_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "registries": [
            {
                "name": "src",
                "type": "docker-registry",
                "url": "https://src.example:5000",
                "credential": {"access_key": "puller", "access_secret": SECRET},
                "webhook": {"kind": "harbor", "auth": "hmac", "secret": WEBHOOK_SECRET},
                "ca_certificate": PEM,
            },
            {
                "name": "dst",
                "type": "docker-registry",
                "url": "http://127.0.0.1:5001",
                "credential": {"access_key": "pusher", "access_secret": "${DST_PASSWORD}"},
                "insecure": True,
            },
        ],
        "policies": [
            {"name": "mirror-team-a", "src_registry": "src", "dest_registry": "dst",
             "filters": [{"type": "name", "value": "team-a/**"}]},
            {"name": "mirror-team-b", "src_registry": "src", "dest_registry": "dst",
             "dest_namespace": "b"},
        ],
    }
    data.update(changes)
    return data


def config(**changes: Any) -> Config:
    return parse_config(config_data(**changes))


def rows(db_file: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(db_file)) as db:
        query = "SELECT name, spec, created_at, updated_at FROM {} ORDER BY name"
        return {table: db.execute(query.format(table)).fetchall() for table in ("registries", "policies")}


ALL = ["registry src", "registry dst", "policy mirror-team-a", "policy mirror-team-b"]


# ---------------------------------------------------------------------------------- apply
def test_apply_creates_then_reports_unchanged(store: Store, db_file: Path) -> None:
    first = store.apply(config())
    assert first == ApplyReport(created=ALL)
    assert first.changed
    before = rows(db_file)
    again = store.apply(config())
    assert again == ApplyReport(unchanged=ALL)
    assert not again.changed
    # Re-applying the same literal keeps the stored ciphertext, so nothing was rewritten.
    assert rows(db_file) == before


def test_a_fresh_store_object_sees_the_same_state(store: Store) -> None:
    store.apply(config())
    with Store() as other:
        assert other.apply(config()) == ApplyReport(unchanged=ALL)


def test_edits_report_updated(store: Store, db_file: Path) -> None:
    store.apply(config())
    created = {name: created for name, _, created, _ in rows(db_file)["registries"]}
    data = config_data()
    data["registries"][0]["url"] = "https://src.example:5443"
    data["policies"][1]["enabled"] = False
    assert store.apply(parse_config(data)) == ApplyReport(
        updated=["registry src", "policy mirror-team-b"],
        unchanged=["registry dst", "policy mirror-team-a"],
    )
    after = {name: (created, updated) for name, _, created, updated in rows(db_file)["registries"]}
    assert after["src"][0] == created["src"]
    assert after["src"][1] != after["src"][0]
    assert store.registry("src").url == "https://src.example:5443"
    assert store.policy("mirror-team-b").enabled is False


def test_a_changed_secret_is_an_update(store: Store) -> None:
    store.apply(config())
    data = config_data()
    data["registries"][0]["credential"]["access_secret"] = "a-new-password"
    data["registries"][1]["credential"]["access_secret"] = "${OTHER_PASSWORD}"
    report = store.apply(parse_config(data))
    assert report.updated == ["registry src", "registry dst"]
    assert store.endpoint("src").password == SecretStr("a-new-password")


def test_defaults_written_out_or_left_out_are_the_same_content(store: Store) -> None:
    store.apply(config())
    data = config_data()
    data["policies"][0].update({"override": True, "speed": -1, "trigger": {"type": "manual"}})
    assert store.apply(parse_config(data)).unchanged == ALL


def test_registries_carry_the_sealed_secret_and_apply_back_unchanged(store: Store) -> None:
    store.apply(config())
    src = store.registry("src")
    assert src.credential is not None
    sealed = src.credential.access_secret.get_secret_value()
    assert sealed.startswith("enc:v1:")
    assert SECRET not in sealed
    assert [r.name for r in store.registries()] == ["dst", "src"]
    assert [p.name for p in store.policies()] == ["mirror-team-a", "mirror-team-b"]
    exported = Config(version=1, registries=store.registries(), policies=store.policies())
    assert store.apply(exported).created == []
    assert store.apply(exported).updated == []
    assert store.endpoint("src").password == SecretStr(SECRET)


def test_literal_secret_never_reaches_the_disk(store: Store, home: Path) -> None:
    store.apply(config())
    data = config_data()
    data["registries"][0]["credential"]["access_secret"] = SECRET + "-rotated"
    data["registries"][0]["webhook"]["secret"] = WEBHOOK_SECRET + "-rotated"
    data["registries"][1]["webhook"] = {"secret": "${DST_HOOK_SECRET}"}
    store.apply(parse_config(data))
    store.registries()
    store.endpoint("src")
    assert store.webhook("src") is not None
    assert store.webhook("dst") is not None
    files = [p for p in home.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"regflow.db", "secret.key"}
    for path in files:
        content = path.read_bytes()
        assert SECRET.encode() not in content, path
        assert WEBHOOK_SECRET.encode() not in content, path
        assert b"dst-env-password" not in content, path
        assert b"dst-env-hook-secret" not in content, path


def test_secret_stays_out_of_reprs(store: Store) -> None:
    store.apply(config())
    shown = " ".join(
        [repr(store.registries()), repr(store.endpoint("src")), str(store.public_view(store.registry("src"))),
         repr(store.webhook("src")), str(store.webhook("src"))]
    )
    assert SECRET not in shown
    assert WEBHOOK_SECRET not in shown
    assert "dst-env-password" not in shown


# ---------------------------------------------------------------- validation before writing
def write_yaml(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "regflow.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def bad_unknown_registry() -> dict[str, Any]:
    data = config_data()
    data["policies"][1]["dest_registry"] = "nowhere"
    return data


def bad_unknown_type() -> dict[str, Any]:
    data = config_data()
    data["registries"][1]["type"] = "quay-enterprise"
    data["registries"][0]["url"] = "https://changed.example"  # an edit before the bad part
    return data


def bad_label_filter_on_plain_registry() -> dict[str, Any]:
    data = config_data()
    data["policies"][1]["filters"] = [{"type": "name", "value": "**"}, {"type": "label", "value": "prod"}]
    return data


def bad_read_only_target() -> dict[str, Any]:
    data = config_data()
    data["registries"][1]["type"] = "chartmuseum"
    return data


def bad_option() -> dict[str, Any]:
    data = config_data()
    data["registries"][1]["options"] = {"namespaces": ["team-a"]}
    return data


def bad_unknown_field() -> dict[str, Any]:
    data = config_data()
    data["registries"][0]["colour"] = "blue"
    return data


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        (bad_unknown_registry, "policies[1].dest_registry",
         "'nowhere' is not a registry in this file or in the store"),
        (bad_unknown_type, "registries[1].type", "registry type 'quay-enterprise' is not supported"),
        (bad_label_filter_on_plain_registry, "policies[1].filters[1].type",
         "registry type 'docker-registry' does not support label filters"),
        (bad_read_only_target, "policies[0].dest_registry",
         "registry type 'chartmuseum' can only be a source"),
        (bad_option, "registries[1].options.namespaces",
         "registry type 'docker-registry' has no option 'namespaces' \\(it takes none\\)"),
        (bad_unknown_field, "registries[0].colour", "Extra inputs are not permitted"),
        (lambda: "version: 1\nregistries: [\n  - name: src\n", None, "line 3, column"),
    ],
    ids=["unknown-registry", "unknown-type", "label-filter-on-plain-registry",
         "read-only-target", "option-the-type-does-not-take", "unknown-field", "malformed-yaml"],
)
def test_bad_input_leaves_the_store_untouched(
    store: Store, db_file: Path, tmp_path: Path, bad: Any, field: str | None, message: str
) -> None:
    store.apply(config())
    before_rows, before_bytes = rows(db_file), db_file.read_bytes()
    with pytest.raises(ConfigError, match=message) as info:
        store.apply(load_config_file(write_yaml(tmp_path, bad())), prune=True)
    assert info.value.field == field
    if field:
        assert field in str(info.value)
    assert rows(db_file) == before_rows
    assert db_file.read_bytes() == before_bytes


def test_a_secret_that_cannot_be_sealed_aborts_the_whole_apply(
    store: Store, db_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.apply(config())
    before = rows(db_file)
    foreign = "enc:v1:" + Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    data = config_data()
    data["registries"][0]["url"] = "https://changed.example"
    data["registries"][1]["credential"]["access_secret"] = foreign
    with pytest.raises(ConfigError, match="cannot decrypt") as info:
        store.apply(parse_config(data))
    assert info.value.field == "registries[1].credential.access_secret"
    assert rows(db_file) == before


def test_an_unsafe_key_file_aborts_before_writing(store: Store, db_file: Path, home: Path) -> None:
    store.apply(config())
    before = rows(db_file)
    (home / "secret.key").chmod(0o644)
    data = config_data()
    data["registries"][0]["credential"]["access_secret"] = "changed"
    with pytest.raises(ConfigError, match="accessible to group or others"):
        store.apply(parse_config(data))
    assert rows(db_file) == before


def test_policy_may_use_a_registry_already_in_the_store(store: Store, db_file: Path) -> None:
    store.apply(config())
    # A policy-only file, parsed as `regflow apply` parses it.
    extra = {"name": "mirror-team-c", "src_registry": "src", "dest_registry": "dst", "dest_namespace": "c"}
    report = store.apply(parse_config({"version": 1, "policies": [extra]}))
    assert report.created == ["policy mirror-team-c"]
    before = rows(db_file)
    orphan = {"name": "orphan", "src_registry": "src", "dest_registry": "missing"}
    with pytest.raises(ConfigError, match="'missing' is not a registry in this file or in the store") as info:
        store.apply(parse_config({"version": 1, "policies": [orphan]}))
    assert info.value.field == "policies[0].dest_registry"
    assert rows(db_file) == before


# ------------------------------------------------------------------------------------ prune
def test_prune_deletes_what_the_file_no_longer_has(store: Store) -> None:
    store.apply(config())
    data = config_data()
    data["policies"] = data["policies"][:1]
    assert store.apply(parse_config(data)).deleted == []
    assert len(store.policies()) == 2
    data["registries"].append({"name": "spare", "type": "docker-registry", "url": "https://spare.example"})
    store.apply(parse_config(data))
    data["registries"] = data["registries"][:2]
    report = store.apply(parse_config(data), prune=True)
    assert report.deleted == ["policy mirror-team-b", "registry spare"]
    assert report.unchanged == ["registry src", "registry dst", "policy mirror-team-a"]
    assert [p.name for p in store.policies()] == ["mirror-team-a"]
    assert [r.name for r in store.registries()] == ["dst", "src"]


def test_prune_refuses_to_delete_a_registry_a_remaining_policy_uses(store: Store, db_file: Path) -> None:
    store.apply(config())
    before = rows(db_file)
    keep = store.policy("mirror-team-a")
    src = config().registries[0]
    pruned = Config.model_construct(version=1, registries=[src], policies=[keep])
    with pytest.raises(ConfigError, match="prune would delete it") as info:
        store.apply(pruned, prune=True)
    assert info.value.field == "policies[0].dest_registry"
    assert rows(db_file) == before


# ---------------------------------------------------------------------------------- deletes
def test_delete_registry_is_refused_while_a_policy_uses_it(store: Store) -> None:
    store.apply(config())
    with pytest.raises(ConfigError, match="'src' is used by policy 'mirror-team-a', 'mirror-team-b'"):
        store.delete_registry("src")
    store.delete_policy("mirror-team-a")
    with pytest.raises(ConfigError, match="used by policy 'mirror-team-b'"):
        store.delete_registry("src")
    store.delete_policy("mirror-team-b")
    store.delete_registry("src")
    assert [r.name for r in store.registries()] == ["dst"]


def test_missing_names_are_config_errors(store: Store) -> None:
    store.apply(config())
    for call in (store.registry, store.endpoint, store.delete_registry):
        with pytest.raises(ConfigError, match="no registry named 'nope'"):
            call("nope")
    with pytest.raises(ConfigError, match="no registry named 'nope'"):
        store.webhook("nope")
    for call in (store.policy, store.delete_policy):
        with pytest.raises(ConfigError, match="no policy named 'nope'"):
            call("nope")


# --------------------------------------------------------------------------------- endpoint
def test_endpoint_resolves_everything_an_adapter_needs(store: Store) -> None:
    store.apply(config())
    assert store.endpoint("src") == Endpoint(
        url="https://src.example:5000", username="puller", password=SecretStr(SECRET), ca_certificate=PEM
    )
    assert store.endpoint("dst") == Endpoint(
        url="http://127.0.0.1:5001", username="pusher", password=SecretStr("dst-env-password"), insecure=True
    )


def test_endpoint_without_credential(store: Store) -> None:
    data = config_data()
    del data["registries"][1]["credential"]
    store.apply(parse_config(data))
    endpoint = store.endpoint("dst")
    assert endpoint.username is None
    assert endpoint.password is None


def test_endpoint_reads_a_ca_file(store: Store, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    data = config_data()
    data["registries"][0]["ca_certificate"] = str(ca)
    store.apply(parse_config(data))
    assert store.registry("src").ca_certificate == str(ca)
    assert store.endpoint("src").ca_certificate == PEM
    ca.write_text("no certificate here\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        store.endpoint("src")
    ca.unlink()
    with pytest.raises(ConfigError, match="cannot read the CA certificate file"):
        store.endpoint("src")


def test_endpoint_with_unset_env_names_the_variable(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply(config())
    monkeypatch.delenv("DST_PASSWORD")
    with pytest.raises(ConfigError, match="registry 'dst': environment variable DST_PASSWORD is not set"):
        store.endpoint("dst")


def test_endpoint_after_a_key_change(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply(config())
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match=r"cannot decrypt .*REGFLOW_SECRET_KEY changed\?"):
        store.endpoint("src")
    # Applying the file again re-encrypts the literal with the new key.
    assert store.apply(config()).updated == ["registry src"]
    assert store.endpoint("src").password == SecretStr(SECRET)


# ------------------------------------------------------------------------------ public view
def test_public_view_masks_the_secret_and_says_where_it_lives(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config_data()
    data["registries"].append({
        "name": "blocky", "type": "docker-registry", "url": "https://b.example",
        "credential": {"access_key": "u", "access_secret": "prefect-secret:blocky-password"},
    })
    store.apply(parse_config(data))
    views = {r.name: store.public_view(r) for r in store.registries()}
    assert views["src"]["credential"] == {
        "type": "basic", "access_key": "puller", "access_secret": "********", "source": "encrypted"
    }
    assert views["dst"]["credential"]["source"] == "env:DST_PASSWORD"
    assert views["blocky"]["credential"]["source"] == "prefect-secret:blocky-password"
    assert views["dst"]["insecure"] is True
    assert views["src"]["webhook"] == {
        "kind": "harbor", "auth": "hmac", "secret": "********", "source": "encrypted"
    }
    assert views["dst"]["webhook"] is None
    policy_view = store.public_view(store.policy("mirror-team-a"))
    assert policy_view["filters"] == [{"type": "name", "value": "team-a/**", "decoration": "matches"}]


# --------------------------------------------------------------------------------- webhooks
def test_webhook_secret_is_sealed_and_resolved(store: Store, db_file: Path) -> None:
    store.apply(config())
    src = store.registry("src")
    assert src.webhook is not None and src.credential is not None
    sealed = src.webhook.secret.get_secret_value()
    assert sealed.startswith("enc:v1:")
    assert WEBHOOK_SECRET not in sealed
    assert sealed != src.credential.access_secret.get_secret_value()
    assert store.webhook("src") == ResolvedWebhook(
        registry="src", kind="harbor", auth="hmac", secret=SecretStr(WEBHOOK_SECRET)
    )
    # A registry without a webhook has none, and its row does not even mention one.
    assert store.webhook("dst") is None
    assert all('"webhook"' not in spec for name, spec, *_ in rows(db_file)["registries"] if name == "dst")


def test_webhook_secret_applies_back_unchanged_and_changes_are_updates(store: Store, db_file: Path) -> None:
    store.apply(config())
    before = rows(db_file)
    exported = Config(version=1, registries=store.registries(), policies=store.policies())
    assert sorted(store.apply(exported).unchanged) == sorted(ALL)
    assert store.apply(config()) == ApplyReport(unchanged=ALL)
    assert rows(db_file) == before
    old_src = store.registry("src")
    data = config_data()
    data["registries"][0]["webhook"]["secret"] = "another-webhook-secret"
    assert store.apply(parse_config(data)).updated == ["registry src"]
    hook = store.webhook("src")
    assert hook is not None and hook.secret == SecretStr("another-webhook-secret")
    # Only the webhook secret was sealed again: the credential's sealed text was kept.
    new_src = store.registry("src")
    assert old_src.credential is not None and new_src.credential is not None
    assert new_src.credential.access_secret == old_src.credential.access_secret
    assert old_src.webhook is not None and new_src.webhook is not None
    assert new_src.webhook.secret != old_src.webhook.secret


def test_webhook_secret_by_reference(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_data()
    data["registries"][1]["webhook"] = {"kind": "dockerhub", "secret": "${DST_HOOK_SECRET}"}
    assert store.apply(parse_config(data)).updated == []
    dst = store.registry("dst")
    assert dst.webhook is not None
    assert dst.webhook.secret.get_secret_value() == "${DST_HOOK_SECRET}"
    assert store.webhook("dst") == ResolvedWebhook(
        registry="dst", kind="dockerhub", auth="bearer", secret=SecretStr("dst-env-hook-secret")
    )
    assert store.public_view(dst)["webhook"]["source"] == "env:DST_HOOK_SECRET"
    monkeypatch.delenv("DST_HOOK_SECRET")
    message = "registry 'dst': environment variable DST_HOOK_SECRET is not set"
    with pytest.raises(ConfigError, match=message) as info:
        store.webhook("dst")
    assert info.value.field == "webhook.secret"


def test_adding_a_webhook_is_an_update(store: Store) -> None:
    store.apply(config())
    data = config_data()
    data["registries"][1]["webhook"] = {"secret": "prefect-secret:dst-hook"}
    assert store.apply(parse_config(data)).updated == ["registry dst"]
    view = store.public_view(store.registry("dst"))
    assert view["webhook"] == {
        "kind": "distribution", "auth": "bearer", "secret": "********", "source": "prefect-secret:dst-hook"
    }
    del data["registries"][1]["webhook"]
    assert store.apply(parse_config(data)).updated == ["registry dst"]
    assert store.webhook("dst") is None


def test_webhook_secret_after_a_key_change(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply(config())
    monkeypatch.setenv("REGFLOW_SECRET_KEY", Fernet.generate_key().decode())
    message = r"registry 'src': cannot decrypt .*REGFLOW_SECRET_KEY changed\?"
    with pytest.raises(ConfigError, match=message) as info:
        store.webhook("src")
    assert info.value.field == "webhook.secret"
    assert store.apply(config()).updated == ["registry src"]
    hook = store.webhook("src")
    assert hook is not None and hook.secret == SecretStr(WEBHOOK_SECRET)


def test_a_webhook_secret_that_cannot_be_sealed_aborts_the_whole_apply(store: Store, db_file: Path) -> None:
    store.apply(config())
    before = rows(db_file)
    foreign = "enc:v1:" + Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    data = config_data()
    data["registries"][1]["url"] = "https://changed.example"
    data["registries"][0]["webhook"]["secret"] = foreign
    with pytest.raises(ConfigError, match="cannot decrypt") as info:
        store.apply(parse_config(data))
    assert info.value.field == "registries[0].webhook.secret"
    assert rows(db_file) == before


# ---------------------------------------------------------------------------------- the URL
def test_database_url_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "elsewhere" / "store.db"
    monkeypatch.setenv("REGFLOW_DATABASE_URL", f"sqlite:///{db}")
    with Store() as store:
        store.apply(config())
    assert db.is_file()
    assert db.stat().st_mode & 0o077 == 0


def test_postgres_urls_use_psycopg_and_hide_the_password() -> None:
    store = Store("postgresql://regflow:pw-in-url@db.example:5432/regflow")
    assert store.url.drivername == "postgresql+psycopg"
    assert "pw-in-url" not in repr(store)
    store.close()


def test_a_broken_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a database URL") as info:
        Store("nonsense with a pw-in-url")
    assert "pw-in-url" not in str(info.value)


def test_registry_options_reach_the_adapter_and_an_unchanged_row_stays_unchanged(store: Store) -> None:
    from adapters import create_adapter
    from adapters.quay import QuayAdapter

    data = config_data()
    data["registries"][1].update(type="quay", options={"namespaces": ["acme", "tools"],
                                                        "visibility": "public"})
    data["policies"] = [p for p in data["policies"] if p["dest_registry"] != "src"]
    store.apply(parse_config(data))
    again = store.apply(parse_config(data))
    assert "registry dst" in again.unchanged and not again.updated
    endpoint = store.endpoint("dst")
    assert endpoint.options == {"namespaces": ["acme", "tools"], "visibility": "public"}
    adapter = create_adapter("quay", endpoint)
    assert isinstance(adapter, QuayAdapter)
    assert adapter.visibility == "public"
    assert adapter._namespaces == ("acme", "tools")
