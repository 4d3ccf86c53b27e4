"""Image references, ``[host[:port]/]repository[:tag][@digest]``, and the distribution name grammar.

The grammar is the one of distribution's ``reference`` package, so that every name we accept
can be pushed to a registry and every name a registry serves can be parsed here.
"""

from __future__ import annotations

import re
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from adapters.errors import InvalidReferenceError
from adapters.oci.digest import Digest

REPOSITORY_COMPONENT_RE: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
REPOSITORY_RE: Final = re.compile(
    rf"{REPOSITORY_COMPONENT_RE.pattern}(?:/{REPOSITORY_COMPONENT_RE.pattern})*"
)
TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# A DNS name or a bracketed IPv6 address, then an optional port: what distribution accepts
# as the domain part of a reference.
_HOST_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
REGISTRY_RE: Final = re.compile(
    rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::(?P<port>[0-9]{{1,5}}))?"
)

# The registry API spec requires a repository name to be under 256 characters, and
# distribution's reference parser rejects longer ones (ErrNameTooLong), so a longer name
# could never be pushed anywhere.
MAX_REPOSITORY_LENGTH: Final = 255
MAX_TAG_LENGTH: Final = 128
DEFAULT_TAG: Final = "latest"


def _excerpt(value: str, limit: int = 80) -> str:
    """repr() of a value, shortened: bad input may be arbitrarily long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _component_problem(component: str) -> str:
    """Why one path component of a repository breaks the grammar."""
    if not component:
        return "has an empty path component (leading, trailing or doubled '/')"
    if any(c.isascii() and c.isupper() for c in component):
        return "must be lowercase"
    if ".." in component:
        return f"component {_excerpt(component, 40)} contains '..'"
    bad = sorted({c for c in component if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        return f"component {_excerpt(component, 40)} contains {_excerpt(''.join(bad), 10)}"
    if component[0] in "._-" or component[-1] in "._-":
        return f"component {_excerpt(component, 40)} must start and end with a letter or digit"
    return f"component {_excerpt(component, 40)} has a bad separator (use '.', '_', '__' or dashes)"


def validate_repository(name: str) -> str:
    """Return ``name`` if it is a valid repository path, else raise InvalidReferenceError."""
    if not name:
        raise InvalidReferenceError("repository name is empty")
    if len(name) > MAX_REPOSITORY_LENGTH:
        raise InvalidReferenceError(
            f"repository name {_excerpt(name)} is too long: "
            f"{len(name)} characters, the limit is {MAX_REPOSITORY_LENGTH}"
        )
    if REPOSITORY_RE.fullmatch(name):
        return name
    for component in name.split("/"):
        if not REPOSITORY_COMPONENT_RE.fullmatch(component):
            problem = _component_problem(component)
            raise InvalidReferenceError(f"invalid repository name {_excerpt(name)}: {problem}")
    raise AssertionError("unreachable: every component matched but the path did not")


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise InvalidReferenceError."""
    if not tag:
        raise InvalidReferenceError("tag is empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidReferenceError(
            f"tag {_excerpt(tag)} is too long: {len(tag)} characters, the limit is {MAX_TAG_LENGTH}"
        )
    if TAG_RE.fullmatch(tag):
        return tag
    if tag[0] in ".-":
        problem = "must not start with '.' or '-'"
    else:
        bad = sorted({c for c in tag if not (c.isascii() and (c.isalnum() or c in "._-"))})
        problem = f"contains {_excerpt(''.join(bad), 10)} (allowed: letters, digits, '_', '.', '-')"
    raise InvalidReferenceError(f"invalid tag {_excerpt(tag)}: {problem}")


def validate_registry(host: str) -> str:
    """Return ``host`` if it is a valid ``host[:port]``, else raise InvalidReferenceError."""
    match = REGISTRY_RE.fullmatch(host)
    if match is None:
        raise InvalidReferenceError(f"invalid registry {_excerpt(host)}: expected host or host:port")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise InvalidReferenceError(f"invalid registry {_excerpt(host)}: port {port} is out of range")
    return host


def looks_like_registry(component: str) -> bool:
    """Whether the first path component of a reference names a registry (docker's rule)."""
    return "." in component or ":" in component or component == "localhost"


def _as_value_error(exc: InvalidReferenceError) -> ValueError:
    # pydantic turns only ValueError into a ValidationError.
    return ValueError(str(exc))


class Reference(BaseModel):
    """An image reference. ``str(ref)`` gives back the text ``Reference.parse`` reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry: str | None = None
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @field_validator("registry")
    @classmethod
    def _check_registry(cls, value: str | None) -> str | None:
        try:
            return None if value is None else validate_registry(value)
        except InvalidReferenceError as exc:
            raise _as_value_error(exc) from exc

    @field_validator("repository")
    @classmethod
    def _check_repository(cls, value: str) -> str:
        try:
            return validate_repository(value)
        except InvalidReferenceError as exc:
            raise _as_value_error(exc) from exc

    @field_validator("tag")
    @classmethod
    def _check_tag(cls, value: str | None) -> str | None:
        try:
            return None if value is None else validate_tag(value)
        except InvalidReferenceError as exc:
            raise _as_value_error(exc) from exc

    @model_validator(mode="after")
    def _check_unambiguous(self) -> Self:
        # Without these checks str() could print a reference that parses to a different one.
        if self.registry is not None and not looks_like_registry(self.registry):
            raise ValueError(
                f"registry {_excerpt(self.registry)} would read as part of the repository; "
                "use a dotted name, host:port or localhost"
            )
        first, slash, _ = self.repository.partition("/")
        if self.registry is None and slash and looks_like_registry(first):
            raise ValueError(
                f"repository {_excerpt(self.repository)} would read as registry {_excerpt(first)}; "
                "give the registry explicitly"
            )
        return self

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``[host[:port]/]repository[:tag][@digest]``; raise InvalidReferenceError if bad."""
        if not text:
            raise InvalidReferenceError("image reference is empty")
        name, at, digest_text = text.partition("@")
        digest = Digest(digest_text) if at else None

        registry: str | None = None
        first, slash, rest = name.partition("/")
        if slash and looks_like_registry(first):
            registry, name = validate_registry(first), rest

        repository, colon, tag_text = name.rpartition(":")
        if not colon:
            repository, tag = name, None
        else:
            tag = validate_tag(tag_text)
        validate_repository(repository)
        try:
            return cls(registry=registry, repository=repository, tag=tag, digest=digest)
        except ValidationError as exc:  # only the ambiguity checks can still fail here
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise InvalidReferenceError(f"invalid reference {_excerpt(text)}: {reason}") from exc

    @property
    def name(self) -> str:
        """``[registry/]repository``: the reference without tag or digest."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def ref(self) -> str:
        """What to put after ``/manifests/``: the digest if set, else the tag, else ``latest``."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text
