"""Real CNCF distribution registries (Debian ``docker-registry``, 2.8.x) on loopback, for tests.

Every :class:`RegistryProcess` owns a fresh temp directory holding its ``config.yml``, its
filesystem storage (``data/``) and its log (``registry.log``: the application log and the
access log, appended across restarts). It listens on a free ``127.0.0.1`` port picked once, so
``stop()`` followed by ``start()`` brings the same registry back with the same data (an outage).
Only the process we started is ever signalled, by its PID.

    reg = RegistryProcess(mode="basic")           # or "anonymous", or "token" with token_auth=...
    reg.start()
    ... reg.url, reg.host, reg.username, reg.password ...
    reg.count_requests("PUT", r"/v2/app/manifests/.*")
    reg.close()                                   # stop + remove the directory

With ``tls=True`` the registry serves HTTPS with a server certificate for ``127.0.0.1`` (IP SAN)
signed by a CA made for it alone: ``reg.url`` is ``https://127.0.0.1:PORT``, and ``reg.ca_pem`` /
``reg.ca_path`` hold that CA for the clients that should trust it (``reg.ssl_context()``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.auth import ChallengeTokenAuth

if TYPE_CHECKING:
    from tests.support.token_service import TokenService

REGISTRY_BIN = Path("/usr/bin/docker-registry")
HTPASSWD_BIN = Path("/usr/bin/htpasswd")
DEBIAN_PACKAGES = "docker-registry skopeo apache2-utils"

RegistryMode = Literal["anonymous", "basic", "token"]

# Query marker of the sentinel request used to flush the access log; never counted.
_SYNC_MARK = "regflow-testbed-sync"

# Combined log format, as written by gorilla/handlers for the registry's access log:
#   127.0.0.1 - - [27/Nov/2024:11:58:00 +0000] "PUT /v2/x/manifests/y HTTP/1.1" 201 0 "" "ua"
_ACCESS_RE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<target>\S+) (?P<proto>HTTP/[0-9.]+)" '
    r"(?P<status>\d{3}) (?P<size>\d+|-)"
)


class TestbedError(RuntimeError):
    """The test bed itself could not do what was asked (missing binary, registry won't start)."""


def require_binary(path: Path) -> str:
    """Return ``path`` as a string, or fail naming the Debian packages the test bed needs."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise TestbedError(
            f"{path} is missing: the integration test bed needs the Debian packages "
            f"`{DEBIAN_PACKAGES}` (apt-get install {DEBIAN_PACKAGES})"
        )
    return str(path)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def htpasswd_line(username: str, password: str) -> str:
    """One bcrypt htpasswd line (``user:$2y$...``) made by ``htpasswd -Bbn``."""
    out = subprocess.run(
        [require_binary(HTPASSWD_BIN), "-Bbn", username, password],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    line = out.strip().splitlines()[0]
    if not line.startswith(f"{username}:"):
        raise TestbedError(f"unexpected htpasswd output: {out!r}")
    return line


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate it signed, as PEM files."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def make_tls_files(directory: Path, ip: str = "127.0.0.1", *, days: int = 30) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server-key.pem`` into ``directory``: a self-signed CA
    and a server certificate for ``ip`` (IP SAN; serverAuth) that it signed. The CA key is not kept.
    Both carry the key identifiers and usages that strict verifiers (Python 3.13, Go) insist on."""
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"regflow test CA {uuid.uuid4().hex[:8]}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(files.key_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return files


@dataclass(frozen=True)
class TokenAuthConfig:
    """The ``auth: token:`` block of a registry config (see tests/support/token_service.py)."""

    realm: str
    issuer: str
    service: str
    rootcertbundle: Path


@dataclass(frozen=True)
class AccessLogEntry:
    """One parsed access-log line."""

    method: str
    target: str  # path plus query string, as requested
    status: int
    user: str
    line: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class RegistryProcess:
    """One ``docker-registry serve CONFIG`` process on a free loopback port, with its own storage.

    ``mode``: ``"anonymous"``; ``"basic"`` (htpasswd, bcrypt; ``users`` maps user -> password,
    default one random user exposed as ``.username``/``.password``); ``"token"`` (needs
    ``token_auth``; ``users`` is then only informative: the token service decides who is who).
    ``notifications``: webhook URL(s) the registry posts its event envelopes to.
    ``tls``: serve HTTPS with a certificate from a CA made for this registry (``ca_pem``, ``ca_path``).
    """

    def __init__(
        self,
        mode: RegistryMode = "anonymous",
        *,
        users: Mapping[str, str] | None = None,
        token_auth: TokenAuthConfig | None = None,
        notifications: str | Sequence[str] | None = None,
        notification_headers: Mapping[str, str] | None = None,
        base_dir: str | Path | None = None,
        log_level: str = "info",
        startup_timeout: float = 20.0,
        tls: bool = False,
    ) -> None:
        if mode not in ("anonymous", "basic", "token"):
            raise ValueError(f"unknown registry mode {mode!r}")
        if mode == "token" and token_auth is None:
            raise ValueError("mode='token' needs token_auth")
        if mode == "basic" and not users:
            users = {"regflow": "pw-" + secrets.token_hex(8)}
        self.mode: RegistryMode = mode
        self.users: dict[str, str] = dict(users or {})
        self.token_auth = token_auth
        self.token_service: TokenService | None = None  # set by the fixtures for mode="token"
        self.notification_headers = dict(notification_headers or {})
        self.notifications: list[str] = (
            [notifications] if isinstance(notifications, str) else list(notifications or [])
        )
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="regflow-registry-", dir=base_dir)).resolve()
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"
        self.data_dir.mkdir()
        self.tls: TlsFiles | None = make_tls_files(self.dir) if tls else None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        _LIVE.add(self)

    # ------------------------------------------------------------------ addresses
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (what goes in image references)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, or ``https://127.0.0.1:PORT`` with TLS."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_path(self) -> Path | None:
        """The PEM file of the CA that signed this registry's certificate (None without TLS)."""
        return self.tls.ca_path if self.tls else None

    @property
    def ca_pem(self) -> str | None:
        """The PEM text of that CA (None without TLS)."""
        return self.tls.ca_path.read_text() if self.tls else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting only this registry's CA (None without TLS)."""
        return ssl.create_default_context(cafile=str(self.tls.ca_path)) if self.tls else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What to pass as httpx's ``verify=`` to reach this registry (its CA, or the default)."""
        return self.ssl_context() or True

    @property
    def username(self) -> str | None:
        return next(iter(self.users), None)

    @property
    def password(self) -> str | None:
        name = self.username
        return self.users[name] if name is not None else None

    @property
    def creds(self) -> str | None:
        """``user:password`` of the first user (skopeo's ``--creds``), or None."""
        return f"{self.username}:{self.password}" if self.username is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def httpx_auth(self) -> httpx.Auth | None:
        """An ``httpx.Auth`` for the first user: BasicAuth, ChallengeTokenAuth, or None (anonymous)."""
        if self.mode == "anonymous" or self.username is None or self.password is None:
            return None
        if self.mode == "basic":
            return httpx.BasicAuth(self.username, self.password)
        return ChallengeTokenAuth(self.username, self.password)

    def ref(self, repository: str, reference: str) -> str:
        """``127.0.0.1:PORT/repo:tag`` or ``127.0.0.1:PORT/repo@sha256:...``."""
        sep = "@" if reference.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{reference}"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RegistryProcess {self.mode} {self.url} pid={self.pid} {state} dir={self.dir}>"

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {
                "level": self.log_level,
                "formatter": "text",
                "accesslog": {"disabled": False},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": f"regflow-testbed-{self.port}",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.tls is not None:
            cfg["http"]["tls"] = {"certificate": str(self.tls.cert_path), "key": str(self.tls.key_path)}
        if self.mode == "basic":
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            cfg["auth"] = {"htpasswd": {"realm": "regflow-basic-realm", "path": str(htpasswd)}}
        elif self.mode == "token":
            assert self.token_auth is not None
            t = self.token_auth
            cfg["auth"] = {
                "token": {
                    "realm": t.realm,
                    "issuer": t.issuer,
                    "service": t.service,
                    "rootcertbundle": str(t.rootcertbundle),
                }
            }
        if self.notifications:
            cfg["notifications"] = {
                "events": {"includereferences": True},
                "endpoints": [
                    {"name": f"testbed-{i}", "url": u, "timeout": "2s", "threshold": 5, "backoff": "1s",
                     "headers": {k: [v] for k, v in self.notification_headers.items()}}
                    for i, u in enumerate(self.notifications)
                ],
            }
        return cfg

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RegistryProcess:
        """Start (or restart, on the same port and storage) and wait until ``/v2/`` answers."""
        if self._closed:
            raise TestbedError("registry was closed")
        if self.running:
            return self
        binary = require_binary(REGISTRY_BIN)
        fixed_port = self.port != 0
        attempts = 1 if fixed_port else 3
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port()
            self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                # A clean environment: REGISTRY_* variables would override the config file.
                self._proc = subprocess.Popen(
                    [binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(self.dir)},
                    cwd=self.dir,
                )
            try:
                self._wait_ready()
                return self
            except TestbedError:
                tail = self._log_since(offset)
                self._terminate()
                if "address already in use" in tail and attempt + 1 < attempts:
                    continue
                raise TestbedError(
                    f"registry on {self.host} did not come up (dir {self.dir}); log:\n{tail[-3000:]}"
                ) from None
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        # With TLS, ready means the handshake verifies against our own CA too.
        with httpx.Client(timeout=2.0, verify=self.verify) as client:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    raise TestbedError("registry exited")
                try:
                    if client.get(f"{self.url}/v2/").status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TestbedError("timeout waiting for /v2/")
                time.sleep(0.03)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our process, wait up to ``timeout``, then SIGKILL. Storage and port are kept."""
        self._terminate(timeout)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        else:
            proc.wait()

    def kill(self) -> None:
        """SIGKILL our process at once (a crash rather than a clean shutdown)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
        self._terminate()

    def restart(self) -> RegistryProcess:
        self.stop()
        return self.start()

    def close(self, *, keep_dir: bool = False) -> None:
        """Stop and remove the directory (kept when ``keep_dir`` or env REGFLOW_KEEP_TESTBED=1)."""
        if self._closed:
            return
        self._terminate()
        self._closed = True
        _LIVE.discard(self)
        if not keep_dir and os.environ.get("REGFLOW_KEEP_TESTBED") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ storage
    def blob_data_path(self, digest: str) -> Path:
        """Where filesystem storage keeps a blob's bytes."""
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.data_dir / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def repositories_on_disk(self) -> list[str]:
        """Repository names that have a ``_manifests`` directory in storage."""
        root = self.data_dir / "docker/registry/v2/repositories"
        if not root.exists():
            return []
        return sorted(str(p.parent.relative_to(root)) for p in root.rglob("_manifests"))

    # ------------------------------------------------------------------ logs
    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        return self._log_since(0)

    def log_mark(self) -> int:
        """Current size of the log; pass as ``since=`` to look only at later lines."""
        self.sync_access_log()
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def sync_access_log(self, timeout: float = 5.0) -> None:
        """Make sure the access-log lines of requests already answered are in the file.

        The access-log line is written just after the response; we send a marked sentinel
        request and wait for its own line (sentinels are never counted). No-op when stopped.
        """
        if not self.running:
            return
        mark = f"{_SYNC_MARK}={uuid.uuid4().hex}"
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{self.url}/v2/?{mark}", timeout=5.0, verify=self.verify)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if mark in self.log_text():
                return
            time.sleep(0.01)
        raise TestbedError(f"access-log sentinel not seen in {self.log_path}")

    def access_log(self, *, since: int = 0, sync: bool = True) -> list[AccessLogEntry]:
        """Parsed access-log lines (sentinels excluded), optionally only those after ``since``."""
        if sync:
            self.sync_access_log()
        entries: list[AccessLogEntry] = []
        for line in self._log_since(since).splitlines():
            m = _ACCESS_RE.match(line)
            if m is None or _SYNC_MARK in m["target"]:
                continue
            entries.append(
                AccessLogEntry(
                    method=m["method"], target=m["target"], status=int(m["status"]), user=m["user"], line=line
                )
            )
        return entries

    def requests(
        self,
        method: str | None = None,
        path: str | re.Pattern[str] | None = None,
        *,
        status: int | None = None,
        since: int = 0,
        sync: bool = True,
    ) -> list[AccessLogEntry]:
        """Access-log entries matching ``method`` and a regex ``path`` (fullmatch on the path
        without query string), and ``status``."""
        rx = re.compile(path) if isinstance(path, str) else path
        return [
            e
            for e in self.access_log(since=since, sync=sync)
            if (method is None or e.method == method.upper())
            and (rx is None or rx.fullmatch(e.path) is not None)
            and (status is None or e.status == status)
        ]

    def count_requests(
        self,
        method: str | None = None,
        path: str | re.Pattern[str] | None = None,
        *,
        status: int | None = None,
        since: int = 0,
        sync: bool = True,
    ) -> int:
        """How many requests the access log shows, e.g. ``count_requests("PUT", r"/v2/a/manifests/.*")``."""
        return len(self.requests(method, path, status=status, since=since, sync=sync))


_LIVE: weakref.WeakSet[RegistryProcess] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort: never leave a registry we started running after the interpreter exits."""
    for reg in list(_LIVE):
        with contextlib.suppress(Exception):
            reg.close()


@contextlib.contextmanager
def running_registry(mode: RegistryMode = "anonymous", **kwargs: Any) -> Iterator[RegistryProcess]:
    """``with running_registry("basic") as reg: ...`` -- started, then closed (stopped + removed)."""
    reg = RegistryProcess(mode, **kwargs)
    try:
        reg.start()
        yield reg
    finally:
        reg.close()
