"""A blob GET that a registry redirects to storage on another host carries no credentials."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from adapters.distribution.client import DistributionClient
from adapters.endpoint import Endpoint
from adapters.oci import Digest

pytestmark = pytest.mark.integration

BLOB = b"layer bytes served from object storage " * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
USER, PASSWORD = "front-user", "front-password"


class _Recorder(ThreadingHTTPServer):
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[dict[str, str]] = []
        self.storage_url = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Storage(BaseHTTPRequestHandler):
    server: _Recorder

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def log_message(self, *args: object) -> None:
        pass


class _Front(BaseHTTPRequestHandler):
    """Just enough of a basic-auth registry: /v2/ and a blob GET answered with 307."""

    server: _Recorder

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers))
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="front"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(307)
        self.send_header("Location", f"{self.server.storage_url}/bucket/{BLOB_DIGEST}?sig=x")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: _Recorder) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def front_and_storage() -> Iterator[tuple[_Recorder, _Recorder]]:
    storage, front = _Recorder(_Storage), _Recorder(_Front)
    front.storage_url = storage.url
    for server in (storage, front):
        _serve(server)
    yield front, storage
    for server in (storage, front):
        server.shutdown()
        server.server_close()


async def test_redirected_blob_get_sends_no_authorization(front_and_storage):
    front, storage = front_and_storage
    endpoint = Endpoint(url=front.url, username=USER, password=SecretStr(PASSWORD))
    async with DistributionClient(endpoint) as client:
        async with client.open_blob("app/x", Digest(BLOB_DIGEST)) as stream:
            body = b"".join([chunk async for chunk in stream.chunks()])
    assert body == BLOB
    assert any(h.get("Authorization", "").startswith("Basic ") for h in front.seen)
    assert len(storage.seen) == 1
    assert "Authorization" not in storage.seen[0]
    assert PASSWORD not in str(storage.seen[0])
