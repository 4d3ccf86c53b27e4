"""``GET /metrics`` on serve's HTTP listener, for callers with the metrics token.

The token is kept like regflow's secret key: ``$REGFLOW_METRICS_TOKEN`` when set (a secret
manager's), else ``<regflow home>/metrics.token``, generated on first use with mode 0600.
Prometheus sends it with ``authorization: {credentials_file: ...}``; it re-reads that file on
every scrape, so a new token needs no reload. The token is never logged nor echoed.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Final

# The classic text format, which generate_latest writes and every Prometheus version reads.
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.errors import ConfigError
from deployments.metrics import MetricsCollector
from deployments.receiver import MIN_SECRET_LENGTH, same_secret
from policies.home import regflow_home
from policies.secrets import create_private_file_once

logger = logging.getLogger(__name__)

METRICS_TOKEN_ENV: Final = "REGFLOW_METRICS_TOKEN"
TOKEN_FILE_NAME: Final = "metrics.token"
METRICS_PATH: Final = "/metrics"


def token_file() -> Path:
    return regflow_home() / TOKEN_FILE_NAME


def token_origin() -> str:
    """Where the token comes from, safe to print."""
    return METRICS_TOKEN_ENV if os.environ.get(METRICS_TOKEN_ENV) else str(token_file())


def metrics_token() -> SecretStr:
    """The token scrapers must present; the file is created when neither it nor the variable
    exists. A token too short to resist guessing, or readable by others, is refused."""
    configured = os.environ.get(METRICS_TOKEN_ENV)
    if configured is not None:
        return _checked(configured.strip(), METRICS_TOKEN_ENV)
    path = token_file()
    if not path.exists():
        _create(path)
    try:
        # Group read is allowed: Prometheus runs as its own user, given the file's group.
        mode = path.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IRWXO):
            raise ConfigError(f"the metrics token file {path} is open to others (mode "
                              f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}` (or 640) and "
                              "make a new token if others may have read it", field=METRICS_TOKEN_ENV)
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the metrics token file {path}: {exc.strerror}",
                          field=METRICS_TOKEN_ENV) from None
    return _checked(text, str(path))


def _checked(text: str, origin: str) -> SecretStr:
    # Messages never repeat the text: it is the token.
    if len(text) < MIN_SECRET_LENGTH or not text.isprintable() or " " in text:
        raise ConfigError(f"the metrics token in {origin} must be at least {MIN_SECRET_LENGTH} printable "
                          "characters without spaces", field=METRICS_TOKEN_ENV)
    return SecretStr(text)


def _create(path: Path) -> None:
    create_private_file_once(path, (secrets.token_urlsafe(32) + "\n").encode())


def metrics_route(collector: MetricsCollector, token: SecretStr) -> Route:
    async def metrics(request: Request) -> Response:
        scheme, _, presented = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not same_secret(presented.strip(), token):
            client = request.client.host if request.client else "unknown"
            logger.warning("metrics: authentication failed (from %s)", client)
            return JSONResponse({"error": "missing or wrong credentials"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="regflow"'})
        return Response(await collector.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return Route(METRICS_PATH, metrics, methods=["GET"])
