"""The test token service plus the OAuth2 refresh-token grant, as Azure Container Registry's
``/oauth2/token`` takes it (and distribution's token spec describes it)::

    POST /token  grant_type=refresh_token&refresh_token=R&service=S&scope=A B&client_id=C

A known refresh token ``R`` stands for one of the service's users and gets that user's access;
an unknown one gets 401. Everything else is :class:`TokenService` as it is; this lives apart so
that the token service itself keeps a single behaviour for its other users.
"""

from __future__ import annotations

import io
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from typing import Any

from tests.support.token_service import TokenRequest, TokenService, _make_handler


class RefreshTokenService(TokenService):
    def __init__(self, *args: Any, refresh_tokens: Mapping[str, str], **kwargs: Any) -> None:
        """``refresh_tokens`` maps each accepted refresh token to the user it stands for."""
        super().__init__(*args, **kwargs)
        unknown = set(refresh_tokens.values()) - set(self.users)
        if unknown:
            raise ValueError(f"refresh tokens for unknown users {sorted(unknown)}")
        self.refresh_tokens = dict(refresh_tokens)

    def start(self) -> RefreshTokenService:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _with_refresh_grant(self))
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="refresh-token-service", daemon=True)
        self._thread.start()
        return self


def _with_refresh_grant(svc: RefreshTokenService) -> type:
    base: Any = _make_handler(svc)

    class Handler(base):  # type: ignore[misc, valid-type]
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            if form.get("grant_type") != "refresh_token" or urllib.parse.urlsplit(self.path).path != "/token":
                self.rfile = io.BytesIO(raw)  # the base handler reads the body itself
                super().do_POST()
                return
            user = svc.refresh_tokens.get(form.get("refresh_token", ""))
            scopes = [form.get("scope") or ""]
            if user is None:
                svc._record(TokenRequest("POST", form.get("service", ""), tuple(scopes[0].split()),
                                         None, False, 401, ()))
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid refresh token"}]})
                return
            self._issue(user, svc.users[user], form.get("service", ""), scopes)

    return Handler
