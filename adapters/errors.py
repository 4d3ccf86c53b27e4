"""The one error tree of regflow.

    ReplicationError                      base; ``transient`` says whether a retry may help
    ├── ConfigError                       bad input from the user (config file, CLI, policy)
    │   └── InvalidReferenceError         a repository name, tag or digest that breaks the grammar
    ├── ContentError                      what a registry served is not what it claims to be
    │   ├── DigestMismatchError           bytes do not hash to their digest
    │   ├── AnswerTooLargeError           a non-blob answer over its cap while it was read
    │   ├── ManifestTooLargeError         a manifest over MAX_MANIFEST_BYTES
    │   └── UnsupportedMediaTypeError     a manifest kind we do not copy (e.g. schema1)
    ├── TransportError                    connection refused/reset, read timeout (transient)
    ├── CancelledReplication              the execution was stopped by the user
    └── RegistryError                     an HTTP answer we cannot go on from
        ├── AuthenticationError           401: credentials missing or refused
        ├── PermissionDeniedError         403
        ├── NotFoundError                 404
        ├── RateLimitedError              429, with ``retry_after`` seconds (transient)
        └── ServerError                   5xx (transient, except 501 and 505)

``is_transient`` reads ``transient`` and is the only rule any retry asks (the blob loop in
tasks/blobs.py, the task retries in flows/replicate.py). ``error_for_status`` sets the flag for
every answer: by status (408, 429, 5xx), and by distribution's error code where a registry's
code says a new attempt may succeed whatever the status (TRANSIENT_CODES).
Messages never carry credentials: registries' error bodies are capped and sanitised by the
client before they get here.
"""

from __future__ import annotations


class ReplicationError(Exception):
    """Base of every error regflow raises on purpose."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if transient is not None:
            self.transient = transient

    def __str__(self) -> str:
        return self.message


class ConfigError(ReplicationError):
    """The user's input is wrong; retrying cannot help."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidReferenceError(ConfigError):
    """A repository name, tag, digest or reference that breaks the distribution grammar."""


class ContentError(ReplicationError):
    """A registry served content that is inconsistent or that we refuse to copy."""


class DigestMismatchError(ContentError):
    def __init__(self, expected: str, actual: str, *, what: str = "blob") -> None:
        super().__init__(f"{what} digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class AnswerTooLargeError(ContentError):
    """A non-blob answer that went over its cap (adapters/bounded.py); what was read is dropped.
    Not transient: the same answer would come again."""


class ManifestTooLargeError(ContentError):
    pass


class UnsupportedMediaTypeError(ContentError):
    pass


class TransportError(ReplicationError):
    """The connection failed before an HTTP answer (refused, reset, timed out)."""

    transient = True


class CancelledReplication(ReplicationError):
    """Raised inside a transfer when the execution has been asked to stop."""


class RegistryError(ReplicationError):
    """An HTTP error answer from a registry.

    ``diagnostics`` holds the registry's error codes (distribution's ``errors[].code``), and
    ``detail`` a short, capped excerpt of the body for the humans reading the summary.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        method: str = "",
        url: str = "",
        codes: tuple[str, ...] = (),
        detail: str = "",
        transient: bool | None = None,
    ) -> None:
        super().__init__(message, transient=transient)
        self.status = status
        self.method = method
        self.url = url
        self.codes = codes
        self.detail = detail


class AuthenticationError(RegistryError):
    pass


class PermissionDeniedError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class RateLimitedError(RegistryError):
    transient = True

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        method: str = "",
        url: str = "",
        codes: tuple[str, ...] = (),
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, method=method, url=url, codes=codes, detail=detail)
        self.retry_after = retry_after


class ServerError(RegistryError):
    transient = True


# distribution's error codes (``errors[].code``) that say a new attempt may succeed, whatever the
# HTTP status: the upload session is gone or out of step (a new attempt opens a new one or asks
# the registry's Range first), the registry is busy or briefly unavailable.
TRANSIENT_CODES: frozenset[str] = frozenset({
    "BLOB_UPLOAD_UNKNOWN",   # 404: session purged or lost in a restart
    "BLOB_UPLOAD_INVALID",   # 404 on 2.8: a PATCH broken mid-body voided the session
    "RANGE_INVALID",         # 416: our offset and the registry's differ; the next attempt asks
    "TOOMANYREQUESTS",       # 429 normally; some proxies in front answer 503 or 403 with it
    "UNAVAILABLE",           # 503
})
# Statuses whose answer may differ on a new attempt. 501 and 505 are 5xx, but they say what the
# server can never do.
TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 425, 429, *range(500, 600)}) - {501, 505}


def error_for_status(
    message: str,
    *,
    status: int,
    method: str = "",
    url: str = "",
    codes: tuple[str, ...] = (),
    detail: str = "",
    retry_after: float | None = None,
    transient: bool = False,
) -> RegistryError:
    """The one mapping from an HTTP error status onto this tree, for registries and vendor APIs
    alike. The error is transient when its status or one of its codes says so, or when the
    caller (who may know more about the request) passes ``transient=True``."""
    transient = transient or status in TRANSIENT_STATUSES or not TRANSIENT_CODES.isdisjoint(codes)
    if status == 429 or "TOOMANYREQUESTS" in codes:
        return RateLimitedError(message, status=status, method=method, url=url, codes=codes,
                                detail=detail, retry_after=retry_after)
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else RegistryError)
    return kind(message, status=status, method=method, url=url, codes=codes, detail=detail,
                transient=transient)


_BY_STATUS: dict[int, type[RegistryError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


def is_transient(exc: BaseException) -> bool:
    """Whether a new attempt may succeed: the single rule every retry layer asks. Anything
    outside the tree (a bug, a cancelled coroutine) is never retried."""
    return isinstance(exc, ReplicationError) and exc.transient
