"""Calls to a registry vendor's own JSON API (Artifactory's REST API, the ECR API, Google's
OAuth2 token endpoint, ACR's token exchange), shared by the vendor adapters.

What the distribution client does for registry requests, done here for these: per-read
timeouts, answers read only up to a cap and within one deadline (``adapters.bounded``), no
redirects followed (a credential or a signed request never travels on to another host), and
every error answer turned into regflow's error tree with a short, printable excerpt that never
repeats what we sent.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from adapters.bounded import NON_BLOB_DEADLINE_SECONDS, cap_bodies_httpx_reads, read_capped, within
from adapters.distribution.client import USER_AGENT, retry_after_seconds
from adapters.errors import (
    ContentError,
    RateLimitedError,
    RegistryError,
    TransportError,
    error_for_status,
)

# Control-plane calls answer in well under a second; a minute covers a slow proxy.
API_CONNECT_TIMEOUT_SECONDS = 10.0
API_READ_TIMEOUT_SECONDS = 60.0
# The largest answer we expect is a listing page (1,000 ECR repositories are ~0.5 MB);
# anything far beyond that is not an answer to our question.
MAX_API_RESPONSE_BYTES = 8 * 1024 * 1024
# Error excerpts are for humans reading a summary: a sentence, not a page.
API_ERROR_DETAIL_CHARS = 300

ErrorClasses = Mapping[str, type[RegistryError]]


def api_client(
    *,
    base_url: str = "",
    verify: ssl.SSLContext | bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: httpx.Auth | None = None,
) -> httpx.AsyncClient:
    timeout = httpx.Timeout(API_CONNECT_TIMEOUT_SECONDS, read=API_READ_TIMEOUT_SECONDS,
                            write=API_READ_TIMEOUT_SECONDS, pool=None)
    # A 401 that auth answers is read by httpx itself: capped here like every answer.
    return httpx.AsyncClient(base_url=base_url, verify=verify, timeout=timeout, transport=transport,
                             auth=auth, follow_redirects=False, headers={"User-Agent": USER_AGENT},
                             event_hooks={"response": [cap_bodies_httpx_reads]})


async def call_json(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    codes: ErrorClasses | None = None,
    parse: bool = True,
    **kw: Any,
) -> Any:
    """Send one request and return its JSON answer (None for an empty 2xx body, or when
    ``parse`` is off: some APIs confirm in plain text).

    ``what`` names the API in messages ("ECR API", "Artifactory"); ``codes`` maps vendor error
    codes (AWS ``__type``, OAuth2 ``error``) to the error class they mean.
    """
    request = client.build_request(method, url, **kw)
    where = f"{request.url.host}{request.url.path}"
    async with within(NON_BLOB_DEADLINE_SECONDS, what=f"{what} {method} {where}"):
        try:
            response = await client.send(request, stream=True)
            try:
                # An error's body is only an excerpt for the message: cut, never refused.
                body = await read_capped(response, MAX_API_RESPONSE_BYTES, what=f"{what} {method} {where}",
                                         truncate=not 200 <= response.status_code < 300)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise TransportError(f"{what} {method} {where}: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise api_error(what, method, where, response.status_code, body,
                        retry_after=response.headers.get("Retry-After"), codes=codes)
    if not parse or not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise ContentError(f"{what} {method} {where}: answer is not JSON") from None


def api_error(what: str, method: str, where: str, status: int, body: bytes, *,
              retry_after: str | None = None, codes: ErrorClasses | None = None) -> RegistryError:
    """The error an answer means: the vendor's code first, then the HTTP status."""
    found, detail = diagnostics(body)
    message = f"{what} {method} {where}: {status}" + (f" {', '.join(found)}" if found else "") + (
        f": {detail}" if detail else "")
    kw: dict[str, Any] = {"status": status, "method": method, "url": where, "codes": found,
                          "detail": detail}
    for code in found:
        cls = (codes or {}).get(code)
        if cls is RateLimitedError:
            return RateLimitedError(message, retry_after=retry_after_seconds(retry_after), **kw)
        if cls is not None:
            return cls(message, **kw)
    return error_for_status(message, retry_after=retry_after_seconds(retry_after), **kw)


def diagnostics(body: bytes) -> tuple[tuple[str, ...], str]:
    """Codes and a message from the error shapes vendors use: AWS ``{"__type", "message"}``,
    OAuth2 ``{"error", "error_description"}``, Artifactory/distribution ``{"errors": [...]}``."""
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        data = None
    codes: list[str] = []
    messages: list[str] = []
    if isinstance(data, dict):
        aws_type = data.get("__type")
        if isinstance(aws_type, str):
            codes.append(aws_type.rpartition("#")[2])  # "com.amazonaws.ecr#X" -> "X"
        oauth_error = data.get("error")
        if isinstance(oauth_error, str):
            codes.append(oauth_error)
        for key in ("message", "Message", "error_description"):
            if isinstance(data.get(key), str):
                messages.append(data[key])
        errors = data.get("errors")
        if isinstance(errors, list):
            for e in errors:
                if isinstance(e, dict):
                    if isinstance(e.get("code"), str):
                        codes.append(e["code"])
                    if e.get("message") is not None:
                        messages.append(str(e["message"]))
        text = "; ".join(messages)
    else:
        text = body.decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() else " " for c in text).strip()
    return tuple(c[:64] for c in codes), printable[:API_ERROR_DETAIL_CHARS]


