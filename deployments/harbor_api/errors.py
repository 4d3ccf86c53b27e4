"""Harbor's error answers: ``{"errors": [{"code": ..., "message": ...}]}`` with Harbor's codes."""

from __future__ import annotations

import re
from typing import Final

from starlette.responses import JSONResponse

from adapters.errors import ConfigError
from deployments.harbor_api.models import ErrorItem, Errors

CODES: Final = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                405: "METHOD_NOT_ALLOWED", 409: "CONFLICT", 412: "PRECONDITION",
                415: "UNSUPPORTED_MEDIA_TYPE", 422: "UNPROCESSABLE_ENTITY", 500: "INTERNAL_SERVER_ERROR",
                501: "NOT_IMPLEMENTED"}
# apply's messages name the field inside a config file ("policies[0].trigger"); the API's
# caller sent one object, so the field is named from inside it.
_FILE_PLACE: Final = re.compile(r"\b(?:registries|policies)\[0\](?: \('[^']*'\))?\.?")


class HarborError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(exc: ConfigError | str) -> HarborError:
    return HarborError(400, api_message(exc))


def api_message(exc: ConfigError | str) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _FILE_PLACE.sub("", text)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Errors(errors=[ErrorItem(code=CODES.get(status, "UNKNOWN"), message=message)])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
