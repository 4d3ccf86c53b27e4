"""An in-process Docker/OCI registry token server (distribution's ``auth: token:`` flow), for tests.

``GET /token?service=S&scope=repository:NAME:pull,push[&scope=...]`` with Basic auth, or
``POST /token`` with an OAuth2 password grant (form: grant_type=password, username, password,
service, scope) -> ``{"token", "access_token", "expires_in", "issued_at"}``.

Known users get every action they ask for (unless narrowed with ``allowed_actions``, or kept to
some repository prefixes with ``allowed_prefixes``, as a vendor keeps a robot account or a
deploy token to its organisation or project); anonymous
callers get an empty access list (the registry then answers 401) unless ``anonymous_pull``.
Tokens are ES256 JWTs whose header ``kid`` is the libtrust fingerprint of the signing key, which
is how registry 2.8 matches them against its ``rootcertbundle`` (our self-signed cert).
Every request is recorded in :attr:`TokenService.requests`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.registry import TlsFiles, TokenAuthConfig, make_tls_files

Access = dict[str, Any]  # {"type": "repository", "name": "a/b", "actions": ["pull", "push"]}


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """The libtrust key ID: base32 of the first 30 bytes of sha256(DER SPKI), in groups of 4."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i : i + 4] for i in range(0, len(s), 4))


def parse_scope(scope: str) -> Access:
    """``repository:team/app:pull,push`` -> access entry. The name may hold ``host:port``, so the
    type is split off the front and the actions off the back."""
    typ, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}


@dataclass(frozen=True)
class TokenRequest:
    """One request the token service answered."""

    method: str
    service: str
    scopes: tuple[str, ...]  # every scope asked for, split on spaces
    username: str | None  # as presented; None = anonymous
    authenticated: bool  # presented valid credentials
    status: int
    granted: tuple[Access, ...]  # access entries put in the token (empty on failure)
    at: float = field(default_factory=time.time)


class TokenService:
    """Token server on a free 127.0.0.1 port, in a daemon thread (``start()``/``close()``)."""

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        issuer: str = "regflow-test-issuer",
        service: str = "regflow-test-registry",
        ttl: int = 300,
        anonymous_pull: bool = False,
        allowed_actions: Mapping[str, Iterable[str]] | None = None,
        allowed_prefixes: Mapping[str, Iterable[str]] | None = None,
        base_dir: str | Path | None = None,
        tls: bool = False,
    ) -> None:
        self.users: dict[str, str] = dict(users) if users else {"regflow": "pw-" + secrets.token_hex(8)}
        self.issuer = issuer
        self.service = service
        self.ttl = ttl  # may be changed while running
        self.anonymous_pull = anonymous_pull
        # user -> the only actions that user may get (users not listed get all they ask for)
        self.allowed_actions: dict[str, frozenset[str]] = {
            u: frozenset(a) for u, a in (allowed_actions or {}).items()
        }
        # user -> the only repository prefixes ("acme/" or an exact name) that user gets any
        # access to (users not listed get every repository)
        self.allowed_prefixes: dict[str, tuple[str, ...]] = {
            u: tuple(p) for u, p in (allowed_prefixes or {}).items()
        }
        # When set, every request is answered with this HTTP status (simulate a broken token server).
        self.fail_with: int | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="regflow-token-", dir=base_dir)).resolve()
        self.key_path = self.dir / "key.pem"
        self.cert_path = self.dir / "cert.pem"
        self._key = self._make_key_and_cert()
        # tls: serve https with a certificate of a CA made for this service (``ca_pem``): a
        # registry on https whose realm is plain http gets no credentials from regflow.
        self.tls: TlsFiles | None = make_tls_files(self.dir) if tls else None
        self.kid = libtrust_kid(self._key.public_key())
        self._requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ key material
    def _make_key_and_cert(self) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regflow-test-token-signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> str | None:
        return self.tls.ca_path.read_text() if self.tls else None

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def auth_config(self) -> TokenAuthConfig:
        """What a token-auth registry's config needs (pass to ``RegistryProcess(token_auth=...)``)."""
        if not self.port:
            raise RuntimeError("token service not started")
        return TokenAuthConfig(
            realm=self.realm, issuer=self.issuer, service=self.service, rootcertbundle=self.cert_path
        )

    @property
    def username(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    # ------------------------------------------------------------------ records
    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of the requests answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self._requests.append(req)

    # ------------------------------------------------------------------ tokens
    def issue_token(
        self, subject: str, access: Iterable[Access], *, ttl: int | None = None, service: str | None = None
    ) -> str:
        """Mint a token directly (e.g. one already expired: ``ttl=-60``)."""
        now = int(time.time())
        life = self.ttl if ttl is None else ttl
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": service or self.service,
            "exp": now + life,
            "nbf": min(now, now + life) - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": list(access),
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid, "typ": "JWT"})

    def grant(self, username: str | None, authenticated: bool, scopes: Iterable[str]) -> list[Access]:
        """The access entries a caller gets for the scopes asked."""
        out: list[Access] = []
        for scope in scopes:
            sc = parse_scope(scope)
            if not authenticated:
                ok = self.anonymous_pull and sc["type"] == "repository" and "pull" in sc["actions"]
                sc["actions"] = ["pull"] if ok else []
            else:
                if username in self.allowed_actions:
                    sc["actions"] = [a for a in sc["actions"] if a in self.allowed_actions[username]]
                prefixes = self.allowed_prefixes.get(username or "")
                if prefixes is not None and not any(
                    sc["name"] == p or (p.endswith("/") and sc["name"].startswith(p)) for p in prefixes
                ):
                    sc["actions"] = []
            if sc["actions"]:
                out.append(sc)
        return out

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TokenService:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert_path, self.tls.key_path)
            # Each connection's handshake in its own thread (Handler.setup), as a real token
            # service does: done on accept, it would take the accepting thread a round trip per
            # connection and answer concurrent fetches one after another behind a slow link.
            server.socket = context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="token-service", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TokenService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TokenService {self.realm} users={sorted(self.users)}>"


class _Server(ThreadingHTTPServer):
    # socketserver's backlog of 5 drops the SYNs of a client's burst of token fetches, which
    # then wait out TCP's one-second retransmission: no token service a registry fronts does.
    request_queue_size = 128


def _make_handler(svc: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()
            super().setup()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, obj: object, headers: Mapping[str, str] | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _issue(self, username: str | None, password: str | None, service: str, scopes: list[str]) -> None:
            scopes = [p for s in scopes for p in s.split(" ") if p]
            authenticated = username is not None and svc.users.get(username) == password
            if svc.fail_with is not None:
                svc._record(
                    TokenRequest(self.command, service, tuple(scopes), username, False, svc.fail_with, ())
                )
                self._reply(
                    svc.fail_with, {"errors": [{"code": "UNAVAILABLE", "message": "failing on purpose"}]}
                )
                return
            if username is not None and not authenticated:
                svc._record(TokenRequest(self.command, service, tuple(scopes), username, False, 401, ()))
                self._reply(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                    {"WWW-Authenticate": 'Basic realm="regflow-token"'},
                )
                return
            access = svc.grant(username, authenticated, scopes)
            token = svc.issue_token(username or "", access, service=service or None)
            now = datetime.datetime.now(datetime.UTC)
            svc._record(
                TokenRequest(
                    self.command, service, tuple(scopes), username, authenticated, 200, tuple(access)
                )
            )
            self._reply(
                200,
                {
                    "token": token,
                    "access_token": token,
                    "expires_in": svc.ttl,
                    "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            q = urllib.parse.parse_qs(url.query)
            username = password = None
            header = self.headers.get("Authorization", "")
            if header[:6].lower() == "basic ":
                try:
                    username, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    username, password = "", None
            self._issue(username, password, (q.get("service") or [""])[0], q.get("scope", []))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if urllib.parse.urlsplit(self.path).path != "/token":
                self._reply(404, {"error": "not found"})
                return

            def get(k: str) -> str | None:
                values = form.get(k)
                return values[0] if values else None

            if get("grant_type") != "password":
                self._reply(400, {"error": "unsupported_grant_type"})
                return
            self._issue(get("username"), get("password"), get("service") or "", [get("scope") or ""])

    return Handler
