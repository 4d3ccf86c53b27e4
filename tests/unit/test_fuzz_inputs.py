"""Fuzzing the two doors untrusted text comes in by: webhook bodies (deployments/events.py)
and config files (policies/config_file.py). Whatever arrives, the answer is a valid model or
the module's declared error with a one-line message; never another exception.

Bounded: a fixed number of examples per target and a per-example deadline, so the file stays
well under thirty seconds. Set HYPOTHESIS_PROFILE=deep for a longer search (minutes)."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.errors import ConfigError, ContentError
from deployments.events import PARSERS, ParsedEvents, RegistryEvent
from policies.config_file import load_config_file
from policies.models import Config, parse_config

# Examples per target, bounding the suite's share; "deep" is for a search by hand.
EXAMPLES = 2000 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 150
# Per example: generous, since a loaded CI machine must not turn slowness into a failure; a
# parser that hangs still fails.
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=[HealthCheck.too_slow])

# Words the parsers and the config model look for, so that examples reach past the first check.
WEBHOOK_WORDS = ["events", "action", "push", "delete", "pull", "target", "repository", "tag", "digest",
                 "mediaType", "url", "id", "type", "PUSH_ARTIFACT", "DELETE_ARTIFACT", "event_data",
                 "resources", "repo_full_name", "push_data", "repo_name", "callback_url", "specversion",
                 "application/vnd.oci.image.manifest.v1+json", "application/octet-stream",
                 "sha256:" + "a" * 64, "team/app", "1.0", "/blobs/", "library/web"]
CONFIG_WORDS = ["version", "registries", "policies", "name", "type", "url", "credential", "access_key",
                "access_secret", "webhook", "kind", "auth", "secret", "insecure", "ca_certificate", "options",
                "src_registry", "dest_registry", "dest_namespace", "dest_namespace_replace_count", "filters",
                "value", "decoration", "trigger", "trigger_settings", "cron", "interval_seconds",
                "replicate_deletion", "override", "enabled", "speed", "copy_by_chunk",
                "single_active_replication", "verify", "docker-registry", "harbor", "http://127.0.0.1:5000",
                "scheduled", "event_based", "manual", "matches", "excludes", "env:HOME", "prefect-secret:x",
                "0 0 * * *", "*/5 * * * *", "-----BEGIN CERTIFICATE-----", "ca.pem", 1, -1]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))


def json_values(words: list[Any]) -> st.SearchStrategy[Any]:
    leaves = st.one_of(scalars, st.sampled_from(words))
    keys = st.one_of(st.sampled_from([w for w in words if isinstance(w, str)]), st.text(max_size=12))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)), max_leaves=30)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


webhook_bodies = st.one_of(
    st.binary(max_size=300),
    json_values(WEBHOOK_WORDS).map(_json_bytes),
    json_values(WEBHOOK_WORDS).map(lambda v: _json_bytes({"events": v if isinstance(v, list) else [v]})),
)


def _check_events(parsed: object) -> None:
    assert isinstance(parsed, ParsedEvents)
    assert parsed.dropped >= 0
    for event in parsed:
        assert isinstance(event, RegistryEvent)
        RegistryEvent.model_validate(event.model_dump())  # what came out is a valid model


@FUZZ
@given(kind=st.sampled_from(sorted(PARSERS)), body=webhook_bodies)
def test_webhook_parsers_answer_events_or_content_error(kind: str, body: bytes) -> None:
    try:
        parsed = PARSERS[kind](body, source="fuzz")
    except ContentError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _check_events(parsed)


@FUZZ
@given(data=json_values(CONFIG_WORDS))
def test_parse_config_answers_a_config_or_config_error(data: Any) -> None:
    try:
        config = parse_config(data)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)


# Paths a config may name for its CA bundle, the awkward ones first.
CA_PATHS = ["~nobody-here/ca.pem", "ca\x00.pem", "a" * 5000, "~/" + "x" * 300, "", " ", ".", "/", "ca.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "../../etc/hostname"]


def _config_documents() -> st.SearchStrategy[str]:
    """Mostly well-formed files with one odd part: random text rarely gets past the parser."""
    fields = json_values(CONFIG_WORDS)
    base = {"name": st.sampled_from(["src", "dst"]), "type": st.just("docker-registry"),
            "url": st.sampled_from(["http://127.0.0.1:5000", "https://127.0.0.2"])}
    odd_ca = st.fixed_dictionaries({**base, "ca_certificate": st.one_of(st.sampled_from(CA_PATHS),
                                                                        st.text(max_size=60))})
    odd_field = st.fixed_dictionaries(
        {**base, "type": st.sampled_from(["docker-registry", "harbor", "x"]),
         "url": st.sampled_from(["http://127.0.0.1:5000", "ftp://x", ""])},
        optional={"insecure": fields, "credential": fields, "webhook": fields, "options": fields})
    policy = st.fixed_dictionaries(
        {"name": st.sampled_from(["p", "P q"]), "src_registry": st.sampled_from(["src", "dst", "nope"]),
         "dest_registry": st.sampled_from(["src", "dst"])},
        optional={"filters": fields, "trigger": fields, "speed": fields, "dest_namespace": fields,
                  "verify": fields})

    def document(registries: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[str]:
        return st.fixed_dictionaries({
            "version": st.just(1),
            "registries": st.lists(registries, min_size=1, max_size=2, unique_by=lambda r: r["name"]),
            "policies": st.lists(policy, max_size=2),
        }).map(lambda v: yaml.safe_dump(v, allow_unicode=True))

    return st.one_of(
        document(odd_ca),
        document(odd_field),
        st.text(max_size=300),
        st.text(alphabet=string.printable + ":-[]{}&*!|>'\"%@`#,", max_size=200),
        fields.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=_config_documents())
def test_config_file_loader_answers_a_config_or_config_error(workdir: Path, text: str) -> None:
    path = workdir / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_config_file_loader_on_any_bytes(workdir: Path, raw: bytes) -> None:
    path = workdir / "raw.yaml"
    path.write_bytes(raw)
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, Config)
