from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.errors import ConfigError
from policies.filters import (
    compile_glob,
    literal_names,
    resource_types,
    select_by_labels,
    select_repositories,
    select_tags,
)
from policies.models import Filter


def name(value: str, decoration: str = "matches") -> Filter:
    return Filter.model_validate({"type": "name", "value": value, "decoration": decoration})


def tag(value: str, decoration: str = "matches") -> Filter:
    return Filter.model_validate({"type": "tag", "value": value, "decoration": decoration})


def label(value: str, decoration: str = "matches") -> Filter:
    return Filter.model_validate({"type": "label", "value": value, "decoration": decoration})


# Harbor's src/pkg/reg/util/pattern_test.go TestMatch, then doublestar semantics beyond it.
@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("", "library", True),
        ("", "", True),
        ("*", "library", True),
        ("*", "library/hello-world", False),
        ("**", "library/hello-world", True),
        ("{library,harbor}/**", "library/hello-world", True),
        ("{library,harbor}/**", "harbor/hello-world", True),
        ("1.?", "1.0", True),
        ("1.?", "1.01", False),
        ("v2.[4-6].*", "v2.4.0", True),
        ("v2.[4-7].*", "v2.7.0", True),
        # beyond Harbor's table
        ("{library,harbor}/**", "other/hello-world", False),
        ("library/*", "library/a/b", False),
        ("library/**", "library/a/b", True),
        ("library/**", "library", False),
        ("**/nginx", "nginx", True),
        ("**/nginx", "a/b/nginx", True),
        ("**/nginx", "a/b/nginx-extra", False),
        ("a/**/img", "a/img", True),
        ("a/**/img", "a/x/y/img", True),
        ("lib**", "library", True),
        ("lib**", "lib/x", False),
        ("v2.[!4].0", "v2.5.0", True),
        ("v2.[!4].0", "v2.4.0", False),
        ("v2.[^4].0", "v2.4.0", False),
        ("{library}", "library", True),
        ("{library}/nginx", "library/nginx", True),
        ("x{a,{b,c}}", "xc", True),
        ("x{a,{b,c}}", "xd", False),
        ("{{a,b}}", "a", True),
        ("v1.0{,-rc}", "v1.0", True),
        ("v1.0{,-rc}", "v1.0-rc", True),
        ("release\\*", "release*", True),
        ("release\\*", "release1", False),
        ("Library", "library", False),
        ("*", ".hidden", True),
        ("?", "a", True),
        ("?", "/", False),
        # Harbor's regex: prefix is a search, not a full match
        ("regex:^v[0-9]+$", "v12", True),
        ("regex:^v[0-9]+$", "v12-rc", False),
        ("regex:rc", "v1-rc1", True),
    ],
)
def test_glob_matches_like_harbor(pattern: str, text: str, expected: bool) -> None:
    assert compile_glob(pattern)(text) is expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("*", True), ("**", True), ("", True), ("v*", False), ("?", False), ("[a-z]", False), ("latest", False)],
)
def test_empty_string_matches_as_in_doublestar(pattern: str, expected: bool) -> None:
    # Harbor matches an untagged artifact as the tag "", so '*' must select it.
    assert compile_glob(pattern)("") is expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("lib[", "never closed"),
        ("lib[a-", "never closed"),
        ("v[]", "empty character class"),
        ("v[z-a]", "reversed range z-a"),
        ("a[b/c]", "'/' inside the character class"),
        ("{a,b", "'{' is never closed"),
        ("a}", "has no matching '{'"),
        ("trailing\\", "lone '\\'"),
        ("{a,b}" * 11, "more than 1000 brace alternatives"),
        ("regex:(unclosed", "invalid regular expression"),
    ],
)
def test_bad_syntax_is_a_config_error(pattern: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_glob(pattern)
    assert problem in str(info.value)
    assert repr(pattern) in str(info.value)


def test_escaped_brackets_and_dash_are_literals() -> None:
    assert compile_glob("a\\[b")("a[b")
    assert compile_glob("[a\\-z]")("-")
    assert not compile_glob("[a\\-z]")("m")


def test_compiled_globs_are_reused() -> None:
    assert compile_glob("library/*") is compile_glob("library/*")


REPOS = ["library/nginx", "library/redis", "team/app", "team/sub/app", "nginx"]


def test_select_repositories_keeps_matches_in_input_order() -> None:
    assert select_repositories(REPOS, [name("library/*")]) == ["library/nginx", "library/redis"]
    assert select_repositories(REPOS, [name("**/app")]) == ["team/app", "team/sub/app"]


def test_select_repositories_excludes() -> None:
    kept = select_repositories(REPOS, [name("library/**", "excludes")])
    assert kept == ["team/app", "team/sub/app", "nginx"]


def test_name_filters_narrow_one_after_another() -> None:
    filters = [name("{library,team}/**"), name("**/redis", "excludes"), name("*/*")]
    assert select_repositories(REPOS, filters) == ["library/nginx", "team/app"]


def test_empty_name_filter_and_other_filter_types_select_everything() -> None:
    filters = [name(""), name("", "excludes"), tag("v1"), label("prod")]
    assert select_repositories(REPOS, filters) == REPOS


def test_no_filters_select_everything() -> None:
    assert select_repositories(iter(REPOS), []) == REPOS
    assert select_tags(["a", ""], []) == ["a", ""]


TAGS = ["latest", "v1.0", "v1.1", "v2.0-rc1", ""]


def test_select_tags_matches_and_untagged() -> None:
    assert select_tags(TAGS, [tag("v1.*")]) == ["v1.0", "v1.1"]
    assert select_tags(TAGS, [tag("*")]) == TAGS
    assert select_tags(TAGS, [tag("**")]) == TAGS


def test_select_tags_excludes_keeps_untagged_when_pattern_needs_text() -> None:
    assert select_tags(TAGS, [tag("*-rc*", "excludes")]) == ["latest", "v1.0", "v1.1", ""]
    assert select_tags(TAGS, [tag("*", "excludes")]) == []


def test_select_tags_ignores_name_filters_and_empty_patterns() -> None:
    assert select_tags(TAGS, [name("library/*"), tag("")]) == TAGS


# Harbor's TestIsSpecificPath table, as literal name lists.
@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("", None),
        ("library", ["library"]),
        ("library/hello-world", ["library/hello-world"]),
        ("library/**", None),
        ("{library}", ["library"]),
        ("library/{hello-world,busybox}", ["library/hello-world", "library/busybox"]),
        # beyond Harbor
        ("{a,b}/{x,y}", ["a/x", "a/y", "b/x", "b/y"]),
        ("{a,b/{x,y}}", ["a", "b/x", "b/y"]),
        ("lib*", None),
        ("library/nginx?", None),
        ("library/[a-z]x", None),
        ("regex:^library/nginx$", None),
        ("{a,a}", ["a"]),
        ("library/{nginx,}", ["library/nginx"]),
        ("Library/Nginx", []),
    ],
)
def test_literal_names_like_harbors_is_specific_path(pattern: str, expected: list[str] | None) -> None:
    assert literal_names([name(pattern)]) == expected


def test_literal_names_needs_a_matches_literal() -> None:
    assert literal_names([]) is None
    assert literal_names([tag("v1")]) is None
    assert literal_names([name("library/nginx", "excludes")]) is None


def test_literal_names_applies_the_other_name_filters() -> None:
    filters = [name("library/{nginx,redis,busybox}"), name("**/redis", "excludes")]
    assert literal_names(filters) == ["library/nginx", "library/busybox"]
    assert literal_names([name("{a,b,c}"), name("{b,c,d}")]) == ["b", "c"]
    assert literal_names([name("lib*"), name("{library,libx}")]) == ["library", "libx"]


_component = st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)


@given(names=st.lists(_path, min_size=1, max_size=4, unique=True), catalog=st.lists(_path, max_size=8))
def test_literal_names_agree_with_catalog_filtering(names: list[str], catalog: list[str]) -> None:
    # Skipping the catalog must not change which existing repositories are selected.
    filters = [name("{" + ",".join(names) + "}")]
    literal = literal_names(filters)
    assert literal is not None
    assert set(select_repositories(catalog, filters)) == set(catalog) & set(literal)
    assert set(literal) == set(names)


@given(text=_path)
def test_a_literal_path_matches_itself_only(text: str) -> None:
    assert compile_glob(text)(text)
    assert not compile_glob(text)(text + "x")


@pytest.mark.parametrize(
    ("labels", "filters", "expected"),
    [
        (["prod", "team-a"], [label("prod")], True),
        (["team-a"], [label("prod")], False),
        (["prod"], [label("prod", "excludes")], False),
        (["dev"], [label("prod", "excludes")], True),
        ([], [label("prod", "excludes")], True),
        (["prod", "team-a"], [label("prod"), label("team-a")], True),
        (["prod"], [label("prod"), label("team-a")], False),
        ([], [label("")], True),
        ([], [], True),
        (["prod"], [name("x"), tag("y")], True),
    ],
)
def test_select_by_labels(labels: list[str], filters: list[Filter], expected: bool) -> None:
    assert select_by_labels(labels, filters) is expected


def test_resource_types() -> None:
    assert resource_types([]) is None
    assert resource_types([name("a")]) is None
    image = Filter(type="resource", value="image")
    chart = Filter(type="resource", value="chart")
    assert resource_types([image, name("a")]) == frozenset({"image"})
    assert resource_types([image, chart, image]) == frozenset({"image", "chart"})
