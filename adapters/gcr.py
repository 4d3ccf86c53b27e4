"""Google Container Registry (``gcr.io``, ``*.gcr.io``) and Artifact Registry
(``<location>-docker.pkg.dev``). Both speak the distribution spec with the bearer flow and list
through ``_catalog``; what differs from the native adapter is credentials and the path rule.

Credentials (``access_key`` / ``access_secret``):

==================================  ==============================================================
``_json_key``, ``_json_key_base64``  a service-account JSON key (plain or base64) sent as the
                                     password: Google's token service accepts it as it is.
``oauth2accesstoken`` + JSON key     the key signs a JWT (RS256) that Google's OAuth2 token
  (or no access_key: type oauth)     endpoint (the key's ``token_uri``) trades for a one-hour
                                     access token, the registry password; renewed before expiry.
``oauth2accesstoken`` + other text   a ready-made access token (``gcloud auth print-access-token``),
                                     used as it is until it expires (about an hour).
==================================  ==============================================================

Paths: GCR ``<project>/<image>`` (two components at least); Artifact Registry
``<project>/<repository>/<image>`` (three). Artifact Registry repositories must exist before a
push (they are created in the Google Cloud console or API, not by pushing); GCR creates
repositories on push.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from adapters.base import AdapterInfo
from adapters.distribution.auth import RegistryCredentials
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ConfigError, ContentError, RegistryError
from adapters.native import NativeAdapter
from adapters.vendor_http import api_client, call_json

JSON_KEY_USERS = ("_json_key", "_json_key_base64")
ACCESS_TOKEN_USER = "oauth2accesstoken"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# cloud-platform covers both GCR (storage behind it) and Artifact Registry.
OAUTH_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Google accepts assertions valid for at most an hour.
ASSERTION_LIFETIME_SECONDS = 3600
# Google's access tokens live an hour; used only when the answer omits expires_in.
ACCESS_TOKEN_LIFETIME_SECONDS = 3600.0
ARTIFACT_REGISTRY_HOST = re.compile(r"[a-z0-9-]+-docker\.pkg\.dev")

# Google's OAuth2 errors that mean "these credentials will not do".
ERROR_CODES: dict[str, type[RegistryError]] = {
    "invalid_grant": AuthenticationError,
    "invalid_client": AuthenticationError,
    "unauthorized_client": AuthenticationError,
}


class ServiceAccountKey(BaseModel):
    """The fields of a service-account JSON key that regflow uses."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True, frozen=True)

    type: Literal["service_account"]
    client_email: str
    private_key: SecretStr
    private_key_id: str = ""
    token_uri: str = GOOGLE_TOKEN_URI


class _TokenAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    access_token: SecretStr
    expires_in: float | None = None


def parse_key(text: str) -> ServiceAccountKey | None:
    """The key when ``text`` is a service-account JSON key (plain or base64), else None.
    Errors name the problem, never the text."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        try:
            stripped = base64.b64decode(stripped, validate=True).decode().strip()
        except ValueError:
            return None
        if not stripped.startswith("{"):
            return None
    try:
        key = ServiceAccountKey.model_validate(json.loads(stripped))
    except (ValueError, ValidationError) as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()) \
            if isinstance(exc, ValidationError) else "not JSON"
        raise ConfigError(f"not a usable service-account JSON key ({fields})", field="credential") from None
    _check_token_uri(key.token_uri)
    return key


def sign_assertion(key: ServiceAccountKey, now: float, scope: str = OAUTH_SCOPE) -> str:
    """The JWT (RS256) that Google's token endpoint trades for an access token."""
    try:
        private = serialization.load_pem_private_key(key.private_key.get_secret_value().encode(), None)
    except (ValueError, TypeError):
        raise ConfigError("the service-account key's private_key is not a PEM private key",
                          field="credential") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ConfigError("the service-account key's private_key is not an RSA key", field="credential")
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if key.private_key_id:
        header["kid"] = key.private_key_id
    issued = int(now)
    claims = {"iss": key.client_email, "scope": scope, "aud": key.token_uri, "iat": issued,
              "exp": issued + ASSERTION_LIFETIME_SECONDS}
    signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}".encode()
    signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64url(signature)}"


class GcrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="google-gcr",
        description="Google Container Registry and Artifact Registry (JSON key or OAuth2 access token)",
        # Google announces pushes through Pub/Sub, not webhooks regflow receives.
        triggers=("manual", "scheduled"),
        min_path_components=2,
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        api_transport: httpx.AsyncBaseTransport | None = None,
        scope: str = OAUTH_SCOPE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``api_transport`` (default: ``transport``) carries the OAuth2 token requests only."""
        key = None
        if endpoint.password is not None and endpoint.username in (ACCESS_TOKEN_USER, None):
            key = parse_key(endpoint.password.get_secret_value())
            if key is None and endpoint.username is None:
                raise ConfigError("google-gcr without access_key needs a service-account JSON key as "
                                  "access_secret", field="credential")
            # An oauth credential without a user name is the access-token mode: name the user, so
            # that the registry's Basic/bearer flow and the health check see credentials.
            endpoint = endpoint.model_copy(update={"username": ACCESS_TOKEN_USER})
        super().__init__(endpoint, transport=transport)
        if ARTIFACT_REGISTRY_HOST.fullmatch(httpx.URL(endpoint.url).host):
            self.info = self.info.model_copy(update={
                "description": "Google Artifact Registry", "min_path_components": 3})
        self._key = key
        self._scope = scope
        self._clock = clock
        self._api = api_client(transport=api_transport or transport)
        if key is not None:
            self.client.auth.use_credential_provider(self.access_token)

    async def access_token(self) -> RegistryCredentials:
        """A fresh OAuth2 access token for the service account: JWT in, token out."""
        assert self._key is not None
        now = self._clock()
        raw = await call_json(
            self._api, "POST", self._key.token_uri, what="Google OAuth2 token endpoint", codes=ERROR_CODES,
            data={"grant_type": JWT_BEARER_GRANT, "assertion": sign_assertion(self._key, now, self._scope)},
        )
        try:
            answer = _TokenAnswer.model_validate(raw)
        except ValidationError:
            raise ContentError("Google OAuth2 token endpoint sent no access_token") from None
        lifetime = answer.expires_in if answer.expires_in else ACCESS_TOKEN_LIFETIME_SECONDS
        return RegistryCredentials(username=ACCESS_TOKEN_USER, password=answer.access_token,
                                   expires_at=now + lifetime)

    async def prepare_for_push(self, repositories: Sequence[str]) -> None:
        """Nothing to create (GCR creates on push; Artifact Registry repositories are made in
        Google Cloud); a path too short for Artifact Registry is refused here, by name."""
        short = [r for r in repositories if len(r.split("/")) < self.info.min_path_components]
        if short:
            raise ConfigError(f"{', '.join(sorted(short))}: {self.endpoint.host} needs at least "
                              f"{self.info.min_path_components} path components")

    async def aclose(self) -> None:
        await self._api.aclose()
        await super().aclose()


def _check_token_uri(uri: str) -> None:
    """The assertion goes to https, or to plain http on a loopback address only (tests)."""
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return
    raise ConfigError("the service-account key's token_uri must be an https URL", field="credential")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())
