"""Registry notification bodies, as distribution, Harbor and Docker Hub send them, into events."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.errors import ContentError
from adapters.oci import Digest
from deployments.events import (
    MAX_WEBHOOK_BODY_BYTES,
    PARSERS,
    RegistryEvent,
    parse_distribution,
    parse_dockerhub,
    parse_harbor,
)

INDEX_DIGEST = Digest("sha256:" + "a1" * 32)
PLATFORM_DIGEST = Digest("sha256:" + "b2" * 32)
LAYER_DIGEST = Digest("sha256:" + "c3" * 32)
OLD_DIGEST = Digest("sha256:" + "d4" * 32)

_REQUEST = {
    "id": "0e5ab677-b6dd-43b5-8094-37b610f55b89",
    "addr": "10.0.0.7:41234",
    "host": "registry.example.com:5000",
    "method": "PUT",
    "useragent": "docker/27.3.1 go/go1.22.7 git-commit/41ca978 os/linux arch/amd64",
}
_SOURCE = {"addr": "registry-0:5000", "instanceID": "118c3da3-a375-4d70-bfc3-cde02eb28ecd"}


def _dist_event(event_id: str, action: str, target: dict[str, Any], method: str = "PUT") -> dict[str, Any]:
    return {
        "id": event_id,
        "timestamp": "2025-04-02T10:15:04.402973972Z",
        "action": action,
        "target": target,
        "request": {**_REQUEST, "method": method},
        "actor": {"name": "ci-bot"},
        "source": _SOURCE,
    }


# What a registry sends for `docker buildx build --platform linux/amd64 --push -t team/app:1.4.2`:
# the blobs, the platform manifest by digest, then the tagged index; plus a pull, a mount and the
# three kinds of delete events distribution emits.
DISTRIBUTION_ENVELOPE: dict[str, Any] = {
    "events": [
        _dist_event("ev-blob", "push", {
            "mediaType": "application/octet-stream",
            "digest": LAYER_DIGEST,
            "size": 3623807,
            "length": 3623807,
            "repository": "team/app",
            "url": f"https://registry.example.com:5000/v2/team/app/blobs/{LAYER_DIGEST}",
        }),
        _dist_event("ev-layer", "push", {
            "mediaType": "application/vnd.docker.container.image.rootfs.diff+x-gtar",
            "digest": LAYER_DIGEST,
            "size": 3623807,
            "length": 3623807,
            "repository": "team/app",
        }),
        _dist_event("ev-platform", "push", {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": PLATFORM_DIGEST,
            "size": 1021,
            "length": 1021,
            "repository": "team/app",
            "url": f"https://registry.example.com:5000/v2/team/app/manifests/{PLATFORM_DIGEST}",
        }),
        _dist_event("ev-index", "push", {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": INDEX_DIGEST,
            "size": 856,
            "length": 856,
            "repository": "team/app",
            "url": f"https://registry.example.com:5000/v2/team/app/manifests/{INDEX_DIGEST}",
            "tag": "1.4.2",
        }),
        _dist_event("ev-pull", "pull", {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": INDEX_DIGEST,
            "size": 708,
            "length": 708,
            "repository": "team/app",
            "url": f"https://registry.example.com:5000/v2/team/app/manifests/{INDEX_DIGEST}",
            "tag": "1.4.2",
        }, method="GET"),
        _dist_event("ev-mount", "mount", {
            "mediaType": "application/octet-stream",
            "digest": LAYER_DIGEST,
            "repository": "team/other",
            "fromRepository": "team/app",
        }, method="POST"),
        _dist_event("ev-delete-manifest", "delete", {"digest": OLD_DIGEST, "repository": "team/app"},
                    method="DELETE"),
        _dist_event("ev-delete-tag", "delete", {"repository": "team/app", "tag": "1.4.1"}, method="DELETE"),
        _dist_event("ev-delete-repo", "delete", {"repository": "team/app"}, method="DELETE"),
    ]
}

HARBOR_PUSH: dict[str, Any] = {
    "type": "PUSH_ARTIFACT",
    "occur_at": 1737446601,
    "operator": "admin",
    "event_data": {
        "resources": [
            {
                "digest": INDEX_DIGEST,
                "tag": "v1.2.0",
                "resource_url": "harbor.example.com/library/web:v1.2.0",
            },
            {
                "digest": INDEX_DIGEST,
                "tag": "latest",
                "resource_url": "harbor.example.com/library/web:latest",
            },
        ],
        "repository": {
            "date_created": 1737446600,
            "name": "web",
            "namespace": "library",
            "repo_full_name": "library/web",
            "repo_type": "public",
        },
    },
}

HARBOR_DELETE: dict[str, Any] = {
    "type": "DELETE_ARTIFACT",
    "occur_at": 1737450000,
    "operator": "admin",
    "event_data": {
        "resources": [
            {"digest": OLD_DIGEST, "tag": "v1.1.0", "resource_url": "harbor.example.com/library/web:v1.1.0"}
        ],
        "repository": {
            "date_created": 1737446600,
            "name": "web",
            "namespace": "library",
            "repo_full_name": "library/web",
            "repo_type": "public",
        },
    },
}

CALLBACK_URL = "https://registry.hub.docker.com/u/acme/api/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/"
DOCKERHUB_PUSH: dict[str, Any] = {
    "callback_url": CALLBACK_URL,
    "push_data": {"pushed_at": 1417566161, "pusher": "acme-ci", "tag": "2025.04.1"},
    "repository": {
        "comment_count": 0,
        "date_created": 1417494799,
        "description": "",
        "dockerfile": "FROM alpine:3.20\n",
        "full_description": "The API server",
        "is_official": False,
        "is_private": True,
        "is_trusted": False,
        "name": "api",
        "namespace": "acme",
        "owner": "acme",
        "repo_name": "acme/api",
        "repo_url": "https://registry.hub.docker.com/u/acme/api/",
        "star_count": 0,
        "status": "Active",
    },
}


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


class TestDistribution:
    def test_keeps_tagged_manifest_pushes_and_deletions_only(self) -> None:
        events = parse_distribution(body(DISTRIBUTION_ENVELOPE), source="local")
        assert events == [
            RegistryEvent(
                source="local", action="push", repository="team/app", tag="1.4.2",
                digest=INDEX_DIGEST, event_id="ev-index",
                media_type="application/vnd.oci.image.index.v1+json",
            ),
            RegistryEvent(
                source="local", action="delete", repository="team/app", digest=OLD_DIGEST,
                event_id="ev-delete-manifest",
            ),
            RegistryEvent(
                source="local", action="delete", repository="team/app", tag="1.4.1",
                event_id="ev-delete-tag",
            ),
        ]
        assert events.dropped == 0

    @pytest.mark.parametrize("media_type", [
        "application/octet-stream",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ])
    def test_blob_events_are_ignored_even_with_a_tag(self, media_type: str) -> None:
        event = _dist_event("x", "push", {
            "mediaType": media_type, "digest": LAYER_DIGEST, "repository": "team/app", "tag": "odd",
        })
        assert parse_distribution(body({"events": [event]})) == []

    def test_blob_url_marks_a_blob_whatever_the_media_type(self) -> None:
        event = _dist_event("x", "push", {
            "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "digest": LAYER_DIGEST,
            "repository": "charts/web",
            "url": f"https://r.example.com/v2/charts/web/blobs/{LAYER_DIGEST}",
        })
        assert parse_distribution(body({"events": [event]})) == []

    def test_media_type_parameters_are_dropped(self) -> None:
        event = _dist_event("x", "push", {
            "mediaType": "Application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
            "digest": INDEX_DIGEST, "repository": "team/app", "tag": "v1",
        })
        [parsed] = parse_distribution(body({"events": [event]}))
        assert parsed.media_type == "application/vnd.docker.distribution.manifest.v2+json"

    def test_missing_ids_get_a_stable_hash_per_index(self) -> None:
        envelope = copy.deepcopy(DISTRIBUTION_ENVELOPE)
        for event in envelope["events"]:
            del event["id"]
        first = parse_distribution(body(envelope))
        again = parse_distribution(body(envelope))
        assert [e.event_id for e in first] == [e.event_id for e in again]
        assert len({e.event_id for e in first}) == len(first) == 3
        assert all(e.event_id.startswith("distribution-") for e in first)

    def test_an_overlong_id_is_replaced_by_the_hash(self) -> None:
        envelope = copy.deepcopy(DISTRIBUTION_ENVELOPE)
        envelope["events"][3]["id"] = "x" * 1000
        [push, *_] = parse_distribution(body(envelope))
        assert push.event_id.startswith("distribution-") and len(push.event_id) < 100

    def test_invalid_entries_are_dropped_and_counted_not_the_body(self) -> None:
        good = DISTRIBUTION_ENVELOPE["events"][3]
        bad_repository = copy.deepcopy(good)
        bad_repository["target"]["repository"] = "Team/App"
        bad_tag = copy.deepcopy(good)
        bad_tag["target"]["tag"] = "-nope"
        bad_digest = copy.deepcopy(good)
        bad_digest["target"]["digest"] = "sha256:1234"
        no_target = {"id": "y", "action": "push"}
        wrong_type = copy.deepcopy(good)
        wrong_type["target"]["repository"] = ["team/app"]
        envelope = {"events": [bad_repository, good, bad_tag, "junk", bad_digest, no_target, wrong_type]}
        events = parse_distribution(body(envelope))
        assert [e.event_id for e in events] == ["ev-index"]
        assert events.dropped == 6

    def test_an_empty_envelope_is_no_events(self) -> None:
        assert parse_distribution(b'{"events": []}') == []

    @pytest.mark.parametrize("raw", [
        b"",
        b"not json",
        b"\xff\xfe{}",
        b"[]",
        b'{"events": {}}',
        b'{"Events": []}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"events": [1' + b"0" * 5000 + b"]}",
    ])
    def test_malformed_bodies_are_refused(self, raw: bytes) -> None:
        with pytest.raises(ContentError):
            parse_distribution(raw)

    def test_a_body_over_the_cap_is_refused_before_parsing(self) -> None:
        padding = " " * MAX_WEBHOOK_BODY_BYTES
        with pytest.raises(ContentError, match="limit"):
            parse_distribution(b'{"events": []}' + padding.encode())


class TestHarbor:
    def test_push_gives_one_event_per_resource(self) -> None:
        events = parse_harbor(body(HARBOR_PUSH), source="harbor-prod")
        assert [(e.action, e.repository, e.tag, e.digest) for e in events] == [
            ("push", "library/web", "v1.2.0", INDEX_DIGEST),
            ("push", "library/web", "latest", INDEX_DIGEST),
        ]
        assert {e.source for e in events} == {"harbor-prod"}
        assert events[0].event_id != events[1].event_id
        assert [e.event_id for e in parse_harbor(body(HARBOR_PUSH))] == [e.event_id for e in events]

    def test_delete(self) -> None:
        [event] = parse_harbor(body(HARBOR_DELETE))
        assert (event.action, event.repository, event.tag, event.digest) == (
            "delete", "library/web", "v1.1.0", OLD_DIGEST,
        )

    def test_an_id_field_is_used_when_present(self) -> None:
        events = parse_harbor(body({**HARBOR_PUSH, "id": "evt-42"}))
        assert [e.event_id for e in events] == ["evt-42-0", "evt-42-1"]

    @pytest.mark.parametrize("kind", ["PULL_ARTIFACT", "SCANNING_COMPLETED", "QUOTA_WARNING", "REPLICATION"])
    def test_other_types_are_ignored(self, kind: str) -> None:
        assert parse_harbor(body({**HARBOR_PUSH, "type": kind})) == []

    def test_untagged_push_is_ignored(self) -> None:
        payload = copy.deepcopy(HARBOR_PUSH)
        payload["event_data"]["resources"][0]["tag"] = ""
        assert [e.tag for e in parse_harbor(body(payload))] == ["latest"]

    def test_invalid_repository_drops_every_resource(self) -> None:
        payload = copy.deepcopy(HARBOR_PUSH)
        payload["event_data"]["repository"]["repo_full_name"] = "library/Web"
        events = parse_harbor(body(payload))
        assert events == [] and events.dropped == 2

    def test_cloudevents_format_is_refused_with_a_reason(self) -> None:
        cloud = {"specversion": "1.0", "id": "x", "type": "harbor.artifact.pushed", "data": {}}
        with pytest.raises(ContentError, match="CloudEvents"):
            parse_harbor(body(cloud))

    @pytest.mark.parametrize("payload", [
        {"occur_at": 1},
        {"type": "PUSH_ARTIFACT"},
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": []}},
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": {}, "repository": {}}},
        ["PUSH_ARTIFACT"],
    ])
    def test_wrong_shapes_are_refused(self, payload: object) -> None:
        with pytest.raises(ContentError):
            parse_harbor(body(payload))


class TestDockerHub:
    def test_push(self) -> None:
        [event] = parse_dockerhub(body(DOCKERHUB_PUSH), source="hub")
        assert (event.source, event.action, event.repository, event.tag, event.digest) == (
            "hub", "push", "acme/api", "2025.04.1", None,
        )
        # The callback URL is a capability: only a hash of it may travel on.
        assert event.event_id.startswith("dockerhub-")
        assert "2141b5bi5i5b02" not in event.event_id

    def test_event_id_follows_the_callback_url(self) -> None:
        first = parse_dockerhub(body(DOCKERHUB_PUSH))[0].event_id
        other = parse_dockerhub(body({**DOCKERHUB_PUSH, "callback_url": CALLBACK_URL + "x"}))[0].event_id
        assert first != other
        no_callback = {k: v for k, v in DOCKERHUB_PUSH.items() if k != "callback_url"}
        assert parse_dockerhub(body(no_callback))[0].event_id.startswith("dockerhub-")

    def test_invalid_repository_is_dropped(self) -> None:
        payload = copy.deepcopy(DOCKERHUB_PUSH)
        payload["repository"]["repo_name"] = "acme/API"
        events = parse_dockerhub(body(payload))
        assert events == [] and events.dropped == 1

    def test_no_tag_is_no_event(self) -> None:
        payload = copy.deepcopy(DOCKERHUB_PUSH)
        del payload["push_data"]["tag"]
        assert parse_dockerhub(body(payload)) == []

    @pytest.mark.parametrize("payload", [{}, {"push_data": {}}, {"push_data": "x", "repository": {}}, []])
    def test_wrong_shapes_are_refused(self, payload: object) -> None:
        with pytest.raises(ContentError):
            parse_dockerhub(body(payload))


def test_parsers_cover_the_three_kinds() -> None:
    assert PARSERS == {
        "distribution": parse_distribution,
        "harbor": parse_harbor,
        "dockerhub": parse_dockerhub,
    }


def test_registry_event_validates_its_own_fields() -> None:
    with pytest.raises(ValidationError):
        RegistryEvent(source="s", action="push", repository="UPPER", event_id="e")
    with pytest.raises(ValidationError):
        RegistryEvent(source="s", action="pull", repository="a", event_id="e")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        RegistryEvent.model_validate(
            {"source": "s", "action": "delete", "repository": "a", "digest": "md5:00", "event_id": "e"}
        )


@pytest.mark.parametrize(("kind", "payload"), [
    ("distribution", DISTRIBUTION_ENVELOPE), ("harbor", HARBOR_PUSH), ("dockerhub", DOCKERHUB_PUSH),
])
def test_a_redelivered_body_has_the_same_event_ids(kind: str, payload: dict[str, Any]) -> None:
    # The receiver's replay memory (deployments/replays.py) knows a redelivery by these ids alone.
    first = [e.event_id for e in PARSERS[kind](body(payload), source="s")]
    again = [e.event_id for e in PARSERS[kind](body(copy.deepcopy(payload)), source="s")]
    assert first and first == again
    assert len(set(first)) == len(first)  # and distinct events of one body never share one
