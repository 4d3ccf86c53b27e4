"""Calls to the signed control-plane APIs of the Chinese cloud registries (Alibaba Cloud ACR,
Tencent Cloud TCR, Volcengine CR), shared by their adapters.

All three sign each request with an HMAC-SHA256 scheme built on the same canonical request as
AWS SigV4 (``adapters.aws_sigv4.canonical_request``), answer JSON, and put their error in the
body in a shape of their own -- Tencent even with HTTP 200. So, on top of
``adapters.vendor_http``: the vendor says where its error code is (``ErrorOf``), and a table of
code prefixes says what the code means in regflow's error tree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.bounded import NON_BLOB_DEADLINE_SECONDS, read_capped, within
from adapters.distribution.client import retry_after_seconds
from adapters.errors import ContentError, RateLimitedError, RegistryError, TransportError, error_for_status
from adapters.vendor_http import API_ERROR_DETAIL_CHARS, MAX_API_RESPONSE_BYTES

# (code, message) of an answer's error, or None when the answer is no error.
ErrorOf = Callable[[Any], tuple[str, str] | None]
# Vendor error code prefix -> the error class it means (first match wins; longest first).
CodePrefixes = Mapping[str, type[RegistryError]]


async def call_signed(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    error_of: ErrorOf,
    codes: CodePrefixes,
    params: Mapping[str, str | int] | None = None,
    body: object = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Send one request (the client's auth signs it) and return its JSON answer; a vendor
    error raises, named by ``what`` and never repeating what we sent."""
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    request = client.build_request(
        method, url, params=params, content=content,
        headers={**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})})
    where = f"{request.url.host}{request.url.path}"
    async with within(NON_BLOB_DEADLINE_SECONDS, what=f"{what} {method} {where}"):
        try:
            response = await client.send(request, stream=True)
            try:
                body_bytes = await read_capped(response, MAX_API_RESPONSE_BYTES, what=f"{what} {where}",
                                               truncate=not 200 <= response.status_code < 300)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise TransportError(f"{what} {method} {where}: {type(exc).__name__}") from None
    try:
        data = json.loads(body_bytes) if body_bytes.strip() else None
    except ValueError:
        data = None
        if 200 <= response.status_code < 300:
            raise ContentError(f"{what} {method} {where}: answer is not JSON") from None
    found = error_of(data) if isinstance(data, dict) else None
    if found is None and 200 <= response.status_code < 300:
        return data
    code, text = found if found is not None else ("", body_bytes.decode("utf-8", "replace"))
    detail = "".join(c if c.isprintable() else " " for c in text).strip()[:API_ERROR_DETAIL_CHARS]
    status = response.status_code if response.status_code >= 400 else 400
    message = f"{what} {method} {where}: {response.status_code}" + (f" {code}" if code else "") + (
        f": {detail}" if detail else "")
    kw: dict[str, Any] = {"status": status, "method": method, "url": where,
                          "codes": (code[:64],) if code else (), "detail": detail}
    wait = retry_after_seconds(response.headers.get("Retry-After"))
    meant = next((cls for prefix, cls in sorted(codes.items(), key=lambda item: -len(item[0]))
                  if code and code.startswith(prefix)), None)
    if meant is RateLimitedError:
        raise RateLimitedError(message, retry_after=wait, **kw)
    if meant is not None:
        raise meant(message, **kw)
    raise error_for_status(message, retry_after=wait, **kw)


class CloudAnswer(BaseModel):
    """A cloud API's JSON answer: extra fields ignored, and never echoed in a validation error
    (token answers hold the registry password)."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)


AnswerT = TypeVar("AnswerT", bound=BaseModel)


def parse_answer(model: type[AnswerT], raw: Any, what: str) -> AnswerT:
    """``raw`` read as ``model``; an answer of another shape is a ContentError naming ``what``."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        raise ContentError(f"{what}: unexpected answer") from None
