"""Issue 19, `regflow import harbor`: Harbor's registries and replication policies (the JSON its
API answers, go-swagger's omitted zero fields included) mapped to a regflow config, field by
field; what cannot map is left out or changed with its reason; the reader pages and authenticates
against a fake Harbor."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.errors import AuthenticationError, ConfigError
from adapters.harbor_replication import read_replication
from policies.harbor_import import (
    HarborPolicy,
    HarborRegistry,
    ImportResult,
    Note,
    env_name,
    import_harbor,
    parse_harbor,
    regflow_name,
)
from policies.models import parse_config
from tests.support.fake_harbor import (
    FakeHarbor,
    filter_json,
    local_registry_json,
    registry_json,
    replication_policy_json,
    trigger_json,
)

HARBOR = "https://harbor.example.com"
HUB = registry_json(3, "Docker Hub", "docker-hub", "https://hub.docker.com", access_key="hubber", secret=True,
                    description="pulls from the Hub")
MIRROR = registry_json(4, "mirror", "docker-registry", "https://mirror.example.com:5000/", insecure=True,
                       access_key="robot", secret=True)
GHCR = registry_json(5, "ghcr", "github-ghcr", "https://ghcr.io")
DC2 = registry_json(12, "dc2", "harbor", "https://harbor2.example.com", access_key="robot$dc2", secret=True)
LOCAL = local_registry_json()


def run(registries: list[dict[str, Any]], policies: list[dict[str, Any]], **kw: Any) -> ImportResult:
    return import_harbor(HARBOR, "admin", parse_harbor(HarborRegistry, registries, "registries"),
                         parse_harbor(HarborPolicy, policies, "policies"), **kw)


def policy(result: ImportResult, name: str) -> dict[str, Any]:
    return next(p for p in result.document["policies"] if p["name"] == name)


def registry(result: ImportResult, name: str) -> dict[str, Any]:
    return next(r for r in result.document["registries"] if r["name"] == name)


def notes(result: ImportResult, item: str) -> list[Note]:
    return [n for n in result.notes if n.item == item]


def one_policy(**kw: Any) -> dict[str, Any]:
    return replication_policy_json(7, "p", src=LOCAL, dest=MIRROR, **kw)


# -- registries -------------------------------------------------------------------------------------


def test_registry_fields_map_and_secrets_become_placeholders() -> None:
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    oauth = registry_json(6, "quay", "quay", "https://quay.io", access_key="", secret=True,
                          credential_type="oauth", ca_certificate=ca)
    result = run([HUB, MIRROR, GHCR, oauth], [])
    assert registry(result, "docker-hub") == {
        "name": "docker-hub", "type": "docker-hub", "url": "https://hub.docker.com",
        "description": "pulls from the Hub", "insecure": False,
        "credential": {"type": "basic", "access_key": "hubber",
                       "access_secret": "${REGFLOW_DOCKER_HUB_ACCESS_SECRET}"}}
    # The trailing slash goes; insecure carries over.
    assert registry(result, "mirror")["url"] == "https://mirror.example.com:5000"
    assert registry(result, "mirror")["insecure"] is True
    # No credential in Harbor (anonymous pull): none here either.
    assert "credential" not in registry(result, "ghcr")
    assert registry(result, "quay")["credential"] == {
        "type": "oauth", "access_key": "", "access_secret": "${REGFLOW_QUAY_ACCESS_SECRET}"}
    assert registry(result, "quay")["ca_certificate"] == ca
    assert [p.variable for p in result.placeholders] == [
        "REGFLOW_DOCKER_HUB_ACCESS_SECRET", "REGFLOW_MIRROR_ACCESS_SECRET", "REGFLOW_QUAY_ACCESS_SECRET"]
    # Harbor's mask never lands in the file.
    assert "*****" not in repr(result.document)
    rename = next(n for n in notes(result, "registry") if "Docker Hub" in n.harbor)
    assert (rename.outcome, rename.regflow) == ("changed", "docker-hub")
    assert "renamed" in rename.reason


def test_a_type_regflow_lacks_is_left_out_with_its_policies() -> None:
    odd = registry_json(9, "odd", "acme-cr", "https://cr.acme.example")
    result = run([odd, MIRROR], [replication_policy_json(1, "from-odd", src=odd, dest=LOCAL),
                                 replication_policy_json(2, "push", src=LOCAL, dest=MIRROR)])
    assert [r["name"] for r in result.document["registries"]] == ["mirror", "harbor.example.com"]
    skipped = {n.harbor: n.reason for n in result.notes if n.outcome == "skipped"}
    assert "'acme-cr'" in skipped["registry 'odd' (id 9)"]
    assert "registry 'odd' (id 9) was not imported" in skipped["policy 'from-odd' (id 1)"]
    assert [p["name"] for p in result.document["policies"]] == ["push"]


def test_names_are_made_valid_and_unique() -> None:
    taken: set[str] = set()
    assert regflow_name("Docker Hub", taken, "x") == "docker-hub"
    assert regflow_name("docker_hub", taken, "x") == "docker_hub"
    assert regflow_name("DOCKER HUB", taken, "x") == "docker-hub-2"
    assert regflow_name("!!!", taken, "registry-1") == "registry-1"
    assert len(regflow_name("a" * 80, taken, "x")) == 63
    envs: set[str] = set()
    assert env_name("docker-hub", "_S", envs) == "REGFLOW_DOCKER_HUB_S"
    assert env_name("docker.hub", "_S", envs) == "REGFLOW_DOCKER_HUB_2_S"


def test_the_local_side_becomes_one_harbor_entry_for_the_url() -> None:
    # id 0 ("Local", Harbor's internal core URL) and null both mean the Harbor itself.
    result = run([MIRROR], [replication_policy_json(1, "push", src=LOCAL, dest=MIRROR),
                            replication_policy_json(2, "pull", src=MIRROR, dest=None)])
    local = registry(result, "harbor.example.com")
    assert local == {"name": "harbor.example.com", "type": "harbor", "url": HARBOR,
                     "description": "the Harbor this file was imported from", "insecure": False,
                     "credential": {"type": "basic", "access_key": "admin",
                                    "access_secret": "${REGFLOW_HARBOR_EXAMPLE_COM_ACCESS_SECRET}"}}
    assert (policy(result, "push")["src_registry"], policy(result, "push")["dest_registry"]) == \
        ("harbor.example.com", "mirror")
    assert (policy(result, "pull")["src_registry"], policy(result, "pull")["dest_registry"]) == \
        ("mirror", "harbor.example.com")
    named = run([MIRROR], [replication_policy_json(1, "push", src=LOCAL, dest=MIRROR)],
                local_name="mirror", insecure=True, ca_certificate="/etc/harbor/ca.pem")
    # A name already taken by one of Harbor's registries gets a suffix; --insecure and --ca-cert
    # mark the entry.
    assert registry(named, "mirror-2")["type"] == "harbor"
    assert registry(named, "mirror-2")["insecure"] is True
    assert registry(named, "mirror-2")["ca_certificate"] == "/etc/harbor/ca.pem"
    assert "ca_certificate" not in local
    with pytest.raises(ConfigError, match="--local-name"):
        run([], [], local_name="Not Valid")


def test_both_sides_local_or_no_policies() -> None:
    result = run([], [replication_policy_json(1, "self", src=LOCAL, dest=None)])
    assert result.document["policies"] == []
    assert notes(result, "policy")[0].reason == "both sides are the local Harbor"
    assert run([MIRROR], []).document["registries"] == [registry(run([MIRROR], []), "mirror")]


# -- policies ---------------------------------------------------------------------------------------


def test_every_policy_field_maps() -> None:
    harbor = replication_policy_json(
        11, "nightly-push", src=LOCAL, dest=MIRROR, description="to the mirror",
        dest_namespace="mirror", dest_namespace_replace_count=1, replicate_deletion=True,
        override=False, enabled=False, speed=2048, copy_by_chunk=True, single_active_replication=True,
        filters=[filter_json("name", "library/**"), filter_json("tag", "v*", "excludes"),
                 filter_json("label", ["prod", "signed"], "matches"), filter_json("resource", "image")],
        trigger=trigger_json("scheduled", "0 0 3 * * *"))
    # go-swagger leaves out false fields: Harbor's zero, not regflow's default, is meant.
    assert "override" not in harbor and "enabled" not in harbor
    result = run([MIRROR], [harbor])
    assert policy(result, "nightly-push") == {
        "name": "nightly-push", "description": "to the mirror",
        "src_registry": "harbor.example.com", "dest_registry": "mirror",
        "dest_namespace": "mirror", "dest_namespace_replace_count": 1,
        "filters": [{"type": "name", "value": "library/**", "decoration": "matches"},
                    {"type": "tag", "value": "v*", "decoration": "excludes"},
                    {"type": "label", "value": "prod,signed", "decoration": "matches"},
                    {"type": "resource", "value": "image", "decoration": "matches"}],
        "trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 3 * * *"}},
        "replicate_deletion": True, "override": False, "enabled": False, "speed": 2048,
        "copy_by_chunk": True, "single_active_replication": True}
    stored = result.config.policies[0]
    assert (stored.override, stored.enabled, stored.speed) == (False, False, 2048)
    speed = next(n for n in result.notes if n.harbor.endswith("speed"))
    assert speed.outcome == "changed" and "each task" in speed.reason
    assert [n.item for n in result.notes[-7:]] == [
        "policy", "filter", "filter", "filter", "filter", "trigger", "field"]


def test_harbor_zero_and_null_fields() -> None:
    harbor = one_policy(speed=None, copy_by_chunk=None, single_active_replication=None,
                        dest_namespace_replace_count=None)
    harbor["deletion"] = True  # only the deprecated name set: still a replicated deletion
    result = run([MIRROR], [harbor])
    mapped = policy(result, "p")
    assert (mapped["speed"], mapped["copy_by_chunk"]) == (-1, False)
    assert mapped["single_active_replication"] is False
    assert mapped["dest_namespace_replace_count"] == -1
    assert mapped["replicate_deletion"] is True
    assert (mapped["override"], mapped["enabled"]) == (True, True)
    assert run([MIRROR], [one_policy(speed=0)]).document["policies"][0]["speed"] == -1


@pytest.mark.parametrize(("trigger", "expected", "outcome", "why"), [
    (None, {"type": "manual"}, "maps", ""),
    (trigger_json("manual"), {"type": "manual"}, "maps", ""),
    (trigger_json("scheduled", "0 */15 * * * *"),
     {"type": "scheduled", "trigger_settings": {"cron": "*/15 * * * *"}}, "changed", "minute resolution"),
    (trigger_json("scheduled", "5 4 * * sun"),
     {"type": "scheduled", "trigger_settings": {"cron": "5 4 * * sun"}}, "maps", ""),
    (trigger_json("scheduled", "30 0 3 * * *"), {"type": "manual"}, "changed", "seconds field"),
    (trigger_json("scheduled", ""), {"type": "manual"}, "changed", "exactly one of cron"),
    (trigger_json("event_based"), {"type": "event_based"}, "maps", ""),
    (trigger_json("on_the_moon"), {"type": "manual"}, "changed", "'on_the_moon' regflow lacks"),
])
def test_trigger_kinds(trigger: dict[str, Any] | None, expected: dict[str, Any], outcome: str,
                       why: str) -> None:
    harbor = one_policy(trigger=trigger)
    if trigger is None:
        del harbor["trigger"]
    result = run([MIRROR], [harbor])
    assert policy(result, "p")["trigger"] == expected
    note = notes(result, "trigger")[0]
    assert note.outcome == outcome and why in note.reason


def test_event_based_from_the_local_harbor_adds_its_webhook() -> None:
    result = run([MIRROR], [one_policy(trigger=trigger_json("event_based"))])
    assert registry(result, "harbor.example.com")["webhook"] == {
        "kind": "harbor", "auth": "bearer", "secret": "${REGFLOW_HARBOR_EXAMPLE_COM_WEBHOOK_SECRET}"}
    assert "REGFLOW_HARBOR_EXAMPLE_COM_WEBHOOK_SECRET" in [p.variable for p in result.placeholders]
    # A source that cannot notify regflow: the policy stays, run by hand.
    pull = run([GHCR], [replication_policy_json(1, "pull", src=GHCR, dest=LOCAL,
                                                trigger=trigger_json("event_based"))])
    assert policy(pull, "pull")["trigger"] == {"type": "manual"}
    assert "'github-ghcr' source cannot start event_based runs" in notes(pull, "trigger")[0].reason
    assert "webhook" not in registry(pull, "harbor.example.com")


@pytest.mark.parametrize(("filters", "why"), [
    ([filter_json("digest", "sha256:*")], "filter kind 'digest' regflow lacks"),
    ([filter_json("label", ["a,b"])], "separates names"),
    ([filter_json("label", 7)], "not a list of label names"),
    ([filter_json("name", ["x"])], "not a string"),
    ([filter_json("name", "lib/[z-a]")], "reversed range"),
    ([filter_json("resource", "image", "excludes")], "only selects"),
    ([filter_json("resource", "helm")], "holds no 'helm' resources"),
    ([filter_json("name", "app")], "path component"),  # a Harbor target needs project/repository
])
def test_unmappable_filters_skip_their_policy(filters: list[dict[str, Any]], why: str) -> None:
    result = run([DC2, MIRROR], [replication_policy_json(1, "pull", src=DC2, dest=LOCAL, filters=filters),
                                 replication_policy_json(2, "push", src=LOCAL, dest=MIRROR)])
    assert [p["name"] for p in result.document["policies"]] == ["push"]
    skipped = next(n for n in result.notes if n.outcome == "skipped")
    assert skipped.harbor == "policy 'pull' (id 1)" and why in skipped.reason, skipped
    # Nothing of a skipped policy is left in the notes but its one line.
    assert not [n for n in result.notes if n.harbor.startswith("policy 'pull' (id 1) ")]


def test_label_filters_need_a_source_with_labels() -> None:
    result = run([HUB], [replication_policy_json(1, "pull", src=HUB, dest=LOCAL,
                                                 filters=[filter_json("label", ["prod"])])])
    assert result.document["policies"] == []
    assert "label filters are not supported on a 'docker-hub' source" in notes(result, "policy")[0].reason


def test_an_empty_label_filter_is_dropped_as_harbor_ignores_it() -> None:
    result = run([MIRROR], [one_policy(filters=[filter_json("label", []), filter_json("name", "lib/**")])])
    assert policy(result, "p")["filters"] == [{"type": "name", "value": "lib/**", "decoration": "matches"}]
    dropped = notes(result, "filter")[0]
    assert dropped.outcome == "skipped" and "Harbor ignores it" in dropped.reason


def test_policy_names_renamed_and_unique() -> None:
    result = run([MIRROR], [replication_policy_json(1, "Nightly Push", src=LOCAL, dest=MIRROR),
                            replication_policy_json(2, "nightly push", src=LOCAL, dest=MIRROR)])
    assert [p["name"] for p in result.document["policies"]] == ["nightly-push", "nightly-push-2"]
    assert all(n.outcome == "changed" for n in notes(result, "policy"))


def test_the_document_parses_as_apply_parses_it() -> None:
    # `apply` itself takes the file in tests/integration/test_import_harbor.py.
    result = run([HUB, MIRROR, GHCR], [
        one_policy(filters=[filter_json("name", "library/**")], trigger=trigger_json("event_based")),
        replication_policy_json(2, "hub-pull", src=HUB, dest=LOCAL, dest_namespace="hub",
                                filters=[filter_json("name", "library/nginx")])])
    assert parse_config(result.document) == result.config
    assert [p.name for p in result.config.policies] == ["p", "hub-pull"]
    assert [r.name for r in result.config.registries] == [
        "docker-hub", "mirror", "ghcr", "harbor.example.com"]


def test_a_payload_of_another_shape_is_one_error() -> None:
    with pytest.raises(ConfigError, match=r"policies\[1\]\.filters: unexpected answer from Harbor"):
        parse_harbor(HarborPolicy, [one_policy(), {"name": "x", "filters": "nope"}], "policies")


# -- the reader -------------------------------------------------------------------------------------


def test_reader_pages_both_lists_with_basic_auth() -> None:
    fake = FakeHarbor(users={"admin": "Harbor12345"}, max_page_size=2, links=False)
    fake.registries = [registry_json(i, f"r{i}", "docker-registry", f"https://r{i}.example")
                       for i in range(1, 6)]
    fake.replication_policies = [one_policy(), replication_policy_json(8, "q", src=MIRROR, dest=None)]
    answer = asyncio.run(read_replication(fake.url, "admin", SecretStr("Harbor12345"),
                                          transport=fake.transport()))
    assert [r["name"] for r in answer.registries] == ["r1", "r2", "r3", "r4", "r5"]
    assert [p["name"] for p in answer.policies] == ["p", "q"]
    # X-Total-Count drove the paging: three pages of registries, one of policies.
    assert len(fake.seen("GET", "/api/v2.0/registries")) == 3
    assert all(r.headers["Authorization"].startswith("Basic ") for r in fake.requests)


def test_reader_refused_credentials_are_an_authentication_error() -> None:
    fake = FakeHarbor(users={"admin": "Harbor12345"})
    with pytest.raises(AuthenticationError):
        asyncio.run(read_replication(fake.url, "admin", SecretStr("wrong"), transport=fake.transport()))


def test_a_label_filter_as_one_string_and_a_key_without_secret() -> None:
    # Older Harbors wrote one label as a string; a user name with no stored secret still needs one.
    keyed = registry_json(13, "keyed", "harbor", "https://keyed.example.com", access_key="robot$x")
    result = run([keyed], [replication_policy_json(1, "pull", src=keyed, dest=LOCAL,
                                                   filters=[filter_json("label", "prod")])])
    assert policy(result, "pull")["filters"] == [{"type": "label", "value": "prod", "decoration": "matches"}]
    assert registry(result, "keyed")["credential"] == {
        "type": "basic", "access_key": "robot$x", "access_secret": "${REGFLOW_KEYED_ACCESS_SECRET}"}


def test_a_registry_regflow_refuses_is_left_out_with_the_reason() -> None:
    schemeless = registry_json(14, "bare", "docker-registry", "registry.example.com")
    result = run([schemeless], [])
    assert result.document["registries"] == [] and result.placeholders == []
    note = notes(result, "registry")[0]
    assert note.outcome == "skipped" and "is not an http(s)://host[:port][/prefix] URL" in note.reason
