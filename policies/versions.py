"""Tags read as semantic versions: the ``semver:<range>`` tag filter and the order of ``latest``.

A tag is a version when, after one leading ``v`` or ``V``, it is

- a SemVer 2.0 version, ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``; since a tag cannot hold
  ``+``, Helm's ``_`` in its place is read as ``+`` (``1.2.3_build.5``);
- or a partial one, ``MAJOR`` or ``MAJOR.MINOR`` (the floating ``3``, ``3.19``, ``1.25`` of
  official images), read as ``MAJOR.0.0`` and ``MAJOR.MINOR.0``.

Nothing else is: ``latest``, ``1.2.3.4``, ``01.2.3``, ``1.25-alpine``, ``sha-4f2a``. A suffix
such as ``1.2.3-alpine`` is a pre-release by SemVer's grammar, and is treated as one.

Ranges are npm's (node-semver's) grammar, by semantic-version's ``NpmSpec``: ``>=1.2 <2``,
``^1.2``, ``~1.2``, ``1.x``, ``1.2.3 - 2``, alternatives joined by ``||``. As in npm, a
pre-release matches only when the range names a pre-release of the same ``MAJOR.MINOR.PATCH``
(``>=1.3.0-rc.1`` takes ``1.3.0-rc.2`` but not ``1.4.0-beta``). Build metadata plays no part in
matching or ordering.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from semantic_version import NpmSpec, Version

from adapters.errors import ConfigError

SEMVER_PREFIX: Final = "semver:"
# How a range reads in an error: the forms a user most likely meant.
_RANGE_FORMS: Final = "npm range syntax, e.g. '>=1.2 <2', '^1.2', '~1.2', '1.x', '1.2 || >=3'"
_PARTIAL_RE: Final = re.compile(r"(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?")
# node-semver accepts a space or a 'v' between an operator and its version; NpmSpec does not.
_OPERATOR_GAP_RE: Final = re.compile(r"(<=|>=|<|>|=|\^|~)\s*[vV]?(?=[0-9xX*])")
_BAD_BLOCK_RE: Final = re.compile(r"Invalid NPM block in .*: '(.*)'$")
HELM_PLUS: Final = "_"

VersionMatcher = Callable[[str], bool]


def tag_version(tag: str) -> Version | None:
    """The version a tag names, without its build metadata; None when it names none."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    if text.count(HELM_PLUS) == 1:
        text = text.replace(HELM_PLUS, "+")
    partial = _PARTIAL_RE.fullmatch(text)
    if partial:
        return Version(major=int(partial[1]), minor=int(partial[2] or 0), patch=0)
    try:
        version = Version(text)
    except ValueError:
        return None
    return Version(major=version.major, minor=version.minor, patch=version.patch,
                   prerelease=version.prerelease)


def _normalized_range(text: str) -> str:
    return _OPERATOR_GAP_RE.sub(r"\1", " ".join(text.split()))


@lru_cache(maxsize=256)
def parse_range(text: str) -> NpmSpec:
    """The npm range ``text``; a malformed one raises ConfigError in one line naming it."""
    if not text.strip():
        raise ConfigError(f"'{SEMVER_PREFIX}' needs a range after it ({_RANGE_FORMS}; '*' for every "
                          "release)")
    normalized = _normalized_range(text)
    if any(not part.strip() for part in normalized.split("||")):
        # npm reads an empty alternative as '*': a stray '||' would select every release.
        raise ConfigError(f"semver range {text!r} has an empty alternative around '||'")
    try:
        return NpmSpec(normalized)
    except ValueError as exc:
        bad = _BAD_BLOCK_RE.search(str(exc))
        where = f"cannot read {bad[1]!r}" if bad and bad[1] else str(exc)
        raise ConfigError(f"invalid semver range {text!r}: {where} ({_RANGE_FORMS})") from None


def range_matcher(text: str) -> VersionMatcher:
    """A predicate on tags: the tag is a version inside the npm range ``text``."""
    spec = parse_range(text)

    def match(tag: str) -> bool:
        version = tag_version(tag)
        return version is not None and version in spec

    return match


def newest_by_version(tags: Iterable[str], count: int) -> list[str]:
    """The ``count`` tags with the highest versions, highest first; tags that are no version
    are left out. Tags naming one version (``1.2``, ``v1.2.0``) rank by their text."""
    versioned = [(version, tag) for tag in sorted(set(tags)) if (version := tag_version(tag)) is not None]
    # sort is stable, also reversed: equal versions keep the text order given above.
    versioned.sort(key=lambda pair: pair[0], reverse=True)
    return [tag for _, tag in versioned[:count]]


def newest_by_time(created: Mapping[str, datetime | None], count: int) -> list[str]:
    """The ``count`` tags created last, newest first; tags without a time come after every
    dated one, and equal times rank by tag text."""
    dated = sorted((_aware(when), tag) for tag, when in created.items() if when is not None)
    # Newest first; among equal times the text order, as sort's stability keeps it.
    ranked = [tag for _, tag in sorted(dated, key=lambda pair: pair[0], reverse=True)]
    ranked += sorted(tag for tag, when in created.items() if when is None)
    return ranked[:count]


def _aware(when: datetime) -> datetime:
    """A time without a zone is UTC (Docker and Harbor write UTC), so that all compare."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
