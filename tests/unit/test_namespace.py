from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.errors import ConfigError, InvalidReferenceError
from policies.namespace import check_path_rule, replace_namespace

# Harbor's replaceNamespace doc table and stage_test.go cases.
HARBOR_TABLE = [
    ("a/b/c/image", "n", -1, "n/image"),
    ("a/b/c/image", "n", 0, "n/a/b/c/image"),
    ("a/b/c/image", "n", 1, "n/b/c/image"),
    ("a/b/c/image", "n", 2, "n/c/image"),
    ("a/b/c/image", "n", 3, "n/image"),
    ("c", "", 0, "c"),
    ("c", "n", -1, "n/c"),
    ("b/c", "n", -1, "n/c"),
    ("a/b/c", "n", -1, "n/c"),
    ("a/b/c", "n", 0, "n/a/b/c"),
    ("a/b/c", "n", 1, "n/b/c"),
    ("a/b/c", "n", 2, "n/c"),
    ("a", "n", 0, "n/a"),
    ("library/hello-world", "test", -1, "test/hello-world"),
]


@pytest.mark.parametrize(("repository", "namespace", "count", "expected"), HARBOR_TABLE)
def test_harbor_replace_namespace_table(repository: str, namespace: str, count: int, expected: str) -> None:
    assert replace_namespace(repository, namespace, count) == expected


@pytest.mark.parametrize(
    ("repository", "count"),
    [("a/b/c/image", 4), ("a/b", 2), ("image", 1), ("a/b/c/image", 100)],
)
def test_dropping_more_components_than_exist_is_a_config_error(repository: str, count: int) -> None:
    with pytest.raises(ConfigError) as info:
        replace_namespace(repository, "n", count)
    assert info.value.field == "dest_namespace_replace_count"
    assert str(info.value).startswith("dest_namespace_replace_count: ")
    assert repr(repository) in str(info.value)
    assert f"only {repository.count('/')} path component(s)" in str(info.value)


@pytest.mark.parametrize(
    ("repository", "count", "expected"),
    [
        ("a/b/c/img", -1, "a/b/c/img"),
        ("a/b/c/img", 0, "a/b/c/img"),
        ("a/b/c/img", 1, "b/c/img"),
        ("a/b/c/img", 3, "img"),
        ("img", 0, "img"),
    ],
)
def test_empty_namespace_keeps_the_source_path_minus_k(repository: str, count: int, expected: str) -> None:
    assert replace_namespace(repository, "", count) == expected


def test_empty_namespace_still_refuses_too_large_a_count() -> None:
    with pytest.raises(ConfigError, match="cannot be dropped"):
        replace_namespace("a/b", "", 2)


def test_multi_component_namespace_is_a_prefix() -> None:
    assert replace_namespace("a/b/img", "org/team", 1) == "org/team/b/img"
    assert replace_namespace("a/b/img", "org/team", -1) == "org/team/img"


def test_surrounding_slashes_of_the_namespace_are_ignored() -> None:
    assert replace_namespace("a/img", "/n/", 0) == "n/a/img"


def test_any_negative_count_is_harbors_flatten() -> None:
    assert replace_namespace("a/b/img", "n", -5) == "n/img"


@pytest.mark.parametrize("repository", ["", "a//img", "/img", "img/"])
def test_repository_with_empty_component_is_rejected(repository: str) -> None:
    with pytest.raises(InvalidReferenceError, match="empty path component"):
        replace_namespace(repository, "n", 0)


_component = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)


@given(
    parents=st.lists(_component, max_size=5),
    name=_component,
    namespace=st.lists(_component, max_size=3),
    data=st.data(),
)
def test_replace_count_drops_exactly_k_leading_components(
    parents: list[str], name: str, namespace: list[str], data: st.DataObject
) -> None:
    count = data.draw(st.integers(min_value=0, max_value=len(parents)))
    result = replace_namespace("/".join([*parents, name]), "/".join(namespace), count)
    assert result.split("/") == [*namespace, *parents[count:], name]


@pytest.mark.parametrize(
    ("path", "low", "high"),
    [
        ("library/nginx", 2, 2),
        ("a/b/c", 2, None),
        ("a/b", 2, None),
        ("a", None, None),
        ("a/b/c/d/e", None, None),
        ("a/b", 1, 3),
        ("a", None, 1),
    ],
)
def test_paths_within_the_rule_pass(path: str, low: int | None, high: int | None) -> None:
    check_path_rule(path, low, high)  # raises on failure


@pytest.mark.parametrize(
    ("path", "low", "high", "phrase"),
    [
        ("a/b/c", 2, 2, "has 3 path component(s), but the destination registry takes exactly 2"),
        ("nginx", 2, 2, "has 1 path component(s), but the destination registry takes exactly 2"),
        ("nginx", 2, None, "takes at least 2"),
        ("a/b/c", None, 2, "takes at most 2"),
        ("a/b/c/d", 1, 3, "takes between 1 and 3"),
    ],
)
def test_paths_outside_the_rule_fail_naming_the_rule(
    path: str, low: int | None, high: int | None, phrase: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_path_rule(path, low, high)
    assert phrase in str(info.value)
    assert repr(path) in str(info.value)
    assert info.value.field == "dest_namespace"
    assert "dest_namespace_replace_count" in str(info.value)


def test_docker_hub_rule_applied_to_a_rewritten_path() -> None:
    check_path_rule(replace_namespace("a/b/c/img", "myorg", -1), 2, 2)
    with pytest.raises(ConfigError):
        check_path_rule(replace_namespace("a/b/c/img", "myorg", 1), 2, 2)


def test_contradictory_rule_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="exceeds maximum"):
        check_path_rule("a/b", 3, 2)
