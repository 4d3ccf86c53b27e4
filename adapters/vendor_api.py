"""A small JSON client for a registry vendor's own REST API: the listings and namespace calls
the distribution spec does not have (Docker Hub, GitHub, Quay, GitLab).

* TLS exactly as for the registry (its CA bundle, or ``insecure``).
* Credentials travel only to the API's own host: the auth flow adds them to no other host, and
  redirects are not followed (httpx would carry a custom header such as GitLab's
  ``PRIVATE-TOKEN`` to wherever a 3xx points). A page link to another host is refused.
* Every answer is read up to ``MAX_API_RESPONSE_BYTES`` within one deadline
  (``adapters.bounded``); HTTP errors map onto
  ``adapters.errors`` (429 and 5xx transient, a 429's or GitHub's reset time kept).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from adapters.bounded import NON_BLOB_DEADLINE_SECONDS, cap_bodies_httpx_reads, read_capped, within
from adapters.distribution.client import (
    CONNECT_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    USER_AGENT,
    retry_after_seconds,
    tls_verify,
)
from adapters.endpoint import Endpoint
from adapters.errors import (
    ContentError,
    RateLimitedError,
    RegistryError,
    TransportError,
    error_for_status,
)

# A GitLab page of 100 repositories with every tag inlined runs to a few MiB; anything beyond
# this is not a page of names but a broken or hostile server.
MAX_API_RESPONSE_BYTES = 16 * 1024 * 1024
# Pages are at most 100 entries: 10,000 pages is a million repositories, far past any account,
# and a pagination loop on a broken API must end.
MAX_API_PAGES = 10_000
# Enough of a vendor's error message to act on, never a whole HTML page.
API_ERROR_DETAIL_CHARS = 300

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    url: httpx.URL
    headers: httpx.Headers
    data: Any  # the parsed JSON body; None when the body is empty

    def message(self) -> str:
        """The vendor's own words in an answer we take as a status (e.g. "already exists")."""
        return vendor_message(json.dumps(self.data).encode()) if self.data is not None else ""

    def parse(self, model: type[ModelT]) -> ModelT:
        """The body as ``model``: a body of another shape is the vendor's fault, not ours."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise ContentError(f"{_where(self.url)}: unexpected answer "
                               f"({exc.error_count()} field errors, e.g. {_first_error(exc)})") from None


# Where the next page is, read from one page: an absolute or API-relative URL, or None.
NextPage = Callable[[ApiResponse], str | None]


class HostBoundAuth(httpx.Auth):
    """Adds credentials to requests for one host only; subclasses say which and how to renew.

    ``authorize`` sets the headers; when the API answers 401 and ``renew`` says it got fresh
    credentials (a re-login), the request is sent once more.
    """

    def __init__(self, host: str) -> None:
        self.host = host

    async def authorize(self, request: httpx.Request) -> None:
        raise NotImplementedError

    async def renew(self) -> bool:
        return False

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("vendor API auth is used with httpx.AsyncClient only")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if request.url.netloc.decode() != self.host:
            yield request
            return
        await self.authorize(request)
        response = yield request
        if response.status_code == 401 and await self.renew():
            await self.authorize(request)
            yield request


class HeaderAuth(HostBoundAuth):
    """Fixed headers, e.g. ``Authorization: Bearer <token>`` or GitLab's ``PRIVATE-TOKEN``."""

    def __init__(self, host: str, headers: Callable[[], Mapping[str, str]]) -> None:
        super().__init__(host)
        # A callable, so that the secret is read when a request is made and held nowhere else.
        self._headers = headers

    def __repr__(self) -> str:
        return f"HeaderAuth(host={self.host!r})"

    async def authorize(self, request: httpx.Request) -> None:
        request.headers.update(self._headers())


class VendorApi:
    """One vendor API (``base_url`` = scheme://host[:port][/prefix]) over one connection pool."""

    def __init__(
        self,
        base_url: str,
        endpoint: Endpoint,
        *,
        auth: Callable[[str], HostBoundAuth] | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = httpx.URL(self.base_url)
        self.host = parts.netloc.decode()
        self._scheme = parts.scheme
        self.auth = auth(self.host) if auth is not None else None
        timeout = httpx.Timeout(CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS,
                                write=READ_TIMEOUT_SECONDS, pool=None)
        self._http = httpx.AsyncClient(
            verify=tls_verify(endpoint), timeout=timeout, transport=transport,
            follow_redirects=False, auth=self.auth,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
            # A 401 that auth answers is read by httpx itself: capped here like every answer.
            event_hooks={"response": [cap_bodies_httpx_reads]},
        )
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"VendorApi({self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def url(self, path_or_url: str) -> str:
        """An absolute URL on this API; a URL to any other host is refused."""
        if "://" not in path_or_url:
            return f"{self.base_url}/{path_or_url.lstrip('/')}"
        target = httpx.URL(path_or_url)
        if target.netloc.decode() != self.host or target.scheme != self._scheme:
            raise ContentError(f"{self.host} pointed to {target.scheme}://{target.netloc.decode()}: "
                               "not following a link off the API's own host")
        return path_or_url

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: object = None,
        ok: tuple[int, ...] = (200,),
        authenticate: bool = True,
    ) -> ApiResponse:
        """One request. Statuses in ``ok`` come back as answers, any other raises."""
        url = self.url(path_or_url)
        content = None if json_body is None else json.dumps(json_body).encode()
        request = self._http.build_request(
            method, url, params=params, content=content,
            headers={"Content-Type": "application/json"} if content is not None else None)
        self.requests_made += 1
        async with within(NON_BLOB_DEADLINE_SECONDS, what=f"{method} {_where(request.url)}"):
            try:
                send = self._http.send(request, stream=True) if authenticate else \
                    self._http.send(request, stream=True, auth=None)
                response = await send
                try:
                    # An error's body is only an excerpt for the message: cut, never refused.
                    body = await read_capped(response, MAX_API_RESPONSE_BYTES, what=_where(response.url),
                                             truncate=response.status_code not in ok)
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                problem = f"{method} {_where(request.url)}: {type(exc).__name__}: {exc}"
                raise TransportError(problem[:400]) from None
        if response.status_code not in ok:
            raise _error(response, body)
        return ApiResponse(response.status_code, response.url, response.headers, _json(response, body))

    async def get(self, path_or_url: str, *, params: Mapping[str, str | int] | None = None,
                  ok: tuple[int, ...] = (200,)) -> ApiResponse:
        return await self.request("GET", path_or_url, params=params, ok=ok)

    async def pages(self, path_or_url: str, next_page: NextPage, *,
                    params: Mapping[str, str | int] | None = None) -> AsyncIterator[ApiResponse]:
        """Every page from the first, following ``next_page`` until it says None."""
        url: str | None = path_or_url
        query = params
        for _ in range(MAX_API_PAGES):
            if url is None:
                return
            page = await self.get(url, params=query)
            yield page
            url, query = next_page(page), None  # the next page's URL carries its own query
        raise ContentError(f"{self.host}: listing {path_or_url} did not end after {MAX_API_PAGES} pages")


def link_next(page: ApiResponse) -> str | None:
    """The ``Link: <...>; rel="next"`` of a page (GitHub, GitLab)."""
    links = httpx.Response(200, headers=page.headers).links
    target = links.get("next", {}).get("url")
    return target or None


def with_query(url: httpx.URL, **params: str) -> str:
    """``url`` with ``params`` set in its query (for APIs that page by a token or number)."""
    return str(url.copy_merge_params(params))


def _json(response: httpx.Response, body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise ContentError(f"{_where(response.url)}: answered {response.status_code} "
                           "with a body that is not JSON") from None


def _where(url: httpx.URL) -> str:
    # Host and path only: a query may carry page tokens, which are noise in a message.
    parts = urlsplit(str(url))
    return f"{parts.netloc}{parts.path}"


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"[:120]


def vendor_message(body: bytes) -> str:
    """The human part of a vendor's error body: each API names it differently."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        # Quay: error_message; Docker Hub: detail/message; GitHub and GitLab: message/error.
        for key in ("error_message", "message", "detail", "error_description", "error"):
            value = data.get(key)
            if isinstance(value, str | int | float) and str(value):
                return _printable(str(value))
            if isinstance(value, dict | list) and value:
                return _printable(json.dumps(value))
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return _printable("; ".join(str(e.get("message", e) if isinstance(e, dict) else e)
                                        for e in errors))
    return _printable(body.decode("utf-8", "replace"))


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text).strip()[:API_ERROR_DETAIL_CHARS]


def _error(response: httpx.Response, body: bytes) -> RegistryError:
    method, status = response.request.method, response.status_code
    where = _where(response.request.url)
    detail = vendor_message(body)
    message = f"{method} {where}: {status}" + (f": {detail}" if detail else "")
    kw: dict[str, Any] = {"status": status, "method": method, "url": where, "detail": detail}
    if status == 403 and response.headers.get("X-RateLimit-Remaining") == "0":
        # GitHub signals its primary limit as 403 with X-RateLimit-Remaining: 0 and the reset time.
        return RateLimitedError(message, retry_after=_reset_after(response.headers), **kw)
    return error_for_status(message, retry_after=_reset_after(response.headers), **kw)


def _reset_after(headers: httpx.Headers) -> float | None:
    wait = retry_after_seconds(headers.get("Retry-After"))
    reset = headers.get("X-RateLimit-Reset", "")
    if wait is None and reset.isdigit():
        wait = max(0.0, int(reset) - time.time())
    return wait

