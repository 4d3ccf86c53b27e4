"""How to reach one registry: the hand-off from the policy store to an adapter.

Secrets arrive here already resolved (from the encrypted store, an environment variable or a
Prefect Secret block) and stay wrapped in ``SecretStr`` so that no repr, log line or exception
can show them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator


class Endpoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    username: str | None = None
    password: SecretStr | None = None
    insecure: bool = False
    # PEM text of a CA bundle; wins over ``insecure`` as in Harbor.
    ca_certificate: str | None = None
    # The registry's ``options:``, checked against its adapter's ``AdapterInfo.options``.
    options: dict[str, str | list[str]] = {}

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme == "file":
            # A directory of OCI image layouts (adapters/oci_layout.py): local, so no host.
            if (parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/")
                    or parts.path.rstrip("/") == ""):
                raise ValueError(f"a directory url must be file:///absolute/path, got {v!r}")
            return v.rstrip("/")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"registry url must be http(s)://host[:port][/prefix], got {v!r}")
        if parts.username or parts.password:
            raise ValueError("registry url must not carry credentials; use the credential field")
        return v.rstrip("/")

    @property
    def host(self) -> str:
        """``host[:port]`` as it appears in the URL: the only host our credentials go to."""
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """Path before ``/v2/`` (some registries live under a path)."""
        return urlsplit(self.url).path.rstrip("/")
