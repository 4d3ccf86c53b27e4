"""The top-level packages are this repository's, not the PyPI distributions of the same names."""

from __future__ import annotations

from pathlib import Path

import adapters
import deployments
import flows
import tasks

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_packages_resolve_inside_the_repository():
    for module in (adapters, tasks, flows, deployments):
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().is_relative_to(ROOT), module.__file__


def test_adapter_registry_is_explicit_and_refuses_unknown_types():
    import pytest

    from adapters import ADAPTERS, HARBOR_TYPES, adapter_info
    from adapters.errors import ConfigError

    for type_, factory in ADAPTERS.items():
        assert adapter_info(type_).type == type_ == factory.info.type
    assert HARBOR_TYPES[0] == "docker-registry"
    # Every one of Harbor's fifteen types is served (issue 19); anything else is unknown.
    assert len(HARBOR_TYPES) == 15 and set(HARBOR_TYPES) <= set(ADAPTERS)
    with pytest.raises(ConfigError, match="'quay-enterprise' is not supported"):
        adapter_info("quay-enterprise")


def test_prefect_server_flush_intervals_are_whole_seconds_of_at_least_one():
    # Prefect truncates them to int; 0 (e.g. from "0.5") makes its recorder and persister spin.
    from flows.prefect_server import SERVER_TUNING

    intervals = {k: v for k, v in SERVER_TUNING.items() if k.endswith("_FLUSH_INTERVAL")}
    assert len(intervals) == 2
    assert all(int(float(v)) >= 1 for v in intervals.values()), intervals
