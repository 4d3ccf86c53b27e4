"""Every one of Harbor's fifteen registry type strings has an adapter: none is refused."""

from __future__ import annotations

import adapters
from adapters import ADAPTERS, HARBOR_TYPES


def test_adapters_knows_all_of_harbors_fifteen_types() -> None:
    assert len(HARBOR_TYPES) == len(set(HARBOR_TYPES)) == 15
    assert set(HARBOR_TYPES) <= set(ADAPTERS), sorted(set(HARBOR_TYPES) - set(ADAPTERS))
    for type_ in HARBOR_TYPES:
        assert adapters.adapter_info(type_).type == type_
