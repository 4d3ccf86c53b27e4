"""Task retries happen for transient failures only."""

from __future__ import annotations

from types import SimpleNamespace

from adapters.errors import ContentError, ServerError
from flows.replicate import TransferIncomplete, _retry_transient
from tasks.models import TagOutcome, TransferResult


def _result(*, transient: bool) -> TransferResult:
    return TransferResult(source_repository="a", target_repository="a", tags=[
        TagOutcome(tag="1", status="failed", reason="x", transient=transient)])


def test_transient_failures_are_retried_and_others_are_not():
    def state(exc: BaseException) -> SimpleNamespace:
        return SimpleNamespace(data=exc)

    assert _retry_transient(None, None, state(ServerError("503", status=503)))
    assert not _retry_transient(None, None, state(ContentError("bad manifest")))
    assert _retry_transient(None, None, state(TransferIncomplete(_result(transient=True), transient=True)))
    assert not _retry_transient(None, None, state(TransferIncomplete(_result(transient=False),
                                                                      transient=False)))
    assert not _retry_transient(None, None, state(ValueError("a bug is not retried")))


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
        async def list_repositories(self, names):  # type: ignore[no-untyped-def]
            for n in names:
                yield n

        async def list_tags(self, repository):  # type: ignore[no-untyped-def]
            return ["a", "b", "c", "d"]

    policy = Policy(name="p", src_registry="s", dest_registry="d", dest_namespace="m")
    found = await discover(Source(), policy, [Resource(repository="x/app", tag=t) for t in ("b", "c", "b")]
                           + [Resource(repository="y/app")])
    assert {f.repository: f.tags for f in found} == {"x/app": ["b", "c"], "y/app": ["a", "b", "c", "d"]}
