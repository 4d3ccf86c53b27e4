"""Who may call the API: HTTP Basic as Harbor's ``admin``, password from the environment.

There is no default password: without ``REGFLOW_ADMIN_PASSWORD`` serve does not mount the API
at all (webhooks and /metrics go on). The password is compared in constant time and never
logged nor echoed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from typing import Final

from pydantic import SecretStr
from starlette.requests import Request

from adapters.errors import ConfigError
from deployments.receiver import same_secret

logger = logging.getLogger(__name__)

ADMIN_USER: Final = "admin"
ADMIN_PASSWORD_ENV: Final = "REGFLOW_ADMIN_PASSWORD"
# Harbor's own minimum for a user's password; the API changes what runs where, so no shorter.
MIN_PASSWORD_LENGTH: Final = 8
CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="regflow"'}


def admin_password() -> SecretStr | None:
    """The admin password from the environment; None when unset or empty (the API stays off).
    A password too short to resist guessing is refused with its reason (never its text)."""
    text = os.environ.get(ADMIN_PASSWORD_ENV, "")
    if not text:
        return None
    if len(text) < MIN_PASSWORD_LENGTH or not text.isprintable():
        raise ConfigError(f"use at least {MIN_PASSWORD_LENGTH} printable characters",
                          field=ADMIN_PASSWORD_ENV)
    return SecretStr(text)


def authenticated(request: Request, password: SecretStr) -> bool:
    scheme, _, encoded = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return _refused(request)
    try:
        user, sep, presented = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return _refused(request)
    # Both parts are always compared, so the timing does not tell a wrong user from a wrong password.
    user_ok = same_secret(user, SecretStr(ADMIN_USER))
    password_ok = same_secret(presented, password)
    if sep and user_ok and password_ok:
        return True
    return _refused(request)


def _refused(request: Request) -> bool:
    client = request.client.host if request.client else "unknown"
    logger.warning("harbor api: authentication failed (from %s)", client)
    return False
