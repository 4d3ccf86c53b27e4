"""The webhook endpoint: who may post, what is refused, and what reaches ``submit``."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from deployments.events import MAX_WEBHOOK_BODY_BYTES, RegistryEvent
from deployments.receiver import (
    SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE_SECONDS,
    TIMESTAMP_HEADER,
    WebhookSource,
    create_receiver,
)
from deployments.replays import EventMemory
from tests.unit.test_webhook_events import (
    DISTRIBUTION_ENVELOPE,
    DOCKERHUB_PUSH,
    HARBOR_PUSH,
    INDEX_DIGEST,
    body,
)

SECRETS = {
    "local": "dist-7f3c9a1e5b2d4f60a8c1",
    "harbor-prod": "harbor-0b9e4d2c7a15f3e6",
    "hub": "hubtoken-5d1a9c3e7b2f4a80",
    "signed": "hmac-key-e2a7c4f19b3d5e68",
}
SOURCES = {
    source.name: source
    for source in [
        WebhookSource(name="local", kind="distribution", auth="bearer", secret=SecretStr(SECRETS["local"])),
        WebhookSource(name="harbor-prod", kind="harbor", secret=SecretStr(SECRETS["harbor-prod"])),
        WebhookSource(name="hub", kind="dockerhub", auth="bearer", secret=SecretStr(SECRETS["hub"])),
        WebhookSource(name="signed", kind="distribution", auth="hmac", secret=SecretStr(SECRETS["signed"])),
    ]
}
DIST_BODY = body(DISTRIBUTION_ENVELOPE)
CONTENT_TYPE = {"Content-Type": "application/vnd.docker.distribution.events.v2+json"}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[RegistryEvent]] = []
        self.fail = False

    async def __call__(self, events: list[RegistryEvent]) -> int:
        if self.fail:
            raise RuntimeError("prefect is down")
        self.calls.append(events)
        return len({e.repository for e in events})


class Client:
    """An in-process client that remembers every answer, to check none of them leaks a secret."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self.responses: list[httpx.Response] = []

    async def post(
        self,
        url: str,
        content: bytes | AsyncIterator[bytes],
        headers: Mapping[str, str | bytes] | None = None,
    ) -> httpx.Response:
        raw = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
        response = await self._client.post(url, content=content, headers=raw)
        self.responses.append(response)
        return response

    async def get(self, url: str) -> httpx.Response:
        response = await self._client.get(url)
        self.responses.append(response)
        return response


@pytest.fixture
def submit() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(submit: Recorder, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Client]:
    caplog.set_level(logging.DEBUG)
    app = create_receiver(SOURCES.get, submit)
    transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 41234))
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
        recording = Client(http)
        yield recording
    for response in recording.responses:
        seen = response.text + json.dumps(dict(response.headers))
        for secret in SECRETS.values():
            assert secret not in seen
    for secret in SECRETS.values():
        assert secret not in caplog.text


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}", **CONTENT_TYPE}


def signed(payload: bytes, key: str = SECRETS["signed"], *, at: float | None = None,
           sent_at: str | None = None) -> dict[str, str]:
    """Headers of a signed delivery: signed at ``at`` (now), claiming ``sent_at`` (the same)."""
    stamp = str(int(time.time() if at is None else at))
    digest = hmac.new(key.encode(), stamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
    return {SIGNATURE_HEADER: f"sha256={digest}", TIMESTAMP_HEADER: sent_at or stamp, **CONTENT_TYPE}


def renumbered(suffix: str) -> bytes:
    """The distribution envelope with new event ids: another delivery, not a replay."""
    envelope = json.loads(DIST_BODY)
    for event in envelope["events"]:
        event["id"] += suffix
    return body(envelope)


async def test_health(client: Client) -> None:
    response = await client.get("/webhooks/health")
    assert response.status_code == 200


async def test_unknown_source_is_404(client: Client, submit: Recorder) -> None:
    response = await client.post("/webhooks/nowhere", content=DIST_BODY, headers=bearer("local"))
    assert response.status_code == 404
    assert submit.calls == []


class TestAuthentication:
    @pytest.mark.parametrize("headers", [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-secret-of-some-length"},
        {"Authorization": f"Bearer {SECRETS['local']}x"},
        {"Authorization": f"Bearer {SECRETS['local'][:-1]}"},
        {"Authorization": f"Bearer {SECRETS['harbor-prod']}"},
        {"Authorization": f"Basic {SECRETS['local']}"},
        # The bare secret is Harbor's form only.
        {"Authorization": SECRETS["local"]},
        {"Authorization": "Bearer sécret-ünicode-value-xx".encode()},
    ])
    async def test_bearer_refusals(
        self, client: Client, submit: Recorder, headers: dict[str, str | bytes]
    ) -> None:
        headers = {**CONTENT_TYPE, **headers}
        response = await client.post("/webhooks/local", content=DIST_BODY, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"error": "missing or wrong credentials"}
        assert submit.calls == []

    async def test_a_query_token_is_for_docker_hub_only(self, client: Client, submit: Recorder) -> None:
        response = await client.post(f"/webhooks/local?token={SECRETS['local']}", content=DIST_BODY)
        assert response.status_code == 401
        assert submit.calls == []

    async def test_bearer_scheme_is_case_insensitive(self, client: Client, submit: Recorder) -> None:
        headers = {"Authorization": f"bearer {SECRETS['local']}"}
        assert (await client.post("/webhooks/local", content=DIST_BODY, headers=headers)).status_code == 202

    @pytest.mark.parametrize("header", [SECRETS["harbor-prod"], f"Bearer {SECRETS['harbor-prod']}"])
    async def test_harbor_sends_its_auth_header_verbatim(
        self, client: Client, submit: Recorder, header: str
    ) -> None:
        response = await client.post(
            "/webhooks/harbor-prod", content=body(HARBOR_PUSH), headers={"Authorization": header}
        )
        assert response.status_code == 202
        assert len(submit.calls) == 1

    async def test_harbor_wrong_header(self, client: Client, submit: Recorder) -> None:
        response = await client.post(
            "/webhooks/harbor-prod", content=body(HARBOR_PUSH), headers={"Authorization": "harbor-guess"}
        )
        assert response.status_code == 401
        assert submit.calls == []

    @pytest.mark.parametrize("query", ["", "?token=", "?token=nope", f"?tok={SECRETS['hub']}"])
    async def test_docker_hub_without_the_token(self, client: Client, submit: Recorder, query: str) -> None:
        response = await client.post(f"/webhooks/hub{query}", content=body(DOCKERHUB_PUSH))
        assert response.status_code == 401
        assert submit.calls == []

    async def test_hmac_signature(self, client: Client, submit: Recorder) -> None:
        response = await client.post("/webhooks/signed", content=DIST_BODY, headers=signed(DIST_BODY))
        assert response.status_code == 202
        other = renumbered("-2")
        headers = signed(other)
        headers[SIGNATURE_HEADER] = headers[SIGNATURE_HEADER].upper().replace("SHA256=", "sha256=")
        assert (await client.post("/webhooks/signed", content=other, headers=headers)).status_code == 202
        assert len(submit.calls) == 2

    @pytest.mark.parametrize("skew", [-SIGNATURE_TOLERANCE_SECONDS + 5, SIGNATURE_TOLERANCE_SECONDS - 5])
    async def test_hmac_timestamp_within_the_tolerance(
        self, client: Client, submit: Recorder, skew: int
    ) -> None:
        headers = signed(DIST_BODY, at=time.time() + skew)
        assert (await client.post("/webhooks/signed", content=DIST_BODY, headers=headers)).status_code == 202

    @pytest.mark.parametrize("headers", [
        {},
        signed(DIST_BODY, key="some-other-key-entirely"),
        signed(DIST_BODY + b" "),
        {SIGNATURE_HEADER: "sha256="},
        {SIGNATURE_HEADER: "sha1=" + "0" * 40},
        {SIGNATURE_HEADER: "sha256=" + "g" * 64},
        {SIGNATURE_HEADER: SECRETS["signed"]},
        # A bearer token is no signature.
        {"Authorization": f"Bearer {SECRETS['signed']}"},
        # The timestamp: missing, malformed, too old, from the future, or not the one signed.
        {SIGNATURE_HEADER: signed(DIST_BODY)[SIGNATURE_HEADER]},
        signed(DIST_BODY, sent_at="yesterday"),
        signed(DIST_BODY, sent_at="-1"),
        signed(DIST_BODY, sent_at="9" * 40),
        signed(DIST_BODY, at=time.time() - SIGNATURE_TOLERANCE_SECONDS - 60),
        signed(DIST_BODY, at=time.time() + SIGNATURE_TOLERANCE_SECONDS + 60),
        signed(DIST_BODY, at=time.time() - 60, sent_at=str(int(time.time()))),
        # The body alone signed, as before timestamps: refused, the signature could be replayed.
        {SIGNATURE_HEADER: "sha256=" + hmac.new(SECRETS["signed"].encode(), DIST_BODY, "sha256").hexdigest(),
         TIMESTAMP_HEADER: str(int(time.time()))},
    ])
    async def test_hmac_refusals(self, client: Client, submit: Recorder, headers: dict[str, str]) -> None:
        response = await client.post("/webhooks/signed", content=DIST_BODY, headers=headers)
        assert response.status_code == 401
        assert submit.calls == []

    async def test_authentication_comes_before_the_size_check(self, client: Client, submit: Recorder) -> None:
        huge = b" " * (MAX_WEBHOOK_BODY_BYTES + 1)
        assert (await client.post("/webhooks/local", content=huge)).status_code == 401
        assert submit.calls == []


class TestAccepted:
    async def test_distribution(self, client: Client, submit: Recorder) -> None:
        response = await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        assert response.status_code == 202
        assert response.json() == {"accepted": 3, "runs": 1, "dropped": 0, "replayed": 0}
        [events] = submit.calls
        assert [(e.source, e.action, e.tag, e.digest) for e in events] == [
            ("local", "push", "1.4.2", INDEX_DIGEST),
            ("local", "delete", None, "sha256:" + "d4" * 32),
            ("local", "delete", "1.4.1", None),
        ]

    async def test_harbor(self, client: Client, submit: Recorder) -> None:
        response = await client.post(
            "/webhooks/harbor-prod", content=body(HARBOR_PUSH), headers=bearer("harbor-prod")
        )
        assert response.status_code == 202
        assert response.json() == {"accepted": 2, "runs": 1, "dropped": 0, "replayed": 0}
        [events] = submit.calls
        assert [(e.source, e.repository, e.tag) for e in events] == [
            ("harbor-prod", "library/web", "v1.2.0"),
            ("harbor-prod", "library/web", "latest"),
        ]

    async def test_docker_hub(self, client: Client, submit: Recorder) -> None:
        response = await client.post(f"/webhooks/hub?token={SECRETS['hub']}", content=body(DOCKERHUB_PUSH))
        assert response.status_code == 202
        assert response.json() == {"accepted": 1, "runs": 1, "dropped": 0, "replayed": 0}
        [[event]] = submit.calls
        assert (event.source, event.repository, event.tag) == ("hub", "acme/api", "2025.04.1")

    async def test_pulls_and_blobs_alone_submit_nothing(self, client: Client, submit: Recorder) -> None:
        events = [e for e in DISTRIBUTION_ENVELOPE["events"] if e["id"] in ("ev-blob", "ev-layer", "ev-pull")]
        envelope = body({"events": events})
        response = await client.post("/webhooks/local", content=envelope, headers=bearer("local"))
        assert response.status_code == 202
        assert response.json() == {"accepted": 0, "runs": 0, "dropped": 0, "replayed": 0}
        assert submit.calls == []

    async def test_dropped_entries_are_counted(self, client: Client, submit: Recorder) -> None:
        bad = json.loads(json.dumps(DISTRIBUTION_ENVELOPE["events"][3]))
        bad["target"]["repository"] = "Bad/Name"
        envelope = {"events": [bad, DISTRIBUTION_ENVELOPE["events"][3]]}
        response = await client.post("/webhooks/local", content=body(envelope), headers=bearer("local"))
        assert response.json() == {"accepted": 1, "runs": 1, "dropped": 1, "replayed": 0}


class TestReplays:
    async def test_a_bearer_delivery_played_again_is_answered_200_and_ignored(
        self, client: Client, submit: Recorder
    ) -> None:
        first = await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        again = await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json() == {"accepted": 0, "runs": 0, "dropped": 0, "replayed": 3}
        assert len(submit.calls) == 1

    async def test_only_new_events_of_a_body_are_submitted(self, client: Client, submit: Recorder) -> None:
        await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        envelope = json.loads(DIST_BODY)
        envelope["events"][3]["id"] = "ev-index-again"
        response = await client.post("/webhooks/local", content=body(envelope), headers=bearer("local"))
        assert response.status_code == 202
        assert response.json() == {"accepted": 1, "runs": 1, "dropped": 0, "replayed": 2}
        assert [e.event_id for e in submit.calls[1]] == ["ev-index-again"]

    async def test_an_id_twice_in_one_body_counts_once(self, client: Client, submit: Recorder) -> None:
        envelope = json.loads(DIST_BODY)
        envelope["events"].append(envelope["events"][3])
        response = await client.post("/webhooks/local", content=body(envelope), headers=bearer("local"))
        assert response.json() == {"accepted": 3, "runs": 1, "dropped": 0, "replayed": 1}

    async def test_ids_are_remembered_per_source(self, client: Client, submit: Recorder) -> None:
        await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        response = await client.post("/webhooks/signed", content=DIST_BODY, headers=signed(DIST_BODY))
        assert response.status_code == 202
        assert len(submit.calls) == 2

    async def test_a_signed_delivery_played_again_is_ignored_then_refused(self, submit: Recorder) -> None:
        now = [time.time()]
        app = create_receiver(SOURCES.get, submit, clock=lambda: now[0])
        headers = signed(DIST_BODY, at=now[0])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
            async def deliver() -> int:
                return (await http.post("/webhooks/signed", content=DIST_BODY, headers=headers)).status_code

            assert await deliver() == 202
            assert await deliver() == 200
            now[0] += SIGNATURE_TOLERANCE_SECONDS + 1
            assert await deliver() == 401
        assert len(submit.calls) == 1

    async def test_a_failed_start_leaves_the_events_unseen(self, client: Client, submit: Recorder) -> None:
        submit.fail = True
        refused = await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        assert refused.status_code == 503
        submit.fail = False
        response = await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        assert response.status_code == 202
        assert len(submit.calls) == 1

    async def test_ids_are_forgotten_after_the_window(self, submit: Recorder) -> None:
        now = [0.0]
        memory = EventMemory(window=60, clock=lambda: now[0])
        app = create_receiver(SOURCES.get, submit, memory=memory)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
            async def deliver() -> int:
                response = await http.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
                return response.status_code

            assert await deliver() == 202
            now[0] = 59
            assert await deliver() == 200
            now[0] = 61
            assert await deliver() == 202
        assert len(submit.calls) == 2


class TestEventMemory:
    def test_bounded_oldest_forgotten_first(self) -> None:
        memory = EventMemory(window=3600, capacity=3, clock=lambda: 0.0)
        assert memory.claim([("s", str(i)) for i in range(5)]) == [("s", str(i)) for i in range(5)]
        assert len(memory) == 3
        assert memory.claim([("s", "0"), ("s", "4")]) == [("s", "0")]

    def test_expired_ids_leave(self) -> None:
        now = [0.0]
        memory = EventMemory(window=10, capacity=100, clock=lambda: now[0])
        memory.claim([("s", "a")])
        now[0] = 5
        memory.claim([("s", "b")])
        now[0] = 12
        assert memory.claim([]) == []
        assert len(memory) == 1


class TestRefused:
    @pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"events": "none"}'])
    async def test_malformed_body_is_400_with_a_reason(
        self, client: Client, submit: Recorder, content: bytes
    ) -> None:
        response = await client.post("/webhooks/local", content=content, headers=bearer("local"))
        assert response.status_code == 400
        assert response.json()["error"].startswith("distribution body")
        assert submit.calls == []

    async def test_huge_body_is_413(self, client: Client, submit: Recorder) -> None:
        huge = b'{"events": []}' + b" " * MAX_WEBHOOK_BODY_BYTES
        response = await client.post("/webhooks/local", content=huge, headers=bearer("local"))
        assert response.status_code == 413
        assert submit.calls == []

    async def test_huge_chunked_body_is_413(self, client: Client, submit: Recorder) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"events": ['
            for _ in range(MAX_WEBHOOK_BODY_BYTES // 65536 + 2):
                yield b" " * 65536
            yield b"]}"

        response = await client.post("/webhooks/local", content=chunks(), headers=bearer("local"))
        assert response.status_code == 413
        assert submit.calls == []

    async def test_huge_signed_body_is_413(self, client: Client, submit: Recorder) -> None:
        huge = b" " * (MAX_WEBHOOK_BODY_BYTES + 1)
        response = await client.post("/webhooks/signed", content=huge, headers=signed(huge))
        assert response.status_code == 413
        assert submit.calls == []

    async def test_a_failing_submit_asks_for_redelivery(self, client: Client, submit: Recorder) -> None:
        submit.fail = True
        response = await client.post("/webhooks/local", content=DIST_BODY, headers=bearer("local"))
        assert response.status_code == 503

    async def test_get_on_a_source_is_not_allowed(self, client: Client) -> None:
        assert (await client.get("/webhooks/local")).status_code == 405


class TestWebhookSource:
    def test_short_secret_refused_without_echoing_it(self) -> None:
        with pytest.raises(ValidationError) as info:
            WebhookSource(name="local", kind="distribution", secret=SecretStr("hunter2"))
        assert "hunter2" not in str(info.value)

    def test_secret_with_spaces_refused(self) -> None:
        with pytest.raises(ValidationError):
            WebhookSource(name="local", kind="harbor", secret=SecretStr(" padded-secret-value-xyz "))

    def test_secret_hidden_in_repr(self) -> None:
        assert SECRETS["local"] not in repr(SOURCES["local"])
        assert SECRETS["local"] not in SOURCES["local"].model_dump_json()

    def test_unknown_kind_or_auth(self) -> None:
        with pytest.raises(ValidationError):
            WebhookSource.model_validate({"name": "x", "kind": "quay", "secret": "0123456789abcdef"})
        with pytest.raises(ValidationError):
            WebhookSource.model_validate(
                {"name": "x", "kind": "harbor", "auth": "basic", "secret": "0123456789abcdef"}
            )
