"""When an image was made: the ``created`` field of its config (OCI image-spec), read leniently,
since the field is optional and free text in practice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from pydantic import TypeAdapter, ValidationError

# Neither says when an image was made: ko and Bazel's image rules write the Unix epoch for
# reproducible builds, and Go's zero time stands where a registry (Harbor) had no time at all.
NO_TIME: Final = frozenset({datetime(1970, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)})
_RFC3339: Final = TypeAdapter(datetime)


def parse_created(value: object) -> datetime | None:
    """The time an RFC 3339 text names, zone-aware (UTC when it names none); None for anything
    else, or for a time in NO_TIME."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = _RFC3339.validate_python(value)
    except ValidationError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return None if when in NO_TIME else when
