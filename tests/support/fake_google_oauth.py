"""Google's OAuth2 token endpoint for service accounts, in memory for httpx.MockTransport, shaped
after Google's "Using OAuth 2.0 for server to server applications" documentation:

``POST token_uri`` with form ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and
``assertion=<JWT>``; the JWT is RS256-signed by the service account's key, with claims ``iss``
(the account's email), ``scope``, ``aud`` (the token URI), ``iat`` and ``exp`` (at most an hour
later). Answers ``{"access_token", "expires_in", "token_type": "Bearer"}``, or 400
``{"error": "invalid_grant", "error_description": ...}``.

The signature is checked with PyJWT and the account's public key, an implementation independent
of the one under test.
"""

from __future__ import annotations

import functools
import json
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@functools.cache
def shared_rsa_key() -> rsa.RSAPrivateKey:
    """One key for the whole session: RSA key generation costs ~0.3 s here."""
    return new_rsa_key()


@dataclass
class ServiceAccount:
    """A service account with an RSA key (the session's shared one unless given), and its JSON
    key file text."""

    token_uri: str
    client_email: str = "replicator@regflow-test.iam.gserviceaccount.com"
    project_id: str = "regflow-test"
    private_key_id: str = field(default_factory=lambda: secrets.token_hex(20))
    key: rsa.RSAPrivateKey = field(default_factory=shared_rsa_key)

    @property
    def json_key(self) -> str:
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
        return json.dumps({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "104567890123456789012",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        })


@dataclass
class FakeGoogleOAuth:
    account: ServiceAccount
    access_token: str = field(default_factory=lambda: "ya29." + secrets.token_urlsafe(32))
    expires_in: int = 3599
    scope: str = CLOUD_PLATFORM
    # Every verified assertion's (header, claims), and every refusal's reason.
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or str(request.url) != self.account.token_uri:
            return httpx.Response(404, json={"error": "not_found"})
        form = dict(urllib.parse.parse_qsl(request.content.decode()))
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return self._refuse("unsupported_grant_type", "Invalid grant_type")
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.account.key.public_key(), algorithms=["RS256"],
                                audience=self.account.token_uri, issuer=self.account.client_email,
                                options={"require": ["iss", "aud", "iat", "exp", "scope"]})
        except jwt.InvalidTokenError as exc:
            return self._refuse("invalid_grant", f"Invalid JWT: {type(exc).__name__}")
        if header.get("kid") != self.account.private_key_id or header.get("typ") != "JWT":
            return self._refuse("invalid_grant", "Invalid JWT header")
        if not 0 < claims["exp"] - claims["iat"] <= 3600:
            return self._refuse("invalid_grant", "Invalid JWT: exp too far from iat")
        if self.scope not in str(claims["scope"]).split():
            return self._refuse("invalid_scope", "Invalid OAuth scope")
        self.assertions.append((header, claims))
        return httpx.Response(200, json={"access_token": self.access_token, "expires_in": self.expires_in,
                                         "token_type": "Bearer"})

    def _refuse(self, error: str, description: str) -> httpx.Response:
        self.refused.append(description)
        return httpx.Response(400, json={"error": error, "error_description": description})
