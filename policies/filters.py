"""Harbor's replication filters: doublestar globs on repository paths and tags, labels, resources.

Glob syntax is that of Harbor's doublestar: ``*`` and ``?`` stay inside one path component,
``**`` spans components, ``[...]`` (``[!...]`` or ``[^...]`` negated), ``{a,b}``, and ``\\``
escapes. An empty pattern selects everything. As in Harbor, ``regex:<expr>`` selects by regular
expression search instead, and (tag filters only) ``semver:<range>`` keeps the tags that are
versions inside an npm range (policies/versions.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Final

from wcmatch import glob

# wcmatch documents this exception but exposes it only from its parser module.
from wcmatch._wcparse import PatternLimitException

from adapters.errors import ConfigError
from adapters.oci.reference import REPOSITORY_RE
from policies.versions import SEMVER_PREFIX, range_matcher

if TYPE_CHECKING:
    from adapters.base import Artifact
    from policies.models import Filter

RESOURCE_TYPES: Final = frozenset({"image", "artifact", "chart"})
REGEX_PREFIX: Final = "regex:"

# FORCEUNIX and CASE make matching identical on every OS; DOTGLOB because a name starting with
# '.' is not hidden in a registry; no NEGATE, SPLIT or EXTGLOB, which doublestar does not have.
_FLAGS: Final = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB | glob.FORCEUNIX | glob.CASE
# Same cap as wcmatch's own: a pattern expanding past it is a mistake, not a policy.
_MAX_EXPANSIONS: Final = 1000
# wcmatch has path semantics, under which no pattern matches the empty path; doublestar lets
# '*' match an empty string, and Harbor relies on that for untagged artifacts (tag ""). Matching
# a non-empty stand-in against the pattern behind the same stand-in gives doublestar's answer.
_EMPTY_STAND_IN: Final = "x"

Matcher = Callable[[str], bool]


def _match_all(_: str) -> bool:
    return True


def _bad(pattern: str, problem: str) -> ConfigError:
    return ConfigError(f"invalid glob {pattern!r}: {problem}")


def _class_end(pattern: str, start: int) -> int:
    """Index of the ']' closing the character class opened at ``start``; checks its ranges."""
    i = start + 1
    if i < len(pattern) and pattern[i] in "!^":
        i += 1
    members: list[tuple[str, bool]] = []  # (character, escaped)
    while i < len(pattern) and pattern[i] != "]":
        escaped = pattern[i] == "\\"
        if escaped:
            i += 1
            if i == len(pattern):
                break
        elif pattern[i] == "/":
            raise _bad(pattern, f"'/' inside the character class at offset {start}")
        members.append((pattern[i], escaped))
        i += 1
    if i >= len(pattern):
        raise _bad(pattern, f"'[' at offset {start} is never closed")
    if not members:
        raise _bad(pattern, f"empty character class at offset {start}")
    for (low, _), (dash, escaped), (high, _) in zip(members, members[1:], members[2:], strict=False):
        if dash == "-" and not escaped and low > high:
            raise _bad(pattern, f"reversed range {low}-{high} at offset {start}")
    return i


def _normalize(pattern: str) -> str:
    """Check the syntax wcmatch would silently take literally, and unwrap ``{x}`` to ``x``.

    doublestar reads a brace group without a comma as its one alternative, bash (and so
    wcmatch) as literal braces; Harbor users write ``library/{nginx}`` and mean nginx.
    """
    out: list[str] = []
    groups: list[tuple[int, bool]] = []  # (index of '{' in out, saw a comma)
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 == len(pattern):
                raise _bad(pattern, "ends with a lone '\\'")
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[":
            end = _class_end(pattern, i)
            out.append(pattern[i : end + 1])
            i = end + 1
            continue
        if c == "{":
            groups.append((len(out), False))
        elif c == "," and groups:
            groups[-1] = (groups[-1][0], True)
        elif c == "}":
            if not groups:
                raise _bad(pattern, f"'}}' at offset {i} has no matching '{{'")
            opened, alternatives = groups.pop()
            if not alternatives:
                del out[opened]
                i += 1
                continue
        out.append(c)
        i += 1
    if groups:
        raise _bad(pattern, "'{' is never closed")
    return "".join(out)


@lru_cache(maxsize=512)
def compile_glob(pattern: str) -> Matcher:
    """A predicate for ``pattern``; raises ConfigError when the pattern is malformed."""
    if not pattern:
        return _match_all
    if pattern.startswith(REGEX_PREFIX):
        try:
            regex = re.compile(pattern[len(REGEX_PREFIX) :])
        except re.error as exc:
            raise ConfigError(f"invalid regular expression {pattern!r}: {exc}") from None
        return lambda text: regex.search(text) is not None
    normalized = _normalize(pattern)
    try:
        matcher = glob.compile(normalized, flags=_FLAGS, limit=_MAX_EXPANSIONS)
        empty = glob.compile(_EMPTY_STAND_IN + normalized, flags=_FLAGS, limit=_MAX_EXPANSIONS)
    except PatternLimitException:
        raise _bad(pattern, f"more than {_MAX_EXPANSIONS} brace alternatives") from None

    def match(text: str) -> bool:
        return bool(matcher.match(text)) if text else bool(empty.match(_EMPTY_STAND_IN))

    return match


def compile_tag_pattern(pattern: str) -> Matcher:
    """A predicate for a tag filter's value: a glob, ``regex:`` or ``semver:<range>``; raises
    ConfigError when it is malformed. An untagged artifact's ``""`` is no version."""
    if pattern.startswith(SEMVER_PREFIX):
        return range_matcher(pattern[len(SEMVER_PREFIX) :])
    return compile_glob(pattern)


def check_filter_value(kind: str, pattern: str) -> None:
    """Raise ConfigError when a ``name`` or ``tag`` filter's value cannot be used."""
    if kind == "tag":
        compile_tag_pattern(pattern)
        return
    if pattern.startswith(SEMVER_PREFIX):
        raise ConfigError(f"{pattern!r}: '{SEMVER_PREFIX}' selects tags; a {kind} filter takes a glob "
                          "or 'regex:'")
    compile_glob(pattern)


def _expand_braces(pattern: str, limit: int) -> list[str] | None:
    """All strings a brace pattern stands for, or None past ``limit``; braces must balance."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, cut, alternatives = 0, start + 1, []
    for i in range(start, len(pattern)):
        if pattern[i] == "{":
            depth += 1
        elif pattern[i] == "}":
            depth -= 1
            if depth == 0:
                alternatives.append(pattern[cut:i])
                end = i
                break
        elif pattern[i] == "," and depth == 1:
            alternatives.append(pattern[cut:i])
            cut = i + 1
    result: list[str] = []
    for alternative in alternatives:
        expanded = _expand_braces(pattern[:start] + alternative + pattern[end + 1 :], limit)
        if expanded is None or len(result) + len(expanded) > limit:
            return None
        result.extend(expanded)
    return result


def _specific_names(pattern: str) -> list[str] | None:
    """The names a pattern of literals and brace lists stands for; None if it has wildcards."""
    if not pattern or pattern.startswith(REGEX_PREFIX):
        return None
    normalized = _normalize(pattern)
    if any(c in normalized for c in "*?[\\"):
        return None
    expanded = _expand_braces(normalized, _MAX_EXPANSIONS)
    if expanded is None:
        return None
    # A name outside the grammar cannot exist in any registry, so asking for it is pointless.
    return list(dict.fromkeys(n for n in expanded if REPOSITORY_RE.fullmatch(n)))


def _select(items: Iterable[str], filters: Sequence[Filter], kind: str) -> list[str]:
    selected = list(items)
    for f in filters:
        if f.type != kind or not f.value:
            continue
        match = compile_tag_pattern(f.value) if kind == "tag" else compile_glob(f.value)
        keep = f.decoration != "excludes"
        selected = [item for item in selected if match(item) == keep]
    return selected


def select_repositories(names: Iterable[str], filters: Sequence[Filter]) -> list[str]:
    """The repository paths that pass every ``name`` filter, in input order."""
    return _select(names, filters, "name")


def select_tags(tags: Iterable[str], filters: Sequence[Filter]) -> list[str]:
    """The tags that pass every ``tag`` filter; pass ``""`` for an untagged artifact."""
    return _select(tags, filters, "tag")


def literal_names(filters: Sequence[Filter]) -> list[str] | None:
    """The repositories a policy can only ever select, when that is known without the catalog.

    Known when a ``matches`` name filter is a literal path or brace list of literals (Harbor's
    IsSpecificPath); the other name filters then narrow that list. None means: list the catalog.
    """
    for f in filters:
        if f.type == "name" and f.decoration == "matches":
            candidates = _specific_names(f.value)
            if candidates is not None:
                return select_repositories(candidates, filters)
    return None


LABEL_SEPARATOR: Final = ","


def label_names(value: str) -> list[str]:
    """The labels one ``label`` filter names: Harbor's filter holds a list, ours a comma list."""
    return [name.strip() for name in value.split(LABEL_SEPARATOR) if name.strip()]


def has_label_filters(filters: Sequence[Filter]) -> bool:
    return any(f.type == "label" and label_names(f.value) for f in filters)


def select_by_labels(labels_of_artifact: Iterable[str], filters: Sequence[Filter]) -> bool:
    """Whether an artifact with these labels passes every ``label`` filter (exact names).

    Harbor's semantics, per filter: ``matches`` keeps an artifact carrying every label listed;
    ``excludes`` keeps one that does not carry all of them (so ``excludes a,b`` still keeps an
    artifact labelled only ``a``; write two filters to exclude either).
    """
    labels = set(labels_of_artifact)
    for f in filters:
        if f.type != "label":
            continue
        wanted = label_names(f.value)
        if wanted and all(name in labels for name in wanted) == (f.decoration == "excludes"):
            return False
    return True


def select_artifacts(artifacts: Iterable[Artifact], filters: Sequence[Filter], *,
                     untagged: bool = False) -> list[Artifact]:
    """The artifacts the ``tag``, ``label`` and ``resource`` filters keep, each with only the tags
    the tag filters selected; an artifact left without a tag is dropped. With ``untagged``, an
    artifact that never had a tag is kept, tags empty, when the tag filters keep ``""``
    (Harbor's rule: ``*``, ``**`` and an empty pattern do; ``v*`` and ``semver:`` do not).

    As in Harbor, ``resource: image`` keeps IMAGE artifacts only, while ``artifact`` and
    ``chart`` narrow nothing (every artifact is one).
    """
    only_images = "image" in (resource_types(filters) or ())
    selected: list[Artifact] = []
    for artifact in artifacts:
        if only_images and artifact.type.lower() != "image":
            continue
        if not select_by_labels(artifact.labels, filters):
            continue
        if not artifact.tags:
            if untagged and select_tags([""], filters):
                selected.append(artifact)
            continue
        tags = select_tags(artifact.tags, filters)
        if tags:
            selected.append(artifact.model_copy(update={"tags": tuple(tags)}))
    return selected


def resource_types(filters: Sequence[Filter]) -> frozenset[str] | None:
    """The resource types the policy asks for; None means whatever the source adapter offers."""
    named = frozenset(f.value for f in filters if f.type == "resource")
    return named or None
