"""The HTTP endpoint registries post their notifications to: ``POST /webhooks/{source}``.

Order of checks, each failing closed with nothing submitted: the source must be configured
(404), the caller must prove it knows the source's secret (401; an HMAC caller also signs a
timestamp within SIGNATURE_TOLERANCE_SECONDS of ours), the body must fit MAX_WEBHOOK_BODY_BYTES
(413) and parse as the source's kind of payload (400). Events whose ids were already acted on
within the memory's window are replays: ignored, and a body of nothing else is answered 200.
Only the new events are handed to ``submit``, which decides what runs to start and answers how
many it did.

Secrets and Authorization headers are never logged nor echoed; error bodies are fixed texts
or the parser's short reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.errors import ContentError
from deployments.events import MAX_WEBHOOK_BODY_BYTES, PARSERS, RegistryEvent
from deployments.replays import EventMemory
from policies.models import Name

logger = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Regflow-Signature"
# Unix seconds, signed with the body (``<timestamp>.<body>``): a captured request stops working
# once it is older than the tolerance, and the event-id memory covers the time before that.
TIMESTAMP_HEADER: Final = "X-Regflow-Timestamp"
# Clock drift between hosts plus a relay's delivery time; a relay re-signs each retry.
SIGNATURE_TOLERANCE_SECONDS: Final = 300
_MAX_TIMESTAMP_DIGITS: Final = 12
# A guessable secret would make the endpoint open to anyone who can reach it, and the secret
# is typed into a registry's settings once, so length costs nothing.
MIN_SECRET_LENGTH: Final = 16
_SIGNATURE_PREFIX: Final = "sha256="

SourceLookup = Callable[[str], "WebhookSource | None"]
Submit = Callable[[list[RegistryEvent]], Awaitable[int]]


class WebhookSource(BaseModel):
    """A registry allowed to post notifications, and how it proves who it is.

    ``bearer``: ``Authorization: Bearer <secret>`` (distribution sends configured headers;
    Harbor sends its "Auth Header" verbatim, so the bare secret is accepted from Harbor too;
    Docker Hub cannot send headers, so it puts ``?token=<secret>`` in the webhook URL).
    ``hmac``: ``X-Regflow-Timestamp: <unix seconds>`` and ``X-Regflow-Signature:
    sha256=<hex HMAC-SHA256 of "<timestamp>." followed by the raw body>``, for a relay that can
    sign.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: Name
    kind: Literal["distribution", "harbor", "dockerhub"]
    auth: Literal["bearer", "hmac"] = "bearer"
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _strong_enough(cls, value: SecretStr) -> SecretStr:
        # Messages never repeat the text: it is the secret.
        text = value.get_secret_value()
        if len(text) < MIN_SECRET_LENGTH:
            raise ValueError(f"secret: use at least {MIN_SECRET_LENGTH} characters")
        if text != text.strip() or not text.isprintable():
            raise ValueError("secret: no surrounding spaces or control characters (headers lose them)")
        return value


def same_secret(presented: str, secret: SecretStr) -> bool:
    # Hashing first makes both sides the same length, so not even the secret's length leaks.
    a = hashlib.sha256(presented.encode()).digest()
    b = hashlib.sha256(secret.get_secret_value().encode()).digest()
    return hmac.compare_digest(a, b)


def _bearer_ok(source: WebhookSource, request: Request) -> bool:
    presented: list[str] = []
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            presented.append(value.strip())
        if source.kind == "harbor":
            presented.append(header.strip())
    if source.kind == "dockerhub":
        # Only Docker Hub may use the query: URLs are written to access logs and proxies.
        token = request.query_params.get("token")
        if token is not None:
            presented.append(token)
    # Every candidate is compared, so the answer's timing says nothing about which one matched.
    results = [same_secret(value, source.secret) for value in presented]
    return any(results)


def _signature(request: Request) -> str | None:
    """The hex part of a well-formed signature header, lower-cased."""
    value = request.headers.get(SIGNATURE_HEADER, "").strip()
    if not value.lower().startswith(_SIGNATURE_PREFIX):
        return None
    hex_part = value[len(_SIGNATURE_PREFIX) :].lower()
    if len(hex_part) != 64 or not all(c in "0123456789abcdef" for c in hex_part):
        return None
    return hex_part


def _timestamp(request: Request, now: float) -> str | None:
    """The signed timestamp as sent, when it is well formed and close enough to ``now``."""
    value = request.headers.get(TIMESTAMP_HEADER, "").strip()
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_TIMESTAMP_DIGITS:
        return None
    return value if abs(int(value) - now) <= SIGNATURE_TOLERANCE_SECONDS else None


def _signature_ok(source: WebhookSource, signature: str, timestamp: str, body: bytes) -> bool:
    signed = timestamp.encode() + b"." + body
    expected = hmac.new(source.secret.get_secret_value().encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BODY_BYTES:
        raise _BodyTooLarge
    body = bytearray()
    # Chunked bodies declare no length: count while reading, never buffer past the cap.
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_WEBHOOK_BODY_BYTES:
            raise _BodyTooLarge
    return bytes(body)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unauthorized(source: WebhookSource, request: Request) -> JSONResponse:
    client = request.client.host if request.client else "unknown"
    logger.warning("webhook %s: authentication failed (from %s)", source.name, client)
    return _error(401, "missing or wrong credentials", {"WWW-Authenticate": 'Bearer realm="regflow"'})


def create_receiver(sources: SourceLookup, submit: Submit, *, memory: EventMemory | None = None,
                    clock: Callable[[], float] = time.time, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The webhook app; ``sources`` names the configured senders, ``submit`` starts runs,
    ``memory`` holds the event ids acted on (one per app unless given); ``routes`` are served
    beside the webhooks (serve's ``/metrics``), each doing its own authentication."""
    seen = memory if memory is not None else EventMemory()

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def receive(request: Request) -> Response:
        source = sources(request.path_params["source"])
        if source is None:
            return _error(404, "unknown webhook source")
        signature = timestamp = None
        if source.auth == "bearer":
            if not _bearer_ok(source, request):
                return _unauthorized(source, request)
        else:
            # Checked before the body is read, so an unsigned or stale caller cannot make us buffer it.
            signature, timestamp = _signature(request), _timestamp(request, clock())
            if signature is None or timestamp is None:
                return _unauthorized(source, request)
        try:
            body = await _read_body(request)
        except _BodyTooLarge:
            return _error(413, f"body over {MAX_WEBHOOK_BODY_BYTES} bytes")
        if signature is not None and timestamp is not None and not _signature_ok(source, signature,
                                                                                 timestamp, body):
            return _unauthorized(source, request)

        try:
            events = PARSERS[source.kind](body, source=source.name)
        except ContentError as exc:
            logger.warning("webhook %s: refused body: %s", source.name, exc)
            return _error(400, str(exc))
        claimed = set(seen.claim((source.name, e.event_id) for e in events))
        fresh = []
        for event in events:
            if (source.name, event.event_id) in claimed:
                claimed.discard((source.name, event.event_id))  # an id twice in one body counts once
                fresh.append(event)
        replayed = len(events) - len(fresh)
        if events and not fresh:
            logger.info("webhook %s: %d events already acted on: ignored", source.name, replayed)
            return JSONResponse({"accepted": 0, "runs": 0, "dropped": events.dropped, "replayed": replayed})
        runs = 0
        if fresh:
            try:
                runs = await submit(fresh)
            except Exception:
                seen.forget((source.name, e.event_id) for e in fresh)
                # 503 makes the registry deliver again instead of losing the event.
                logger.exception("webhook %s: starting runs for %d events failed", source.name, len(fresh))
                return _error(503, "could not start runs; deliver again later")
        logger.info(
            "webhook %s: %d events accepted, %d replayed, %d dropped, %d runs",
            source.name, len(fresh), replayed, events.dropped, runs,
        )
        answer = {"accepted": len(fresh), "runs": runs, "dropped": events.dropped, "replayed": replayed}
        return JSONResponse(answer, status_code=202)

    return Starlette(
        routes=[
            Route("/webhooks/health", health, methods=["GET"]),
            Route("/webhooks/{source}", receive, methods=["POST"]),
            *routes,
        ]
    )
