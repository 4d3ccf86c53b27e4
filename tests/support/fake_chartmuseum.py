"""A fake ChartMuseum in the shapes of its public API (its README's "API" section and the
multitenant handlers of helm/chartmuseum), for unit tests through ``httpx.MockTransport`` and for
integration tests as a threaded HTTP server on 127.0.0.1 (port 0: a free one).

    GET /health                                   {"healthy": true}
    GET /api[/<tenant>]/charts[?offset=&limit=]    {"<name>": [ChartVersion, ...], ...}, newest first
    GET /api[/<tenant>]/charts/<name>              [ChartVersion, ...]; 404 {"error": ...}
    GET /api[/<tenant>]/charts/<name>/<version>    ChartVersion
    GET [/<tenant>]/charts/<file>.tgz[.prov]       the file; 404 {"error": ...}

A ChartVersion is Chart.yaml's fields plus ``urls``, ``created`` and ``digest`` (sha256 hex of the
.tgz), as Helm's repo.ChartVersion marshals. Like ChartMuseum (gin on Go's net/http), bodies under
2 KiB carry a Content-Length and larger ones go chunked without one; HEAD is not routed for files.
With ``users`` every route but /health wants basic credentials (401 and
``WWW-Authenticate: Basic realm="ChartMuseum"``). Every request is recorded in ``requests``.

    museum = FakeChartMuseum()
    museum.add(chart_tgz("web", "1.0.0"), prov=...)
    async with httpx.AsyncClient(transport=museum.transport()) ...   # unit
    with museum.serve(): ... museum.url ...                          # integration
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import yaml

# Go's net/http buffers this much of a handler's output before it gives up on Content-Length.
GO_CHUNKING_THRESHOLD = 2048
CREATED = "2024-05-06T07:08:09.123456789Z"  # RFC3339Nano, as ChartMuseum writes it
_FILE_RE = re.compile(r"^(?P<tenant>(?:/[^/]+)*)/charts/(?P<file>[^/]+)$")


def chart_tgz(name: str, version: str, *, files: Mapping[str, bytes] | None = None,
              **chart_fields: Any) -> bytes:
    """A Helm chart package as ``helm package`` lays it out (``<name>/Chart.yaml``, values.yaml,
    templates/), with fixed times so the same arguments give the same bytes."""
    meta = {"apiVersion": "v2", "name": name, "version": version, "description": f"The {name} chart",
            "type": "application", "appVersion": "1.16.0", **chart_fields}
    members = {
        "Chart.yaml": yaml.safe_dump(meta, sort_keys=False).encode(),
        "values.yaml": b"replicaCount: 1\nimage:\n  repository: nginx\n  tag: stable\n",
        "templates/deployment.yaml": (b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
                                      b"  name: {{ .Release.Name }}\n"),
        **(files or {}),
    }
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in members.items():
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def chart_yaml_of(tgz: bytes) -> dict[str, Any]:
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name.count("/") == 1 and member.name.endswith("/Chart.yaml"):
                handle = tar.extractfile(member)
                assert handle is not None
                loaded: dict[str, Any] = yaml.safe_load(handle.read())
                return loaded
    raise ValueError("no Chart.yaml in the package")


def provenance(tgz: bytes, filename: str) -> bytes:
    """A provenance file in Helm's layout (clear-signed Chart.yaml plus the package's sha256);
    the signature is filler: nothing here verifies it."""
    body = yaml.safe_dump(chart_yaml_of(tgz), sort_keys=False)
    signed = f"{body}\n...\nfiles:\n  {filename}: sha256:{hashlib.sha256(tgz).hexdigest()}\n"
    signature = base64.b64encode(hashlib.sha512(tgz).digest() * 4).decode()
    return (f"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{signed}"
            f"-----BEGIN PGP SIGNATURE-----\n\n{signature}\n-----END PGP SIGNATURE-----\n").encode()


@dataclass
class StoredChart:
    name: str
    version: str
    tgz: bytes
    prov: bytes | None
    metadata: dict[str, Any]
    created: str = CREATED
    digest: str = ""  # what the index claims; set to something else to fake a corrupt index

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    def listing_entry(self) -> dict[str, Any]:
        return {**self.metadata, "urls": [f"charts/{self.filename}"], "created": self.created,
                "digest": self.digest or hashlib.sha256(self.tgz).hexdigest()}


@dataclass(frozen=True)
class Seen:
    method: str
    host: str
    target: str  # path and query
    authorization: str | None


@dataclass
class FakeChartMuseum:
    tenant: str = ""  # "/org/repo" for a multitenant server
    users: Mapping[str, str] | None = None
    # Answer GETs of chart files with a redirect to this origin (object storage behind it).
    redirect_files_to: str | None = None
    charts: list[StoredChart] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def add(self, tgz: bytes, prov: bytes | None = None, *, created: str = CREATED) -> StoredChart:
        meta = chart_yaml_of(tgz)
        stored = StoredChart(str(meta["name"]), str(meta["version"]), tgz, prov, meta, created)
        self.charts.append(stored)
        return stored

    # -- the API -------------------------------------------------------------------------------

    def answer(self, method: str, host: str, target: str,
               authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(Seen(method, host, target, authorization))
        parts = urlsplit(target)
        path, query = unquote(parts.path), parse_qs(parts.query)
        if path == "/health":
            return _json(200, {"healthy": True})
        if self.redirect_files_to and host == urlsplit(self.redirect_files_to).netloc:
            # The storage the files were redirected to: it knows nothing of ChartMuseum's users.
            return self._file(path.rpartition("/")[2], redirect=False)
        if self.users and not self._authorized(authorization):
            status, headers, body = _json(401, {"error": "unauthorized"})
            return status, {**headers, "WWW-Authenticate": 'Basic realm="ChartMuseum"'}, body
        if method != "GET":
            return _json(404, {"error": "not found"})
        api = f"/api{self.tenant}/charts"
        if path == api:
            return self._all(query)
        if path.startswith(api + "/"):
            name, _, version = path[len(api) + 1:].partition("/")
            versions = [c.listing_entry() for c in self._versions(name)]
            if not versions:
                return _json(404, {"error": f"chart not found: {name}"})
            if not version:
                return _json(200, versions)
            match = [v for v in versions if v["version"] == version]
            return _json(200, match[0]) if match else _json(404, {"error": "improper version"})
        found = _FILE_RE.match(path)
        if found and found["tenant"] == self.tenant:
            return self._file(found["file"])
        return _json(404, {"error": "not found"})

    def _authorized(self, authorization: str | None) -> bool:
        pairs = (f"{user}:{password}".encode() for user, password in (self.users or {}).items())
        return authorization in {"Basic " + base64.b64encode(pair).decode() for pair in pairs}

    def _versions(self, name: str) -> list[StoredChart]:
        return [c for c in reversed(self.charts) if c.name == name]

    def _all(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        names = sorted({c.name for c in self.charts})
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query["limit"][0]) if "limit" in query else len(names)
        page = names[offset:offset + limit]
        return _json(200, {n: [c.listing_entry() for c in self._versions(n)] for n in page})

    def _file(self, filename: str, *, redirect: bool = True) -> tuple[int, dict[str, str], bytes]:
        for chart in self.charts:
            content = {chart.filename: chart.tgz, chart.filename + ".prov": chart.prov}.get(filename)
            if content is not None:
                if redirect and self.redirect_files_to:
                    return 302, {"Location": f"{self.redirect_files_to}/charts/{quote(filename)}"}, b""
                return 200, {"Content-Type": "application/x-tar"}, content
        return _json(404, {"error": "object not found"})

    # -- in memory (unit tests) ------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            target = request.url.raw_path.decode()
            status, headers, body = self.answer(request.method, request.url.netloc.decode(), target,
                                                request.headers.get("Authorization"))
            if len(body) < GO_CHUNKING_THRESHOLD:
                headers = {**headers, "Content-Length": str(len(body))}
            return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

        return httpx.MockTransport(handle)

    # -- on loopback (integration tests) ------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "serve() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.tenant}"

    @contextmanager
    def serve(self) -> Iterator[FakeChartMuseum]:
        museum = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, as a Go server

            def do_GET(self) -> None:
                self._reply(send_body=True)

            def do_HEAD(self) -> None:
                self._reply(send_body=False)

            def _reply(self, *, send_body: bool) -> None:
                status, headers, body = museum.answer(self.command, self.headers.get("Host", ""),
                                                      self.path, self.headers.get("Authorization"))
                if self.command == "HEAD" and "/charts/" in self.path and not self.path.startswith("/api"):
                    status, headers, body = _json(404, {"error": "not found"})  # gin routes GET only
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                chunked = len(body) >= GO_CHUNKING_THRESHOLD
                self.send_header("Transfer-Encoding" if chunked else "Content-Length",
                                 "chunked" if chunked else str(len(body)))
                self.end_headers()
                if not send_body:
                    return
                if not chunked:
                    self.wfile.write(body)
                    return
                for start in range(0, len(body), 4096):
                    piece = body[start:start + 4096]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request list is the log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, name="fake-chartmuseum", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=10)


def _json(status: int, body: object) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(body).encode()
