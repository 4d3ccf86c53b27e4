"""Hosts on other loopback addresses, for tests of where credentials go.

Linux routes all of 127.0.0.0/8 to ``lo``, so 127.0.0.1, 127.0.0.2 and 127.0.0.3 are three
hosts to a client: three origins, no network. A :class:`RecordingHost` listens on one of them
and records every request it receives, headers included, before answering it through a
``Responder``; a test then asserts exactly what each host was sent. ``token_answers`` makes a
host a token service for a real registry (tokens signed with a :class:`TokenService`'s key), and
:class:`ConfiguredRegistry` is a real registry with extra config (storage redirects to another
host, upload locations on another host).

    with RecordingHost("127.0.0.2", lambda seen: (401, {}, b"")) as storage:
        ... storage.url, storage.received ...
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.registry import RegistryProcess, TokenAuthConfig
from tests.support.token_service import TokenService


@dataclass(frozen=True)
class Received:
    """One request as it reached a host."""

    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def authorization(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), None)


# (status, headers, body); Content-Length is added.
Answer = tuple[int, dict[str, str], bytes]
Responder = Callable[[Received], Answer]


class RecordingHost:
    """An HTTP/1.1 server on ``address`` (a free port) that records, then answers, every request."""

    def __init__(self, address: str, responder: Responder) -> None:
        self.address = address
        self.responder = responder
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((address, 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def netloc(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def received(self) -> list[Received]:
        """A copy of every request so far, oldest first."""
        with self._lock:
            return list(self._received)

    def record(self, request: Received) -> None:
        with self._lock:
            self._received.append(request)

    def start(self) -> RecordingHost:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True,
                                            name=f"recording-host-{self.netloc}")
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> RecordingHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RecordingHost {self.url} received={len(self.received)}>"


def _handler_for(host: RecordingHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> None:
            """Read the request body (and drop it), so the client can finish sending before
            it reads the answer, and the connection stays usable."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    self.rfile.read(size + 2)  # the chunk and its CRLF (or the final CRLF)
                    if size == 0:
                        return
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                piece = self.rfile.read(min(remaining, 1 << 16))
                if not piece:
                    return
                remaining -= len(piece)

        def _answer(self) -> None:
            self._body()
            seen = Received(self.command, self.path, dict(self.headers.items()))
            host.record(seen)
            status, headers, body = host.responder(seen)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    return Handler


def json_answer(status: int, body: object, headers: Mapping[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def challenge_answer(challenge: str) -> Answer:
    """A 401 as a registry or object store sends it."""
    return json_answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                       {"WWW-Authenticate": challenge})


def token_answers(service: TokenService) -> Responder:
    """Answer ``GET /token?service=&scope=`` with Basic credentials as distribution's token
    flow does, with tokens ``service``'s key signs (so a registry trusting it accepts them)."""

    def respond(seen: Received) -> Answer:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(seen.target).query)
        username = password = None
        header = seen.authorization or ""
        if header[:6].lower() == "basic ":
            try:
                username, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return json_answer(400, {"error": "bad basic header"})
        authenticated = username is not None and service.users.get(username) == password
        if username is not None and not authenticated:
            return json_answer(401, {"error": "bad credentials"})
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        access = service.grant(username, authenticated, scopes)
        token = service.issue_token(username or "", access)
        return json_answer(200, {"token": token, "expires_in": service.ttl})

    return respond


def token_auth_at(service: TokenService, realm: str) -> TokenAuthConfig:
    """A registry's ``auth: token:`` block trusting ``service``'s key, naming ``realm``."""
    return TokenAuthConfig(realm=realm, issuer=service.issuer, service=service.service,
                           rootcertbundle=service.cert_path)


class ConfiguredRegistry(RegistryProcess):
    """A real registry whose config gets ``extra`` merged in, section by section, e.g.
    ``{"middleware": {"storage": [{"name": "redirect", "options": {"baseurl": ...}}]}}`` (blob
    GETs answered with a redirect to another host) or ``{"http": {"host": ...}}`` (the URL the
    registry writes into its upload ``Location``s)."""

    def __init__(self, *args: Any, extra: Mapping[str, Any], **kwargs: Any) -> None:
        self.extra = extra
        super().__init__(*args, **kwargs)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        for section, value in self.extra.items():
            if isinstance(value, Mapping) and isinstance(cfg.get(section), dict):
                cfg[section] = {**cfg[section], **value}
            else:
                cfg[section] = value
        return cfg
