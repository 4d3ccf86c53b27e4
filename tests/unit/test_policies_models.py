from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.errors import ConfigError
from policies.models import (
    Config,
    Credential,
    Filter,
    Policy,
    Registry,
    SecretSource,
    Trigger,
    WebhookSettings,
    normalize_cron,
    parse_config,
)

SECRET = "hunter2-very-secret"


def registry(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "hub", "type": "docker-hub", "url": "https://registry-1.docker.io"}
    data.update(overrides)
    return data


def policy(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "mirror", "src_registry": "hub", "dest_registry": "local"}
    data.update(overrides)
    return data


def error_fields(info: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [".".join(str(part) for part in error["loc"]) for error in info.value.errors()]


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "mirror", "mirror-1.prod_x", "0day", "a" * 63])
def test_valid_names(value: str) -> None:
    assert Policy.model_validate(policy(name=value)).name == value
    assert Registry.model_validate(registry(name=value)).name == value


@pytest.mark.parametrize("value", ["", "Mirror", "-mirror", ".x", "_x", "a b", "a/b", "a" * 64, "é"])
def test_invalid_names_name_the_field_and_the_rule(value: str) -> None:
    for model, data in ((Policy, policy(name=value)), (Registry, registry(name=value))):
        with pytest.raises(ValidationError) as info:
            model.model_validate(data)
        assert error_fields(info) == ["name"]
        assert "Prefect deployment name" in str(info.value)


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (Policy, policy(dest_namspace="x"), "dest_namspace"),
        (Registry, registry(password="x"), "password"),
        (Credential, {"access_key": "u", "access_secret": "p", "token": "t"}, "token"),
        (Filter, {"type": "name", "value": "x", "kind": "glob"}, "kind"),
        (
            Trigger,
            {"type": "scheduled", "trigger_settings": {"cron": "* * * * *", "every": 5}},
            "trigger_settings.every",
        ),
        (Config, {"version": 1, "policy": []}, "policy"),
    ],
)
def test_unknown_fields_are_errors_naming_the_field(
    model: type[Any], data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    assert field in error_fields(info)
    assert "Extra inputs are not permitted" in str(info.value)


# --- credentials -------------------------------------------------------------------------


def test_secret_never_shows_in_repr_str_or_json() -> None:
    reg = Registry.model_validate(registry(credential={"access_key": "bob", "access_secret": SECRET}))
    assert reg.credential is not None
    for text in (repr(reg), str(reg), reg.model_dump_json(), json.dumps(reg.model_dump(mode="json"))):
        assert SECRET not in text
        assert "bob" in text
    assert reg.credential.access_secret.get_secret_value() == SECRET


def test_secret_never_shows_in_validation_errors() -> None:
    bad = {"version": 1, "registries": [registry(credential={"type": "basic", "access_secret": SECRET})]}
    with pytest.raises(ValidationError) as info:
        Config.model_validate(bad)
    assert SECRET not in str(info.value)
    assert "access_key" in str(info.value)
    with pytest.raises(ConfigError) as config_info:
        parse_config(bad)
    assert SECRET not in str(config_info.value)


@pytest.mark.parametrize(
    ("secret", "source"),
    [
        (SECRET, SecretSource("literal", "")),
        ("${HUB_TOKEN}", SecretSource("env", "HUB_TOKEN")),
        ("prefect-secret:hub-token", SecretSource("prefect-secret", "hub-token")),
        ("pa${ss", SecretSource("literal", "")),
    ],
)
def test_secret_source(secret: str, source: SecretSource) -> None:
    cred = Credential(access_key="bob", access_secret=secret)  # type: ignore[arg-type]
    assert cred.secret_source == source
    assert cred.access_secret.get_secret_value() == secret


@pytest.mark.parametrize(
    ("secret", "phrase"),
    [
        ("", "access_secret is empty"),
        ("${HUB TOKEN}", "not a ${ENV_VAR} reference"),
        ("${HUB_TOKEN", "not a ${ENV_VAR} reference"),
        ("${1X}", "not a ${ENV_VAR} reference"),
        ("prefect-secret:", "needs a block name"),
        ("prefect-secret:Hub_Token", "needs a block name"),
    ],
)
def test_malformed_secret_references(secret: str, phrase: str) -> None:
    with pytest.raises(ValidationError) as info:
        Credential.model_validate({"access_key": "bob", "access_secret": secret})
    assert error_fields(info) == ["access_secret"]
    assert phrase in str(info.value)
    # The text may be a real secret with a typo: errors must not echo it.
    assert not secret or repr(secret) not in str(info.value)


def test_basic_credential_needs_access_key_but_oauth_does_not() -> None:
    with pytest.raises(ValidationError, match="access_key: a basic credential needs a user name"):
        Credential.model_validate({"access_secret": "x"})
    cred = Credential.model_validate({"type": "oauth", "access_secret": "token"})
    assert cred.access_key == ""


def test_unknown_credential_type() -> None:
    with pytest.raises(ValidationError) as info:
        Credential.model_validate({"type": "secret", "access_key": "a", "access_secret": "b"})
    assert error_fields(info) == ["type"]


# --- webhooks ----------------------------------------------------------------------------


def test_webhook_defaults_and_registry_without_webhook() -> None:
    hook = WebhookSettings.model_validate({"secret": SECRET})
    assert (hook.kind, hook.auth) == ("distribution", "bearer")
    assert hook.secret.get_secret_value() == SECRET
    assert Registry.model_validate(registry()).webhook is None


@pytest.mark.parametrize(
    ("secret", "source"),
    [
        (SECRET, SecretSource("literal", "")),
        ("${HOOK_SECRET}", SecretSource("env", "HOOK_SECRET")),
        ("prefect-secret:hook-secret", SecretSource("prefect-secret", "hook-secret")),
        ("pa${ss", SecretSource("literal", "")),
    ],
)
def test_webhook_secret_takes_the_credential_forms(secret: str, source: SecretSource) -> None:
    reg = Registry.model_validate(registry(webhook={"kind": "harbor", "auth": "hmac", "secret": secret}))
    assert reg.webhook is not None
    assert (reg.webhook.kind, reg.webhook.auth) == ("harbor", "hmac")
    assert reg.webhook.secret_source == source
    assert reg.webhook.secret.get_secret_value() == secret


@pytest.mark.parametrize(
    ("secret", "phrase"),
    [
        ("", "secret is empty"),
        ("${HOOK SECRET}", "not a ${ENV_VAR} reference"),
        ("${HOOK_SECRET", "not a ${ENV_VAR} reference"),
        ("prefect-secret:", "needs a block name"),
        ("prefect-secret:Hook_Secret", "needs a block name"),
    ],
)
def test_malformed_webhook_secrets(secret: str, phrase: str) -> None:
    with pytest.raises(ValidationError) as info:
        Registry.model_validate(registry(webhook={"secret": secret}))
    assert error_fields(info) == ["webhook.secret"]
    assert phrase in str(info.value)
    assert "access_secret" not in str(info.value)
    assert not secret or repr(secret) not in str(info.value)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "quay", "secret": "x"}, "webhook.kind"),
        ({"auth": "basic", "secret": "x"}, "webhook.auth"),
        ({"kind": "harbor"}, "webhook.secret"),
        ({"secret": "x", "token": "t"}, "webhook.token"),
    ],
)
def test_bad_webhook_settings_name_the_field(data: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"version": 1, "registries": [registry(webhook=data)]})
    assert info.value.field == f"registries[0].{field}"


def test_webhook_secret_never_shows_in_repr_json_or_errors() -> None:
    reg = Registry.model_validate(registry(webhook={"kind": "dockerhub", "secret": SECRET}))
    for text in (repr(reg), str(reg), reg.model_dump_json(), json.dumps(reg.model_dump(mode="json"))):
        assert SECRET not in text
        assert "dockerhub" in text
    bad = {"version": 1, "registries": [registry(webhook={"kind": "nope", "secret": SECRET})]}
    with pytest.raises(ValidationError) as info:
        Config.model_validate(bad)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError) as config_info:
        parse_config(bad)
    assert SECRET not in str(config_info.value)


# --- registries --------------------------------------------------------------------------


def test_registry_defaults() -> None:
    reg = Registry.model_validate(registry())
    assert (reg.description, reg.credential, reg.insecure, reg.ca_certificate) == ("", None, False, None)


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://registry-1.docker.io", "https://registry-1.docker.io"),
        ("https://harbor.example.com/", "https://harbor.example.com"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("https://example.com/mirror/prefix//", "https://example.com/mirror/prefix"),
        ("http://[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_registry_urls_are_stored_without_trailing_slash(url: str, stored: str) -> None:
    assert Registry.model_validate(registry(url=url)).url == stored


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("registry-1.docker.io", "is not an http(s)://host[:port][/prefix] URL"),
        ("ftp://example.com", "is not an http(s)://host[:port][/prefix] URL"),
        ("https://", "is not an http(s)://host[:port][/prefix] URL"),
        (" https://example.com", "is not an http(s)://host[:port][/prefix] URL"),
        ("https://bob:pw@example.com", "must not carry credentials"),
        ("https://example.com/?x=1", "must not have a query or fragment"),
        ("https://example.com#x", "must not have a query or fragment"),
        ("https://example.com:99999", "invalid port"),
        ("https://example.com/v2/", "leave out '/v2'"),
    ],
)
def test_bad_registry_urls(url: str, phrase: str) -> None:
    with pytest.raises(ValidationError) as info:
        Registry.model_validate(registry(url=url))
    assert error_fields(info) == ["url"]
    assert phrase in str(info.value)


@pytest.mark.parametrize("value", ["harbor", "docker-registry", "huawei-SWR", "aws-ecr"])
def test_registry_type_strings(value: str) -> None:
    assert Registry.model_validate(registry(type=value)).type == value


@pytest.mark.parametrize("value", ["", "docker registry", "-x", "a/b"])
def test_bad_registry_type_strings(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Registry.model_validate(registry(type=value))
    assert error_fields(info) == ["type"]


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("value", "stored"),
    [(PEM, PEM), ("/etc/regflow/ca.pem", "/etc/regflow/ca.pem"), ("", None), ("  \n", None), (None, None)],
)
def test_ca_certificate_pem_or_path(value: str | None, stored: str | None) -> None:
    assert Registry.model_validate(registry(ca_certificate=value)).ca_certificate == stored


@pytest.mark.parametrize(
    ("value", "phrase"),
    [("-----BEGIN CERTIFICATE-----\nMIIB\n", "no END line"), ("MIIB\nAAAA\n", "neither PEM text")],
)
def test_bad_ca_certificate(value: str, phrase: str) -> None:
    with pytest.raises(ValidationError) as info:
        Registry.model_validate(registry(ca_certificate=value))
    assert error_fields(info) == ["ca_certificate"]
    assert phrase in str(info.value)


# --- filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"type": "name", "value": "library/**"},
        {"type": "name", "value": ""},
        {"type": "tag", "value": "v{1,2}.*", "decoration": "excludes"},
        {"type": "label", "value": "prod"},
        {"type": "resource", "value": "image"},
        {"type": "resource", "value": "chart"},
        {"type": "resource", "value": "artifact"},
    ],
)
def test_valid_filters(data: dict[str, str]) -> None:
    f = Filter.model_validate(data)
    assert (f.type, f.value, f.decoration) == (data["type"], data["value"], data.get("decoration", "matches"))


@pytest.mark.parametrize(
    ("data", "field", "phrase"),
    [
        ({"type": "name", "value": "lib["}, "value", "never closed"),
        ({"type": "tag", "value": "{v1,v2"}, "value", "'{' is never closed"),
        ({"type": "resource", "value": "helm"}, "value", "must be one of artifact, chart, image"),
        ({"type": "resource", "value": "image", "decoration": "excludes"}, "decoration", "only selects"),
        ({"type": "repository", "value": "x"}, "type", "'name', 'tag', 'label' or 'resource'"),
        ({"type": "name", "value": "x", "decoration": "include"}, "decoration", "'matches' or 'excludes'"),
        ({"type": "name"}, "value", "Field required"),
    ],
)
def test_invalid_filters_name_the_field(data: dict[str, str], field: str, phrase: str) -> None:
    with pytest.raises(ValidationError) as info:
        Filter.model_validate(data)
    assert error_fields(info) == [field]
    assert phrase in str(info.value)


def test_label_values_are_not_globs() -> None:
    assert Filter(type="label", value="team[a").value == "team[a"


# --- triggers ----------------------------------------------------------------------------


def test_default_trigger_is_manual_without_settings() -> None:
    trigger = Policy.model_validate(policy()).trigger
    assert trigger.type == "manual"
    assert trigger.trigger_settings.cron is None
    assert trigger.trigger_settings.interval_seconds is None


@pytest.mark.parametrize(
    ("cron", "stored"),
    [
        ("0 0 * * * *", "0 * * * *"),
        ("0 30 2 * * 1-5", "30 2 * * 1-5"),
        ("0 0 0 * * ?", "0 0 * * ?"),
        ("*/15 * * * *", "*/15 * * * *"),
        ("  5  4 * *   sun ", "5 4 * * sun"),
        ("0 9 1,15 jan-jun MON-FRI", "0 9 1,15 jan-jun MON-FRI"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 * * 5#3", "0 0 * * 5#3"),
        ("@daily", "@daily"),
        ("@Hourly", "@hourly"),
    ],
)
def test_scheduled_cron_is_stored_in_five_field_form(cron: str, stored: str) -> None:
    trigger = Trigger.model_validate({"type": "scheduled", "trigger_settings": {"cron": cron}})
    assert trigger.trigger_settings.cron == stored


@pytest.mark.parametrize(
    ("cron", "phrase"),
    [
        ("30 0 * * * *", "seconds field of a 6-field cron must be 0"),
        ("* * * *", "needs 5 fields"),
        ("0 0 0 * * * *", "needs 5 fields"),
        ("60 * * * *", "minute field '60' is invalid"),
        ("* 24 * * *", "hour field '24' is invalid"),
        ("* * 0 * *", "day of month field '0' is invalid"),
        ("* * * 13 *", "month field '13' is invalid"),
        ("* * * * 8", "day of week field '8' is invalid"),
        ("*/0 * * * *", "minute field '*/0' is invalid"),
        ("a * * * *", "minute field 'a' is invalid"),
        ("? * * * *", "minute field '?' is invalid"),
        ("H * * * *", "minute field 'H' is invalid"),
        ("0 0 * * 1#6", "day of week field '1#6' is invalid"),
        ("@reboot", "needs 5 fields"),
    ],
)
def test_bad_cron_names_the_field(cron: str, phrase: str) -> None:
    with pytest.raises(ValidationError) as info:
        Trigger.model_validate({"type": "scheduled", "trigger_settings": {"cron": cron}})
    assert error_fields(info) == ["trigger_settings.cron"]
    assert phrase in str(info.value)


def test_accepted_crons_are_accepted_by_prefects_croniter() -> None:
    # Prefect validates deployment schedules with its vendored croniter: whatever we accept
    # must be a schedule Prefect can create, or the deployment would fail later.
    vendored = pytest.importorskip("prefect._vendor.croniter")
    for expression in [
        "0 * * * *",
        "30 2 * * 1-5",
        "0 0 * * ?",
        "5 4 * * sun",
        "0 9 1,15 jan-jun MON-FRI",
        "0 0 L * *",
        "0 0 * * 5#3",
        "@daily",
        "50-10 * * * *",
        "5/15 * * * *",
        "0 0 * * 7",
    ]:
        assert normalize_cron(expression) == expression
        assert vendored.croniter.is_valid(expression), expression


def test_scheduled_interval() -> None:
    trigger = Trigger.model_validate({"type": "scheduled", "trigger_settings": {"interval_seconds": 3600}})
    assert trigger.trigger_settings.interval_seconds == 3600


@pytest.mark.parametrize("seconds", [0, -5])
def test_interval_must_be_positive(seconds: int) -> None:
    with pytest.raises(ValidationError) as info:
        Trigger.model_validate({"type": "scheduled", "trigger_settings": {"interval_seconds": seconds}})
    assert error_fields(info) == ["trigger_settings.interval_seconds"]


@pytest.mark.parametrize(
    ("settings", "phrase"),
    [
        ({}, "exactly one of cron and interval_seconds"),
        ({"cron": ""}, "exactly one of cron and interval_seconds"),
        ({"cron": "0 * * * *", "interval_seconds": 60}, "got both"),
    ],
)
def test_scheduled_needs_exactly_one_setting(settings: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ValidationError, match="trigger_settings: ") as info:
        Trigger.model_validate({"type": "scheduled", "trigger_settings": settings})
    assert phrase in str(info.value)


@pytest.mark.parametrize("kind", ["manual", "event_based"])
def test_unscheduled_triggers_refuse_schedule_settings(kind: str) -> None:
    with pytest.raises(ValidationError, match=r"trigger_settings\.cron is only used by a scheduled trigger"):
        Trigger.model_validate({"type": kind, "trigger_settings": {"cron": "0 * * * *"}})
    with pytest.raises(ValidationError, match=r"trigger_settings\.interval_seconds is only used"):
        Trigger.model_validate({"type": kind, "trigger_settings": {"interval_seconds": 60}})


def test_harbor_export_of_a_manual_trigger_with_empty_cron() -> None:
    trigger = Trigger.model_validate({"type": "manual", "trigger_settings": {"cron": ""}})
    assert trigger.trigger_settings.cron is None


def test_unknown_trigger_type() -> None:
    with pytest.raises(ValidationError) as info:
        Trigger.model_validate({"type": "webhook"})
    assert error_fields(info) == ["type"]


# --- policies ----------------------------------------------------------------------------


def test_policy_defaults_follow_harbor() -> None:
    p = Policy.model_validate(policy())
    assert p.description == ""
    assert p.dest_namespace == ""
    assert p.dest_namespace_replace_count == -1
    assert p.filters == []
    assert p.replicate_deletion is False
    assert p.override is True
    assert p.enabled is True
    assert p.speed == -1
    assert p.copy_by_chunk is False
    assert p.single_active_replication is False


@pytest.mark.parametrize("missing", ["src_registry", "dest_registry"])
def test_both_registries_are_required(missing: str) -> None:
    data = policy()
    del data[missing]
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(data)
    assert error_fields(info) == [missing]
    assert "both src_registry and dest_registry are required" in str(info.value)
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(policy(**{missing: ""}))
    assert error_fields(info) == [missing]


@pytest.mark.parametrize("namespace", ["", "mirror", "org/team", "a.b_c__d--e", "x0/y1/z2"])
def test_valid_dest_namespaces(namespace: str) -> None:
    assert Policy.model_validate(policy(dest_namespace=namespace)).dest_namespace == namespace


@pytest.mark.parametrize("namespace", ["Mirror", "org/", "/org", "a//b", "-a", "a..b", "a b", "a" * 256])
def test_invalid_dest_namespaces(namespace: str) -> None:
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(policy(dest_namespace=namespace))
    assert error_fields(info) == ["dest_namespace"]
    assert "is not a repository path" in str(info.value)


def test_replace_count_lower_bound() -> None:
    assert Policy.model_validate(policy(dest_namespace_replace_count=3)).dest_namespace_replace_count == 3
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(policy(dest_namespace_replace_count=-2))
    assert error_fields(info) == ["dest_namespace_replace_count"]


@pytest.mark.parametrize("speed", [-1, 1, 10_000])
def test_valid_speeds(speed: int) -> None:
    assert Policy.model_validate(policy(speed=speed)).speed == speed


@pytest.mark.parametrize("speed", [0, -2])
def test_invalid_speeds(speed: int) -> None:
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(policy(speed=speed))
    assert error_fields(info) == ["speed"]
    assert "-1 (unlimited) or a positive number of Kbit/s" in str(info.value)


def test_filters_are_validated_inside_a_policy() -> None:
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(
            policy(filters=[{"type": "name", "value": "ok"}, {"type": "tag", "value": "["}])
        )
    assert error_fields(info) == ["filters.1.value"]


@pytest.mark.parametrize(("namespace", "count"), [("", -1), ("", 0)])
def test_same_registry_same_namespace_is_refused(namespace: str, count: int) -> None:
    with pytest.raises(ValidationError, match="copied onto itself"):
        Policy.model_validate(
            policy(dest_registry="hub", dest_namespace=namespace, dest_namespace_replace_count=count)
        )


def test_same_registry_into_another_namespace_is_allowed() -> None:
    p = Policy.model_validate(policy(dest_registry="hub", dest_namespace="backup"))
    assert p.src_registry == p.dest_registry == "hub"
    stripped = Policy.model_validate(
        policy(
            dest_registry="hub",
            dest_namespace_replace_count=1,
            filters=[{"type": "name", "value": "team/app"}],
        )
    )
    assert stripped.dest_namespace_replace_count == 1


def test_same_registry_literal_repository_mapped_onto_itself_is_refused() -> None:
    with pytest.raises(ValidationError, match="'n/img' would be copied onto itself"):
        Policy.model_validate(
            policy(dest_registry="hub", dest_namespace="n", filters=[{"type": "name", "value": "n/img"}])
        )


def test_literal_names_are_checked_against_the_replace_count() -> None:
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(
            policy(
                dest_namespace="n",
                dest_namespace_replace_count=2,
                filters=[{"type": "name", "value": "library/{nginx,redis}"}],
            )
        )
    assert "dest_namespace_replace_count: the source repository 'library/nginx'" in str(info.value)


def test_assignment_is_validated() -> None:
    p = Policy.model_validate(policy())
    with pytest.raises(ValidationError) as info:
        p.speed = 0
    assert error_fields(info) == ["speed"]


# --- config file -------------------------------------------------------------------------

HARBOR_LIKE = {
    "version": 1,
    "registries": [
        registry(credential={"access_key": "bob", "access_secret": "${HUB_TOKEN}"}),
        {
            "name": "local",
            "description": "on-prem Harbor",
            "type": "harbor",
            "url": "https://harbor.example.com/",
            "insecure": True,
        },
    ],
    "policies": [
        policy(
            description="mirror library images",
            dest_namespace="mirror",
            dest_namespace_replace_count=1,
            filters=[
                {"type": "name", "value": "library/**"},
                {"type": "tag", "value": "*-rc*", "decoration": "excludes"},
                {"type": "resource", "value": "image"},
            ],
            trigger={"type": "scheduled", "trigger_settings": {"cron": "0 0 3 * * *"}},
            replicate_deletion=False,
            override=False,
            speed=2048,
            copy_by_chunk=True,
            single_active_replication=True,
        ),
        {
            "name": "back",
            "src_registry": "local",
            "dest_registry": "hub",
            "dest_namespace": "backup",
            "trigger": {"type": "event_based"},
        },
    ],
}


def test_full_config_parses() -> None:
    config = parse_config(HARBOR_LIKE)
    assert [r.name for r in config.registries] == ["hub", "local"]
    assert config.registries[1].url == "https://harbor.example.com"
    mirror = config.policies[0]
    assert mirror.trigger.trigger_settings.cron == "0 3 * * *"
    assert [f.type for f in mirror.filters] == ["name", "tag", "resource"]
    assert config.registries[0].credential is not None
    assert config.registries[0].credential.secret_source == SecretSource("env", "HUB_TOKEN")
    assert Config.model_validate(HARBOR_LIKE) == config


def test_empty_config() -> None:
    config = parse_config({"version": 1})
    assert (config.registries, config.policies) == ([], [])


@pytest.mark.parametrize("version", [0, 2, "1.0", None])
def test_config_version_must_be_1(version: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"version": version})
    assert info.value.field == "version"
    assert str(info.value).startswith("version: ")


def test_duplicate_names_are_refused() -> None:
    data = json.loads(json.dumps(HARBOR_LIKE))
    data["registries"].append(registry(url="https://other.example.com"))
    data["policies"].append(policy(name="back", dest_namespace="x"))
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "registries[2].name: duplicate registry name 'hub'" in str(info.value)
    assert "policies[2] ('back').name: duplicate policy name 'back'" in str(info.value)


def test_a_policy_may_name_registries_outside_its_file() -> None:
    # A policy-only file is valid on its own; the store refuses names it does not hold
    # (tests/unit/test_store.py), so the file parses and the check happens at apply.
    data = json.loads(json.dumps(HARBOR_LIKE))
    data["registries"] = []
    config = parse_config(data)
    assert [p.src_registry for p in config.policies] == [p["src_registry"] for p in HARBOR_LIKE["policies"]]


def test_parse_config_reports_every_field_error_with_its_location() -> None:
    data = json.loads(json.dumps(HARBOR_LIKE))
    data["registries"][1]["url"] = "harbor.example.com"
    data["policies"][0]["filters"][1]["decoration"] = "exclude"
    data["policies"][1]["speeed"] = 5
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert info.value.field == "registries[1].url"
    assert "registries[1].url: 'harbor.example.com' is not an http(s)" in message
    assert "policies[0].filters[1].decoration: Input should be 'matches' or 'excludes'" in message
    assert "policies[1].speeed: Extra inputs are not permitted" in message
    assert "Value error," not in message


def test_parse_config_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="valid dictionary"):
        parse_config(["version", 1])
