"""Azure Container Registry. ACR speaks the distribution spec with the bearer flow (its token
service is ``https://<registry>/oauth2/token``), lists through ``_catalog`` and creates
repositories on push; what differs from the native adapter is which credentials it takes.

Credentials (``access_key`` / ``access_secret``):

=========================================  ========================================================
admin user, service principal id, token    the password, as Basic at the token service (the
  name (repository-scoped tokens)          native flow unchanged)
``00000000-0000-0000-0000-000000000000``   an ACR refresh token (``az acr login --expose-token``):
                                           exchanged with ``POST /oauth2/token
                                           grant_type=refresh_token``, never sent as a password
``aad`` or ``aad:<tenant id>``             a Microsoft Entra ID (AAD) access token: traded at
                                           ``POST /oauth2/exchange`` for an ACR refresh token,
                                           which is then used as above until it expires
=========================================  ========================================================

``aad`` cannot collide with a real user: admin users are named after the registry (5 to 50
letters and digits) and service principals are GUIDs. An AAD access token lives about an hour,
so that mode suits short runs started by something that just obtained one.

ACR wants the ``metadata_read`` action for tag lists; its 401 says so and the bearer flow asks
for that scope too (one extra token fetch per repository listed).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from adapters.base import AdapterInfo
from adapters.distribution.auth import RegistryCredentials
from adapters.distribution.client import tls_verify
from adapters.endpoint import Endpoint
from adapters.errors import AuthenticationError, ContentError, RegistryError
from adapters.native import NativeAdapter
from adapters.vendor_http import api_client, call_json

REFRESH_TOKEN_USER = "00000000-0000-0000-0000-000000000000"
AAD_USER = "aad"
EXCHANGE_PATH = "/oauth2/exchange"
# ACR documents three hours for refresh tokens; used only when the token carries no exp claim.
REFRESH_TOKEN_LIFETIME_SECONDS = 3 * 3600.0

ERROR_CODES: dict[str, type[RegistryError]] = {
    "invalid_grant": AuthenticationError,
    "invalid_client": AuthenticationError,
    "unauthorized_client": AuthenticationError,
}


class _ExchangeAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    refresh_token: SecretStr


class AcrAdapter(NativeAdapter):
    info = AdapterInfo(
        type="azure-acr",
        description="Azure Container Registry (admin user, service principal, ACR or AAD token)",
        # ACR's webhooks have their own payload, not one of the kinds regflow receives.
        triggers=("manual", "scheduled"),
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(endpoint, transport=transport)
        self._clock = clock
        self._tenant: str | None = None
        # The exchange goes to the registry's own host, with the registry's TLS settings.
        self._api = api_client(base_url=f"{urlsplit(endpoint.url).scheme}://{endpoint.host}",
                               verify=tls_verify(endpoint), transport=transport)
        user = endpoint.username or ""
        if endpoint.password is not None and user == REFRESH_TOKEN_USER:
            self.client.auth.use_credential_provider(self._given_refresh_token)
        elif endpoint.password is not None and (user == AAD_USER or user.startswith(AAD_USER + ":")):
            self._tenant = user.partition(":")[2] or None
            self.client.auth.use_credential_provider(self.exchange_aad_token)

    async def _given_refresh_token(self) -> RegistryCredentials:
        assert self.endpoint.password is not None
        return RegistryCredentials(username=REFRESH_TOKEN_USER, password=self.endpoint.password,
                                   expires_at=_jwt_expiry(self.endpoint.password), refresh_token=True)

    async def exchange_aad_token(self) -> RegistryCredentials:
        """``POST /oauth2/exchange``: an AAD access token in, an ACR refresh token out."""
        assert self.endpoint.password is not None
        form = {"grant_type": "access_token", "service": httpx.URL(self.endpoint.url).host,
                "access_token": self.endpoint.password.get_secret_value()}
        if self._tenant:
            form["tenant"] = self._tenant
        raw = await call_json(self._api, "POST", EXCHANGE_PATH, what="ACR token exchange",
                              codes=ERROR_CODES, data=form)
        try:
            refresh = _ExchangeAnswer.model_validate(raw).refresh_token
        except ValidationError:
            raise ContentError("ACR token exchange sent no refresh_token") from None
        expires = _jwt_expiry(refresh) or self._clock() + REFRESH_TOKEN_LIFETIME_SECONDS
        return RegistryCredentials(username=REFRESH_TOKEN_USER, password=refresh, expires_at=expires,
                                   refresh_token=True)

    async def aclose(self) -> None:
        await self._api.aclose()
        await super().aclose()


def _jwt_expiry(token: SecretStr) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (the registry verifies; we only
    want to know when to ask again). None when the token is not a JWT with an ``exp``."""
    parts = token.get_secret_value().split(".")
    if len(parts) != 3:
        return None
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None
