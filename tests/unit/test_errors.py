"""The error table: every HTTP answer maps onto one class of the tree, with the ``transient`` flag
that every retry level reads through ``is_transient``."""

from __future__ import annotations

import pytest

from adapters.errors import (
    AuthenticationError,
    CancelledReplication,
    ConfigError,
    ContentError,
    DigestMismatchError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RegistryError,
    ServerError,
    TransportError,
    error_for_status,
    is_transient,
)


@pytest.mark.parametrize(
    ("status", "codes", "kind", "transient"),
    [
        (400, (), RegistryError, False),
        (400, ("DIGEST_INVALID",), RegistryError, False),
        (400, ("MANIFEST_BLOB_UNKNOWN",), RegistryError, False),
        (400, ("BLOB_UPLOAD_UNKNOWN",), RegistryError, True),
        (401, (), AuthenticationError, False),
        (401, ("UNAUTHORIZED",), AuthenticationError, False),
        (403, (), PermissionDeniedError, False),
        (403, ("DENIED",), PermissionDeniedError, False),
        (404, (), NotFoundError, False),
        (404, ("MANIFEST_UNKNOWN",), NotFoundError, False),
        (404, ("BLOB_UNKNOWN",), NotFoundError, False),
        (404, ("NAME_UNKNOWN",), NotFoundError, False),
        # distribution's answer for a purged or restarted upload session: a new one may work.
        (404, ("BLOB_UPLOAD_UNKNOWN",), NotFoundError, True),
        (404, ("BLOB_UPLOAD_INVALID",), NotFoundError, True),
        (405, ("UNSUPPORTED",), RegistryError, False),
        (408, (), RegistryError, True),
        (409, (), RegistryError, False),
        (416, ("RANGE_INVALID",), RegistryError, True),
        (425, (), RegistryError, True),
        (429, (), RateLimitedError, True),
        (429, ("TOOMANYREQUESTS",), RateLimitedError, True),
        (403, ("TOOMANYREQUESTS",), RateLimitedError, True),
        (500, (), ServerError, True),
        (500, ("UNKNOWN",), ServerError, True),
        (501, (), ServerError, False),
        (502, (), ServerError, True),
        (503, ("UNAVAILABLE",), ServerError, True),
        (504, (), ServerError, True),
        (505, (), ServerError, False),
        (599, (), ServerError, True),
    ],
)
def test_each_answer_maps_to_one_class_and_flag(status: int, codes: tuple[str, ...],
                                                kind: type[RegistryError], transient: bool) -> None:
    error = error_for_status(f"GET /v2/: {status}", status=status, codes=codes)
    assert type(error) is kind
    assert error.transient is transient
    assert is_transient(error) is transient
    assert (error.status, error.codes) == (status, codes)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_the_caller_may_mark_any_final_answer_transient(status: int) -> None:
    # The registry client does so for what it knows more about than the status says.
    assert error_for_status("x", status=status, transient=True).transient


def test_a_429_keeps_its_retry_after() -> None:
    error = error_for_status("x", status=429, retry_after=7.0)
    assert isinstance(error, RateLimitedError) and error.retry_after == 7.0


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransportError("connection reset"), True),
        (ContentError("schema1"), False),
        (DigestMismatchError("sha256:a", "sha256:b"), False),
        (ConfigError("bad", field="x"), False),
        (CancelledReplication("stopped"), False),
        (ValueError("a bug"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_is_transient_reads_only_the_flag(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
