"""adapters/helm.py on its own: chart metadata and files -> the config, annotations and manifest
bytes ``helm push`` writes, deterministic so that a resync finds an unchanged chart identical."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from adapters.helm import (
    ChartFile,
    ChartMetadata,
    chart_artifact,
    config_bytes,
    manifest_annotations,
    oci_tag,
    resource_types_of,
)
from adapters.oci import DOCKER_CONFIG, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Digest, parse_manifest
from adapters.oci.mediatypes import HELM_CHART_CONTENT, HELM_CHART_PROVENANCE, HELM_CONFIG

TGZ = ChartFile(digest=Digest.of(b"chart bytes"), size=11)
PROV = ChartFile(digest=Digest.of(b"prov bytes"), size=10)
CREATED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def meta(**fields: object) -> ChartMetadata:
    return ChartMetadata.model_validate({"apiVersion": "v2", "name": "web", "version": "1.2.3", **fields})


@pytest.mark.parametrize(("version", "tag"), [
    ("1.2.3", "1.2.3"),
    ("1.2.3+build.7", "1.2.3_build.7"),       # '+' is not a tag character: Helm writes '_'
    ("1.0.0-rc.1+a+b", "1.0.0-rc.1_a_b"),
])
def test_versions_become_tags_as_helm_writes_them(version: str, tag: str) -> None:
    assert oci_tag(version) == tag


def test_config_is_chart_yaml_as_go_marshals_it_fields_in_struct_order_empty_ones_left_out() -> None:
    m = meta(description="Web <app> & co", appVersion="2.0", type="application", keywords=[],
             home="", sources=["https://src.example/web"], deprecated=False,
             maintainers=[{"name": "Ann", "email": "ann@example.com"}, {"name": "Bob"}],
             annotations={"z": "1", "a": "2"}, kubeVersion=">=1.25.0-0",
             dependencies=[{"name": "db", "version": "1.x", "repository": "", "condition": "db.enabled"}])
    assert config_bytes(m) == (
        b'{"name":"web","sources":["https://src.example/web"],"version":"1.2.3",'
        b'"description":"Web \\u003capp\\u003e \\u0026 co",'
        b'"maintainers":[{"name":"Ann","email":"ann@example.com"},{"name":"Bob"}],'
        b'"apiVersion":"v2","appVersion":"2.0","annotations":{"a":"2","z":"1"},'
        b'"kubeVersion":"\\u003e=1.25.0-0",'
        b'"dependencies":[{"name":"db","version":"1.x","repository":"","condition":"db.enabled"}],'
        b'"type":"application"}'
    )


def test_nulls_read_as_absent_and_non_ascii_stays_utf8_in_the_config() -> None:
    m = meta(description="Café", home=None, maintainers=None, icon=None)
    expected = '{"name":"web","version":"1.2.3","description":"Café","apiVersion":"v2"}'
    assert config_bytes(m) == expected.encode()


def test_annotations_follow_helm_title_version_from_the_chart_its_own_cannot_override_them() -> None:
    m = meta(description="The web chart", home="https://web.example", sources=["https://git/web", "x"],
             maintainers=[{"name": "Ann", "email": "ann@example.com"}, {"name": "Bob"}],
             annotations={"org.opencontainers.image.title": "spoofed", "category": "Naïve"})
    assert manifest_annotations(m, CREATED) == {
        "category": "Na\\u00efve",   # Helm escapes non-ASCII annotation text
        "org.opencontainers.image.authors": "Ann (ann@example.com), Bob",
        "org.opencontainers.image.created": "2024-05-06T07:08:09Z",
        "org.opencontainers.image.description": "The web chart",
        "org.opencontainers.image.source": "https://git/web",
        "org.opencontainers.image.title": "web",
        "org.opencontainers.image.url": "https://web.example",
        "org.opencontainers.image.version": "1.2.3",
    }
    assert list(manifest_annotations(m, CREATED)) == sorted(manifest_annotations(m, CREATED))


def test_created_is_written_in_utc_whole_seconds_and_left_out_when_unknown() -> None:
    plus_two = datetime(2024, 5, 6, 9, 8, 9, 999999, tzinfo=timezone(timedelta(hours=2)))
    created = manifest_annotations(meta(), plus_two)["org.opencontainers.image.created"]
    assert created == "2024-05-06T07:08:09Z"
    assert "org.opencontainers.image.created" not in manifest_annotations(meta(), None)
    # Blank values are not annotations (Helm's addToMap trims first).
    assert "org.opencontainers.image.description" not in manifest_annotations(meta(description="  "), None)


def test_astral_characters_are_escaped_as_utf16_pairs() -> None:
    assert manifest_annotations(meta(description="ship 🚢"), None)[
        "org.opencontainers.image.description"] == "ship \\ud83d\\udea2"


def test_manifest_is_an_oci_image_manifest_with_the_helm_config_and_layers_in_helms_order() -> None:
    m = meta(description="d")
    artifact = chart_artifact(m, TGZ, PROV, created=CREATED)
    manifest = parse_manifest(artifact.manifest)
    assert manifest.media_type == OCI_MANIFEST and manifest.digest == artifact.digest
    assert manifest.config is not None
    assert (manifest.config.media_type, manifest.config.digest, manifest.config.size) == (
        HELM_CONFIG, Digest.of(artifact.config), len(artifact.config))
    assert [(layer.media_type, layer.digest, layer.size) for layer in manifest.layers] == [
        (HELM_CHART_CONTENT, TGZ.digest, TGZ.size), (HELM_CHART_PROVENANCE, PROV.digest, PROV.size)]
    document = json.loads(artifact.manifest)
    assert list(document) == ["schemaVersion", "mediaType", "config", "layers", "annotations"]
    assert list(document["layers"][0]) == ["mediaType", "digest", "size"]
    assert b" " not in artifact.manifest  # compact, as Go writes it


def test_same_inputs_same_bytes_and_every_input_shows_in_the_digest() -> None:
    first = chart_artifact(meta(), TGZ, PROV, created=CREATED)
    again = chart_artifact(meta(), TGZ, PROV, created=CREATED)
    assert first.manifest == again.manifest and first.config == again.config
    others = {
        chart_artifact(meta(), TGZ, None, created=CREATED).digest,                      # no .prov
        chart_artifact(meta(), PROV, PROV, created=CREATED).digest,                     # other .tgz
        chart_artifact(meta(version="1.2.4"), TGZ, PROV, created=CREATED).digest,       # other metadata
        chart_artifact(meta(), TGZ, PROV, created=CREATED + timedelta(seconds=1)).digest,
    }
    assert first.digest not in others and len(others) == 4
    assert len(parse_manifest(chart_artifact(meta(), TGZ).manifest).layers) == 1


def test_resource_types_a_chart_is_a_chart_and_an_artifact_an_image_is_an_image() -> None:
    chart = parse_manifest(chart_artifact(meta(), TGZ).manifest)
    assert resource_types_of(chart) == {"chart", "artifact"}

    def image(config_type: str) -> bytes:
        config = {"mediaType": config_type, "digest": str(TGZ.digest), "size": 1}
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                           "layers": []}).encode()

    assert resource_types_of(parse_manifest(image(OCI_CONFIG))) == {"image", "artifact"}
    assert resource_types_of(parse_manifest(image(DOCKER_CONFIG))) == {"image", "artifact"}
    assert resource_types_of(parse_manifest(image("application/vnd.example.sbom+json"))) == {"artifact"}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert resource_types_of(parse_manifest(index)) == {"image", "artifact"}
