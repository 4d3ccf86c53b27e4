"""The one error tree of regflow.

    ReplicationError                      base; ``transient`` says whether a retry may help
    ├── ConfigError                       bad input from the user (config file, CLI, policy)
    │   └── InvalidReferenceError         a repository name, tag or digest that breaks the grammar
    ├── ContentError                      what a registry served is not what it claims to be
    │   ├── DigestMismatchError           bytes do not hash to their digest
    │   ├── ManifestTooLargeError         a manifest over MAX_MANIFEST_BYTES
    │   └── UnsupportedMediaTypeError     a manifest kind we do not copy (e.g. schema1)
    ├── TransportError                    connection refused/reset, read timeout (transient)
    ├── UploadSessionLost                 the registry dropped an interrupted upload (transient)
    ├── CancelledReplication              the execution was stopped by the user
    └── RegistryError                     an HTTP answer we cannot go on from
        ├── AuthenticationError           401: credentials missing or refused
        ├── PermissionDeniedError         403
        ├── NotFoundError                 404
        ├── RateLimitedError              429, with ``retry_after`` seconds
        └── ServerError                   5xx (transient)

Prefect task retries look only at ``transient``; nothing else decides whether to try again.
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


class ManifestTooLargeError(ContentError):
    pass


class UnsupportedMediaTypeError(ContentError):
    pass


class TransportError(ReplicationError):
    """The connection failed before an HTTP answer (refused, reset, timed out)."""

    transient = True


class UploadSessionLost(ReplicationError):
    """The registry no longer knows an interrupted upload session: the blob starts over in a
    new one. distribution 2.8 answers 404 BLOB_UPLOAD_INVALID and cancels the session whenever
    the bytes it holds differ from the offset signed into the upload URL, which is the case
    after any PATCH broken mid-body; distribution 3 reports its Range instead (exact resume)."""

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
    alike. ``transient`` marks an otherwise final answer as worth another try (408 always is)."""
    if status == 429:
        return RateLimitedError(message, status=status, method=method, url=url, codes=codes,
                                detail=detail, retry_after=retry_after)
    final: type[RegistryError] | None = _BY_STATUS.get(status) or (ServerError if status >= 500 else None)
    if final is None:
        return RegistryError(message, status=status, method=method, url=url, codes=codes, detail=detail,
                             transient=transient or status == 408)
    return final(message, status=status, method=method, url=url, codes=codes, detail=detail)


_BY_STATUS: dict[int, type[RegistryError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
}


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may succeed: the single rule every retry layer asks."""
    return isinstance(exc, ReplicationError) and exc.transient
