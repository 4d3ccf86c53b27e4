"""The retry table: one predicate (``is_transient``), one loop per level (the blob loop in
tasks/blobs.py, Prefect's task retries), and a bound on the attempts of one blob."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest

import tasks.blobs
from adapters.distribution.client import UploadStatus
from adapters.errors import (
    ContentError,
    NotFoundError,
    PermissionDeniedError,
    ReplicationError,
    ServerError,
    TransportError,
    error_for_status,
)
from adapters.oci import Descriptor, Digest
from flows.replicate import (
    MAX_ATTEMPTS_PER_BLOB,
    TRANSFER_RETRIES,
    TransferIncomplete,
    delete,
    transfer,
)
from flows.transfers import retry_transient
from tasks.blobs import BLOB_ATTEMPTS, BlobCopier
from tasks.models import TagOutcome, TransferResult
from tests.support.fake_client import NoRoundTrips


def _result(*, transient: bool) -> TransferResult:
    return TransferResult(source_repository="a", target_repository="a", tags=[
        TagOutcome(tag="1", status="failed", reason="x", transient=transient)])


def test_transient_failures_are_retried_and_others_are_not():
    def state(exc: BaseException) -> SimpleNamespace:
        return SimpleNamespace(data=exc)

    assert retry_transient(None, None, state(ServerError("503", status=503)))
    assert not retry_transient(None, None, state(ContentError("bad manifest")))
    assert retry_transient(None, None, state(TransferIncomplete(_result(transient=True), transient=True)))
    assert not retry_transient(None, None, state(TransferIncomplete(_result(transient=False),
                                                                      transient=False)))
    assert not retry_transient(None, None, state(ValueError("a bug is not retried")))


def test_a_result_is_retryable_only_when_every_failure_is_transient():
    assert _result(transient=True).retryable
    assert not _result(transient=False).retryable
    mixed = _result(transient=True)
    mixed.tags.append(TagOutcome(tag="2", status="failed", reason="y", transient=False))
    assert not mixed.retryable


async def test_an_event_run_discovers_every_tag_it_names_and_no_other():
    from policies.models import Policy
    from tasks.discover import Resource, discover

    class Source:
        client = NoRoundTrips()

        async def list_repositories(self, names):  # type: ignore[no-untyped-def]
            for n in names:
                yield n

        async def list_tags(self, repository):  # type: ignore[no-untyped-def]
            return ["a", "b", "c", "d"]

    policy = Policy(name="p", src_registry="s", dest_registry="d", dest_namespace="m")
    found = await discover(Source(), policy, [Resource(repository="x/app", tag=t) for t in ("b", "c", "b")]
                           + [Resource(repository="y/app")])
    assert {f.repository: f.tags for f in found} == {"x/app": ["b", "c"], "y/app": ["a", "b", "c", "d"]}


# -- the retry table: one loop per level, bounded ------------------------------------------------

CHUNK = 10
DATA = bytes(range(256)) * 2  # 512 bytes: 52 PATCHes of CHUNK when chunked
BLOB = Descriptor(media_type="application/octet-stream", digest=Digest.of(DATA), size=len(DATA))


class Source:
    """Serves DATA from any offset, as a registry's blob GET does."""

    host = "src.example"
    fastest_answer = None  # no round trips: the blob slots stay as they are

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: str, offset: int = 0) -> AsyncIterator[Source]:
        self._offset = offset
        yield self

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(self._offset, len(DATA), 7):
            yield DATA[i:i + 7]


class Target:
    """A registry's upload API in memory. ``fail[method]`` is a script of what the next calls of
    that method raise (None: answer normally); a failed PATCH or PUT keeps none of its bytes."""

    host = "dst.example"
    endpoint = SimpleNamespace(url="http://dst.example")
    fastest_answer = None

    def __init__(self, **fail: list[BaseException | None]) -> None:
        self.fail = fail
        self.calls: list[tuple[str, object]] = []
        self.sessions: dict[str, bytes] = {}  # live session id -> bytes kept
        self.blobs: set[str] = set()
        self._opened = 0

    def _call(self, method: str, detail: object = None) -> None:
        self.calls.append((method, detail))
        script = self.fail.get(method)
        if script:
            error = script.pop(0)
            if error is not None:
                raise error

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    def _session(self, location: str) -> str:
        sid = location.split(";")[0]
        if sid not in self.sessions:
            raise error_for_status("404", status=404, codes=("BLOB_UPLOAD_UNKNOWN",))
        return sid

    async def start_upload(self, repository: str, *, mount: str | None = None,
                           mount_from: str | None = None) -> str | None:
        self._call("POST")
        if mount in self.blobs:
            return None
        self._opened += 1
        self.sessions[f"u{self._opened}"] = b""
        return f"u{self._opened};0"

    async def blob_exists(self, repository: str, digest: str) -> None:
        self._call("HEAD")

    async def put_blob(self, repository: str, location: str, digest: str, size: int,
                       body: AsyncIterator[bytes]) -> None:
        data = b"".join([piece async for piece in body])
        self._call("PUT")
        self.sessions.pop(self._session(location))
        assert Digest.of(data) == digest
        self.blobs.add(digest)

    async def patch_chunk(self, repository: str, location: str, offset: int, length: int,
                          body: AsyncIterator[bytes]) -> str:
        data = b"".join([piece async for piece in body])
        self._call("PATCH", offset)
        sid = self._session(location)
        assert offset == len(self.sessions[sid]) and len(data) == length
        self.sessions[sid] += data
        return f"{sid};{offset + length}"

    async def upload_status(self, repository: str, location: str) -> UploadStatus:
        self._call("STATUS")
        sid = self._session(location)
        return UploadStatus(f"{sid};{len(self.sessions[sid])}", len(self.sessions[sid]))

    async def complete_upload(self, repository: str, location: str, digest: str) -> None:
        self._call("COMPLETE")
        assert Digest.of(self.sessions.pop(self._session(location))) == digest
        self.blobs.add(digest)

    async def cancel_upload(self, repository: str, location: str) -> None:
        self.sessions.pop(location.split(";")[0], None)


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.blobs, "BACKOFF_BASE_SECONDS", 0.0)
    monkeypatch.setattr(tasks.blobs, "UPLOAD_CHUNK_BYTES", CHUNK)


def copier(target: Target, *, chunked: bool = False) -> BlobCopier:
    return BlobCopier(Source(), target, chunked_threshold=0 if chunked else 1 << 30)  # type: ignore[arg-type]


def reset() -> TransportError:
    return TransportError("connection reset")


def test_the_levels_multiply_to_the_documented_bound():
    assert (BLOB_ATTEMPTS, TRANSFER_RETRIES) == (3, 2)
    assert MAX_ATTEMPTS_PER_BLOB == BLOB_ATTEMPTS * (1 + TRANSFER_RETRIES) == 9
    for task in (transfer, delete):
        assert task.retries == TRANSFER_RETRIES
        assert task.retry_condition_fn is retry_transient


async def test_a_transient_failure_is_tried_again_up_to_the_blob_bound_then_raised():
    target = Target(PUT=[error_for_status("503", status=503)] * 10)
    with pytest.raises(ReplicationError) as info:
        await copier(target).ensure("a", "a", BLOB)
    assert info.value.status == 503  # type: ignore[attr-defined]
    assert target.count("PUT") == BLOB_ATTEMPTS
    # Each attempt starts from its first request: no request is retried on its own.
    assert target.count("POST") == BLOB_ATTEMPTS


@pytest.mark.parametrize("error", [error_for_status("403", status=403), error_for_status("401", status=401),
                                   error_for_status("404", status=404), error_for_status("400", status=400)])
async def test_a_final_answer_is_not_tried_again(error: ReplicationError):
    target = Target(PUT=[error])
    with pytest.raises(type(error)):
        await copier(target).ensure("a", "a", BLOB)
    assert target.count("PUT") == 1


async def test_blob_upload_unknown_gets_a_new_session_on_the_next_attempt():
    unknown = error_for_status("404", status=404, codes=("BLOB_UPLOAD_UNKNOWN",))
    target = Target(PUT=[unknown])
    assert await copier(target).ensure("a", "a", BLOB) == len(DATA)
    assert target.count("PUT") == 2 and target.count("POST") == 2
    assert BLOB.digest in target.blobs


async def test_a_broken_patch_is_continued_by_the_next_attempt_from_the_registrys_offset():
    target = Target(PATCH=[None, None, None, reset()])
    assert await copier(target, chunked=True).ensure("a", "a", BLOB) == len(DATA)
    offsets = [o for m, o in target.calls if m == "PATCH"]
    assert offsets[:5] == [0, 10, 20, 30, 30]  # the 4th broke; the next attempt resends it only
    assert target.count("STATUS") == 1 and target.count("POST") == 1
    assert BLOB.digest in target.blobs and not target.sessions


async def test_resuming_is_an_attempt_of_the_same_loop_not_a_loop_inside_it():
    target = Target(PATCH=[None, *[reset()] * 10])
    with pytest.raises(TransportError):
        await copier(target, chunked=True).ensure("a", "a", BLOB)
    failed = target.count("PATCH") - 1
    assert failed == BLOB_ATTEMPTS
    assert target.count("STATUS") == BLOB_ATTEMPTS - 1


async def test_the_task_level_continues_the_session_and_the_whole_is_bounded():
    """As Prefect's task retries do: the same run's copier, ensure called again."""
    target = Target(PATCH=[None, *[reset()] * 100])
    blobs = copier(target, chunked=True)
    for _ in range(1 + TRANSFER_RETRIES):
        with pytest.raises(TransportError):
            await blobs.ensure("a", "a", BLOB)
    assert target.count("PATCH") - 1 == MAX_ATTEMPTS_PER_BLOB
    assert target.count("POST") == 1  # one session throughout
    target.fail.clear()
    assert await blobs.ensure("a", "a", BLOB) == len(DATA) - CHUNK  # the first PATCH was kept


async def test_a_session_the_registry_lost_restarts_within_the_same_attempt():
    target = Target(PATCH=[None, reset()])
    blobs = copier(target, chunked=True)
    with pytest.raises(TransportError):
        await _one_attempt(blobs)
    target.sessions.clear()  # purged by the registry meanwhile
    assert await blobs.ensure("a", "a", BLOB) == len(DATA)
    assert [m for m, _ in target.calls][-1] == "COMPLETE"
    assert target.count("STATUS") == 1 and target.count("POST") == 2


@pytest.mark.parametrize("answer", [
    error_for_status("404", status=404, codes=("BLOB_UPLOAD_UNKNOWN",)),
    error_for_status("400", status=400, codes=("BLOB_UPLOAD_INVALID",)),
])
async def test_a_session_the_registry_will_not_report_restarts_within_the_same_attempt(
        answer: ReplicationError):
    target = Target(PATCH=[None, reset()], STATUS=[answer])
    blobs = copier(target, chunked=True)
    with pytest.raises(TransportError):
        await _one_attempt(blobs)
    await _one_attempt(blobs)
    assert target.count("STATUS") == 1 and target.count("POST") == 2
    assert BLOB.digest in target.blobs


async def test_a_status_request_without_an_answer_is_asked_again_by_the_next_attempt():
    target = Target(PATCH=[None, reset()], STATUS=[error_for_status("503", status=503)])
    assert await copier(target, chunked=True).ensure("a", "a", BLOB) == len(DATA)
    assert target.count("STATUS") == 2 and target.count("POST") == 1  # the one session throughout


async def _one_attempt(blobs: BlobCopier) -> None:
    tasks.blobs.BLOB_ATTEMPTS = 1
    try:
        await blobs.ensure("a", "a", BLOB)
    finally:
        tasks.blobs.BLOB_ATTEMPTS = BLOB_ATTEMPTS


async def test_a_manifest_put_is_tried_like_a_blob():
    class ManifestTarget(Target):
        async def put_manifest(self, repository: str, ref: str, manifest: object) -> str:
            self._call("PUT-MANIFEST")
            return "sha256:x"

    target = ManifestTarget(**{"PUT-MANIFEST": [reset(), error_for_status("429", status=429)]})
    assert await copier(target).put_manifest("a", "1.0", None) == "sha256:x"  # type: ignore[arg-type]
    assert target.count("PUT-MANIFEST") == 3
    denied = ManifestTarget(**{"PUT-MANIFEST": [PermissionDeniedError("403", status=403)]})
    with pytest.raises(PermissionDeniedError):
        await copier(denied).put_manifest("a", "1.0", None)  # type: ignore[arg-type]
    assert denied.count("PUT-MANIFEST") == 1


def test_not_found_is_final_unless_distribution_says_the_upload_is_unknown():
    assert not NotFoundError("404", status=404).transient
    assert error_for_status("404", status=404, codes=("BLOB_UPLOAD_UNKNOWN",)).transient
