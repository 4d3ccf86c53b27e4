"""Registry notifications, read into one event shape whatever registry sent them.

Three senders: CNCF distribution's ``{"events": [...]}`` envelope, Harbor's webhook payload
(the "Default" format) and Docker Hub's repository webhook. Each parser takes the raw body and
returns the pushes and deletions of tagged manifests in it; everything else in a body is
either *ignored* (pulls, blob events, event types we do not replicate on) or *dropped* (an
entry that is malformed or names an invalid repository, tag or digest: the rest of the body
still counts). A body that is not JSON, not the sender's shape, or too large is refused as a
whole with ContentError.

No Prefect here: this is plain code, tested without a server.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from adapters.errors import ContentError, InvalidReferenceError
from adapters.oci import validate_repository, validate_tag
from adapters.oci.digest import Digest
from adapters.oci.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    DOCKER_SCHEMA1_MANIFEST,
    DOCKER_SCHEMA1_SIGNED_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    base_type,
)

logger = logging.getLogger(__name__)

# A real envelope is a few KiB: distribution batches a handful of events, Harbor sends one
# artifact's resources, Docker Hub one push. 1 MiB leaves room for the largest honest batch
# while keeping an authenticated but misbehaving sender from making us buffer and parse
# arbitrary amounts of JSON.
MAX_WEBHOOK_BODY_BYTES: Final = 1024 * 1024

# Ids end up in run parameters and names; a longer or odd one is replaced by a hash.
_MAX_EVENT_ID_LENGTH: Final = 128

_MANIFEST_TYPES: Final = frozenset(
    {
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST_V2,
        DOCKER_MANIFEST_LIST,
        DOCKER_SCHEMA1_MANIFEST,
        DOCKER_SCHEMA1_SIGNED_MANIFEST,
    }
)
# Distribution does not know a blob's type when it stores it and reports octet-stream; older
# releases and some clients pass the layer's or config's own type through instead.
_BLOB_TYPES: Final = frozenset({"application/octet-stream", DOCKER_CONFIG, OCI_CONFIG})
_BLOB_TYPE_MARKERS: Final = (".layer.", "rootfs", "config", ".empty.")


class RegistryEvent(BaseModel):
    """A push or deletion of one manifest in one repository of the registry ``source``."""

    # hide_input_in_errors: a rejected field is the sender's text, echoed nowhere.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    source: str
    action: Literal["push", "delete"]
    repository: str
    tag: str | None = None
    digest: Digest | None = None
    event_id: str
    media_type: str | None = None

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        return _grammar(validate_repository, value)

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        return None if value is None else _grammar(validate_tag, value)


def _grammar(check: Callable[[str], str], value: str) -> str:
    # pydantic reports ValueError as a validation error; InvalidReferenceError is a ConfigError.
    try:
        return check(value)
    except InvalidReferenceError as exc:
        raise ValueError(str(exc)) from None


class ParsedEvents(list[RegistryEvent]):
    """The events of one body, and how many of its entries were dropped as invalid."""

    def __init__(self, events: list[RegistryEvent] | None = None, dropped: int = 0) -> None:
        super().__init__(events or ())
        self.dropped = dropped


class Parser(Protocol):
    def __call__(self, body: bytes, *, source: str = "") -> ParsedEvents: ...


class _Dropped(Exception):
    """One entry of a body is unusable; the reason is logged, never sent back."""


# (entry, its index) -> the event, or None when the entry is ignored
_EntryReader = Callable[[object, int], RegistryEvent | None]


def _load(body: bytes, sender: str) -> Any:
    if len(body) > MAX_WEBHOOK_BODY_BYTES:
        raise ContentError(f"{sender} body is {len(body)} bytes, over the {MAX_WEBHOOK_BODY_BYTES} limit")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ContentError(f"{sender} body is not UTF-8 text") from None
    except RecursionError:
        raise ContentError(f"{sender} body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int literals past Python's digit limit
        raise ContentError(f"{sender} body is not valid JSON: {type(exc).__name__}") from None


def _body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def _event_id(raw: object, fallback: str) -> str:
    if (
        isinstance(raw, str)
        and 0 < len(raw) <= _MAX_EVENT_ID_LENGTH
        and raw.isascii()
        and raw.isprintable()
    ):
        return raw
    return fallback


def _text(entry: Mapping[str, Any], key: str) -> str | None:
    """A string field, None when absent or empty; any other type makes the entry unusable."""
    value = entry.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Dropped(f"{key} is a {type(value).__name__}, not a string")
    return value


def _event(
    source: str,
    action: Literal["push", "delete"],
    repository: str | None,
    tag: str | None,
    digest: str | None,
    event_id: str,
    media_type: str | None = None,
) -> RegistryEvent:
    if repository is None:
        raise _Dropped("no repository")
    try:
        return RegistryEvent.model_validate(
            {
                "source": source,
                "action": action,
                "repository": repository,
                "tag": tag,
                "digest": digest,
                "event_id": event_id,
                "media_type": media_type,
            }
        )
    except ValidationError as exc:
        raise _Dropped("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None


def _is_blob(target: Mapping[str, Any]) -> bool:
    url = target.get("url")
    if isinstance(url, str) and "/blobs/" in url:
        return True
    media_type = target.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        return False
    kind = base_type(media_type)
    if kind in _MANIFEST_TYPES:
        return False
    return kind in _BLOB_TYPES or any(marker in kind for marker in _BLOB_TYPE_MARKERS)


def _collect(sender: str, entries: list[Any], read: _EntryReader) -> ParsedEvents:
    events = ParsedEvents()
    for index, raw in enumerate(entries):
        try:
            event = read(raw, index)
        except _Dropped as exc:
            events.dropped += 1
            logger.warning("%s webhook: dropped entry %d: %s", sender, index, exc)
            continue
        if event is not None:
            events.append(event)
    return events


def parse_distribution(body: bytes, *, source: str = "") -> ParsedEvents:
    """Tagged manifest pushes and deletions from a CNCF distribution ``events`` envelope.

    Delete events carry only the repository and a digest (or a tag, for a tag deletion), so a
    blob deletion looks like a manifest deletion and is passed on as one.
    """
    envelope = _load(body, "distribution")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise ContentError('distribution body is not an {"events": [...]} envelope')

    body_hash = _body_hash(body)

    def one(raw: object, index: int) -> RegistryEvent | None:
        if not isinstance(raw, dict):
            raise _Dropped("an event is not an object")
        action = raw.get("action")
        if action not in ("push", "delete"):
            return None  # pull and mount change nothing to replicate
        target = raw.get("target")
        if not isinstance(target, dict):
            raise _Dropped("event has no target object")
        if _is_blob(target):
            return None
        tag, digest = _text(target, "tag"), _text(target, "digest")
        if action == "push" and tag is None:
            # A manifest pushed by digest alone is a platform manifest of an index (buildx
            # pushes each before the tagged index) or a referrer; the tagged push carries it.
            # Read as "the whole repository" it would start a full copy per platform pushed.
            return None
        if action == "delete" and tag is None and digest is None:
            return None  # a repository deletion: never replicated from an event
        media_type = _text(target, "mediaType")
        return _event(
            source,
            "push" if action == "push" else "delete",
            _text(target, "repository"),
            tag,
            digest,
            _event_id(raw.get("id"), f"distribution-{body_hash}-{index}"),
            base_type(media_type) if media_type else None,
        )

    return _collect("distribution", envelope["events"], one)


_HARBOR_ACTIONS: Final[dict[str, Literal["push", "delete"]]] = {
    "PUSH_ARTIFACT": "push",
    "DELETE_ARTIFACT": "delete",
}


def parse_harbor(body: bytes, *, source: str = "") -> ParsedEvents:
    """Artifact pushes and deletions from a Harbor webhook ("Default" payload format).

    One event per ``event_data.resources[]`` entry. The Default format has no event id, so
    each gets a hash of the body and its index: the same again when Harbor retries delivery.
    """
    payload = _load(body, "harbor")
    if isinstance(payload, dict) and "specversion" in payload:
        raise ContentError("harbor CloudEvents payloads are not supported; choose the Default format")
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise ContentError('harbor body has no "type" field')
    action = _HARBOR_ACTIONS.get(payload["type"])
    if action is None:
        return ParsedEvents()  # pulls, scans, quotas, replication results
    data = payload.get("event_data")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("resources"), list)
        or not isinstance(data.get("repository"), dict)
    ):
        raise ContentError("harbor body has no event_data with resources and repository")
    repository_info: dict[str, Any] = data["repository"]
    # One id shared by several resources would make them look like retries of each other.
    id_prefix = _event_id(payload.get("id"), f"harbor-{_body_hash(body)}")

    def one(raw: object, index: int) -> RegistryEvent | None:
        if not isinstance(raw, dict):
            raise _Dropped("a resource is not an object")
        tag = _text(raw, "tag")
        if action == "push" and tag is None:
            return None  # an untagged artifact: see parse_distribution
        return _event(
            source,
            action,
            _text(repository_info, "repo_full_name"),
            tag,
            _text(raw, "digest"),
            f"{id_prefix}-{index}",
        )

    return _collect("harbor", data["resources"], one)


def parse_dockerhub(body: bytes, *, source: str = "") -> ParsedEvents:
    """The tag push a Docker Hub repository webhook reports (Docker Hub sends nothing else)."""
    payload = _load(body, "dockerhub")
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("push_data"), dict)
        or not isinstance(payload.get("repository"), dict)
    ):
        raise ContentError("dockerhub body has no push_data and repository objects")
    push_data: dict[str, Any] = payload["push_data"]
    repository_info: dict[str, Any] = payload["repository"]
    callback = payload.get("callback_url")
    # The callback URL is unique per push, but it is also a capability to report on that push:
    # only its hash is kept.
    seed = callback.encode() if isinstance(callback, str) and callback else body
    event_id = f"dockerhub-{_body_hash(seed)}"

    def one(_: object, __: int) -> RegistryEvent | None:
        tag = _text(push_data, "tag")
        if tag is None:
            return None
        return _event(source, "push", _text(repository_info, "repo_name"), tag, None, event_id)

    return _collect("dockerhub", [payload], one)


PARSERS: Final[dict[str, Parser]] = {
    "distribution": parse_distribution,
    "harbor": parse_harbor,
    "dockerhub": parse_dockerhub,
}
