"""AWS Signature Version 4, written out for the few ECR API calls regflow makes (no AWS SDK).

    canonical request = method, canonical URI, canonical query, canonical headers,
                        signed header names, hex sha256 of the body       (joined by newlines)
    string to sign    = "AWS4-HMAC-SHA256", amz date, scope, hex sha256 of the canonical request
    scope             = date/region/service/aws4_request
    signing key       = HMAC-SHA256 chain: "AWS4" + secret -> date -> region -> service -> "aws4_request"
    Authorization     = AWS4-HMAC-SHA256 Credential=<key id>/<scope>, SignedHeaders=..., Signature=...

Checked against AWS's published SigV4 test suite (tests/unit/test_aws_sigv4.py). The secret
key only ever enters the HMAC chain; what goes on the wire is the key id and a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Generator, Iterable
from urllib.parse import quote, unquote

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

ALGORITHM = "AWS4-HMAC-SHA256"
# The only characters SigV4 leaves unencoded besides letters and digits (RFC 3986 unreserved).
_UNRESERVED = "-_.~"
_SPACES = re.compile(r"\s+")


class AwsCredentials(BaseModel):
    """An access key pair (and the session token of temporary credentials)."""

    model_config = ConfigDict(frozen=True)

    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """Percent-encode UTF-8 bytes of everything but the unreserved characters (and '/')."""
    return quote(text, safe=_UNRESERVED + ("/" if keep_slash else ""))


def canonical_uri(raw_path: str) -> str:
    """The path with dot segments and empty segments removed, each segment encoded once."""
    path = unquote(raw_path) or "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalized = "/" + "/".join(segments)
    if segments and path.endswith("/"):
        normalized += "/"
    return uri_encode(normalized, keep_slash=True)


def canonical_query(raw_query: str) -> str:
    """Parameters decoded, re-encoded strictly and sorted by name, then value."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((uri_encode(unquote(name)), uri_encode(unquote(value))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(canonical header block, signed header names): names lower-cased and sorted, values
    trimmed with inner runs of spaces collapsed, repeated headers joined by commas."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(_SPACES.sub(" ", value.strip()))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


def canonical_request(method: str, raw_path: str, raw_query: str, headers: Iterable[tuple[str, str]],
                      body: bytes) -> tuple[str, str]:
    """(canonical request, signed header names)."""
    block, signed = canonical_headers(headers)
    payload = hashlib.sha256(body).hexdigest()
    text = "\n".join([method.upper(), canonical_uri(raw_path), canonical_query(raw_query), block, signed,
                      payload])
    return text, signed


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def signing_key(secret: SecretStr, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret.get_secret_value()).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(
    method: str,
    url: str | httpx.URL,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    credentials: AwsCredentials,
    *,
    region: str,
    service: str,
    amz_date: str,
) -> dict[str, str]:
    """The headers to add to a request: ``X-Amz-Date``, ``Authorization`` and, with temporary
    credentials, ``X-Amz-Security-Token``. Every header in ``headers`` is signed, plus
    ``host`` (from the URL when absent) and the ones added here."""
    url = httpx.URL(url)
    given = [(n, v) for n, v in headers if n.lower() not in ("x-amz-date", "x-amz-security-token",
                                                               "authorization")]
    added = {"X-Amz-Date": amz_date}
    if credentials.session_token is not None:
        added["X-Amz-Security-Token"] = credentials.session_token.get_secret_value()
    if not any(n.lower() == "host" for n, _ in given):
        given.append(("host", url.netloc.decode()))
    canonical, signed = canonical_request(method, url.raw_path.decode().partition("?")[0],
                                          url.query.decode(), [*given, *added.items()], body)
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    key = signing_key(credentials.secret_access_key, date, region, service)
    signature = hmac.new(key, string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256).hexdigest()
    added["Authorization"] = (f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
                              f"SignedHeaders={signed}, Signature={signature}")
    return added


def amz_date(epoch_seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_seconds))


class SigV4Auth(httpx.Auth):
    """Signs each request for one region and service. Signs ``host``, ``content-type`` and the
    ``x-amz-*`` headers: the ones a proxy leaves alone."""

    requires_request_body = True

    def __init__(self, credentials: AwsCredentials, *, region: str, service: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._credentials = credentials
        self._region = region
        self._service = service
        self._clock = clock

    def __repr__(self) -> str:
        return f"SigV4Auth(region={self._region!r}, service={self._service!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        signed = [(n, v) for n, v in request.headers.items()
                  if n.lower() in ("host", "content-type") or n.lower().startswith("x-amz-")]
        request.headers.update(sign(request.method, request.url, signed, request.content, self._credentials,
                                    region=self._region, service=self._service,
                                    amz_date=amz_date(self._clock())))
        yield request
