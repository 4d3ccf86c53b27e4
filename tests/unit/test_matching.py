"""Which policies an event triggers."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.events import RegistryEvent
from deployments.matching import matching_policies
from policies.models import Policy

DIGEST = "sha256:" + "e5" * 32


def policy(name: str, **fields: Any) -> Policy:
    data: dict[str, Any] = {
        "name": name,
        "src_registry": "local",
        "dest_registry": "mirror",
        "trigger": {"type": "event_based"},
    }
    data.update(fields)
    return Policy.model_validate(data)


def event(
    repository: str = "team/app",
    tag: str | None = "v1.2.0",
    action: str = "push",
    source: str = "local",
) -> RegistryEvent:
    return RegistryEvent.model_validate({
        "source": source,
        "action": action,
        "repository": repository,
        "tag": tag,
        "digest": DIGEST,
        "event_id": "ev-1",
    })


def names(policies: list[Policy]) -> list[str]:
    return [p.name for p in policies]


def test_an_unfiltered_event_policy_matches() -> None:
    assert names(matching_policies(event(), [policy("all")])) == ["all"]


@pytest.mark.parametrize("fields", [
    {"enabled": False},
    {"trigger": {"type": "manual"}},
    {"trigger": {"type": "scheduled", "trigger_settings": {"cron": "0 3 * * *"}}},
    {"src_registry": "other"},
])
def test_disabled_non_event_and_other_source_policies_do_not(fields: dict[str, Any]) -> None:
    assert matching_policies(event(), [policy("p", **fields)]) == []


def test_the_source_must_be_the_policy_source_not_its_destination() -> None:
    assert matching_policies(event(source="mirror"), [policy("p")]) == []


def test_name_filters() -> None:
    policies = [
        policy("team", filters=[{"type": "name", "value": "team/**"}]),
        policy("other", filters=[{"type": "name", "value": "other/**"}]),
        policy("not-app", filters=[{"type": "name", "value": "team/app", "decoration": "excludes"}]),
        policy("regex", filters=[{"type": "name", "value": "regex:^team/"}]),
    ]
    assert names(matching_policies(event(), policies)) == ["team", "regex"]


def test_tag_filters() -> None:
    policies = [
        policy("releases", filters=[{"type": "tag", "value": "v*"}]),
        policy("latest-only", filters=[{"type": "tag", "value": "latest"}]),
        policy("no-rc", filters=[{"type": "tag", "value": "*-rc*", "decoration": "excludes"}]),
    ]
    assert names(matching_policies(event(tag="v1.2.0"), policies)) == ["releases", "no-rc"]
    assert names(matching_policies(event(tag="v1.3.0-rc1"), policies)) == ["releases"]


def test_name_and_tag_filters_must_both_pass() -> None:
    both = policy("both", filters=[
        {"type": "name", "value": "team/*"},
        {"type": "tag", "value": "v*"},
    ])
    assert names(matching_policies(event(), [both])) == ["both"]
    assert matching_policies(event(repository="team/app/sub"), [both]) == []
    assert matching_policies(event(tag="latest"), [both]) == []


def test_deletions_need_replicate_deletion() -> None:
    policies = [policy("copy-only"), policy("mirror-deletes", replicate_deletion=True)]
    assert names(matching_policies(event(action="delete"), policies)) == ["mirror-deletes"]
    assert names(matching_policies(event(action="push"), policies)) == ["copy-only", "mirror-deletes"]


def test_a_deletion_known_by_digest_only_skips_tag_filters() -> None:
    releases = policy("releases", replicate_deletion=True, filters=[{"type": "tag", "value": "v*"}])
    assert names(matching_policies(event(action="delete", tag=None), [releases])) == ["releases"]
    assert matching_policies(event(action="delete", tag="latest"), [releases]) == []


def test_order_is_kept_and_a_generator_is_accepted() -> None:
    policies = [policy(f"p{i}") for i in range(5)]
    assert names(matching_policies(event(), (p for p in policies))) == [f"p{i}" for i in range(5)]
