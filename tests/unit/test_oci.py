"""Tests of adapters.oci: media types, digests, references and manifest parsing."""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from adapters.errors import (
    ConfigError,
    ContentError,
    DigestMismatchError,
    InvalidReferenceError,
    ManifestTooLargeError,
    UnsupportedMediaTypeError,
)
from adapters.oci import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    DOCKER_SCHEMA1_MANIFEST,
    DOCKER_SCHEMA1_SIGNED_MANIFEST,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    MAX_REPOSITORY_LENGTH,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    OCI_NONDISTRIBUTABLE_LAYER,
    OCI_NONDISTRIBUTABLE_LAYER_GZIP,
    OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    REPOSITORY_COMPONENT_RE,
    Descriptor,
    Digest,
    DigestVerifier,
    Manifest,
    Reference,
    is_foreign_layer,
    is_image_manifest,
    is_index,
    parse_manifest,
    validate_registry,
    validate_repository,
    validate_tag,
)

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64
SHA_C = "sha256:" + "c" * 64


def desc(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def oci_image(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, SHA_A, 10),
        "layers": [desc(OCI_LAYER_GZIP, SHA_B, 20), desc(OCI_LAYER_ZSTD, SHA_C, 30)],
        **extra,
    }


def oci_index(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            desc(OCI_MANIFEST, SHA_A, 500, platform={"architecture": "amd64", "os": "linux"}),
            desc(
                OCI_MANIFEST,
                SHA_B,
                501,
                platform={"architecture": "arm64", "os": "linux", "variant": "v8", "os.version": "x"},
            ),
        ],
        **extra,
    }


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


# --- media types ---------------------------------------------------------------------------


def test_media_type_constants_have_the_registered_values() -> None:
    assert DOCKER_MANIFEST_V2 == "application/vnd.docker.distribution.manifest.v2+json"
    assert DOCKER_MANIFEST_LIST == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert OCI_MANIFEST == "application/vnd.oci.image.manifest.v1+json"
    assert OCI_INDEX == "application/vnd.oci.image.index.v1+json"
    assert DOCKER_SCHEMA1_MANIFEST == "application/vnd.docker.distribution.manifest.v1+json"
    assert DOCKER_SCHEMA1_SIGNED_MANIFEST == "application/vnd.docker.distribution.manifest.v1+prettyjws"
    assert DOCKER_FOREIGN_LAYER == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    assert OCI_NONDISTRIBUTABLE_LAYER == "application/vnd.oci.image.layer.nondistributable.v1.tar"
    assert OCI_NONDISTRIBUTABLE_LAYER_GZIP == OCI_NONDISTRIBUTABLE_LAYER + "+gzip"
    assert OCI_NONDISTRIBUTABLE_LAYER_ZSTD == OCI_NONDISTRIBUTABLE_LAYER + "+zstd"


def test_manifest_accept_lists_the_four_kinds_oci_first() -> None:
    assert isinstance(MANIFEST_ACCEPT, tuple)
    assert MANIFEST_ACCEPT[:2] == (OCI_MANIFEST, OCI_INDEX)
    assert set(MANIFEST_ACCEPT) == {OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST}
    assert set(MANIFEST_ACCEPT) == INDEX_TYPES | IMAGE_MANIFEST_TYPES
    assert not INDEX_TYPES & IMAGE_MANIFEST_TYPES


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
def test_is_index(media_type: str) -> None:
    assert is_index(media_type)
    assert is_index(media_type + "; charset=utf-8")
    assert is_index(media_type.upper())
    assert not is_image_manifest(media_type)


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST_V2])
def test_is_image_manifest(media_type: str) -> None:
    assert is_image_manifest(media_type)
    assert not is_index(media_type)


@pytest.mark.parametrize("media_type", [DOCKER_SCHEMA1_MANIFEST, "application/json", "", OCI_CONFIG])
def test_other_types_are_neither_index_nor_image(media_type: str) -> None:
    assert not is_index(media_type)
    assert not is_image_manifest(media_type)


@pytest.mark.parametrize(
    "media_type",
    [
        DOCKER_FOREIGN_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    ],
)
def test_foreign_layers_are_recognised(media_type: str) -> None:
    assert is_foreign_layer(media_type)


@pytest.mark.parametrize(
    "media_type", [DOCKER_LAYER, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_CONFIG]
)
def test_ordinary_layers_are_not_foreign(media_type: str) -> None:
    assert not is_foreign_layer(media_type)


# --- digests -------------------------------------------------------------------------------


def test_digest_of_is_sha256_of_the_bytes() -> None:
    digest = Digest.of(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert isinstance(digest, str)
    assert digest.algorithm == "sha256"
    assert digest.hex == hashlib.sha256(b"hello").hexdigest()


def test_digest_accepts_sha512() -> None:
    text = "sha512:" + hashlib.sha512(b"x").hexdigest()
    digest = Digest(text)
    assert digest.algorithm == "sha512"
    assert len(digest.hex) == 128
    assert str(digest) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "algorithm:hex"),
        ("a" * 64, "algorithm:hex"),
        ("md5:" + "a" * 32, "unsupported algorithm 'md5'"),
        ("sha256:" + "a" * 63, "64 hex characters, got 63"),
        ("sha256:" + "a" * 65, "64 hex characters, got 65"),
        ("sha512:" + "a" * 64, "128 hex characters, got 64"),
        ("sha256:" + "A" * 64, "lowercase"),
        ("sha256:" + "g" * 64, "not hex"),
        ("SHA256:" + "a" * 64, "unsupported algorithm"),
        (" sha256:" + "a" * 64, "unsupported algorithm"),
    ],
)
def test_bad_digests_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid digest") as caught:
        Digest(text)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_digest_refuses_non_strings() -> None:
    with pytest.raises(InvalidReferenceError, match="must be a string"):
        Digest(b"sha256:" + b"a" * 64)  # type: ignore[arg-type]


def test_digest_error_message_is_capped() -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        Digest("x" * 100_000)
    assert len(str(caught.value)) < 300


def test_digest_is_a_plain_string_to_everyone_else() -> None:
    digest = Digest(SHA_A)
    assert digest == SHA_A
    assert hash(digest) == hash(SHA_A)
    assert {SHA_A: 1}[digest] == 1
    assert f"/blobs/{digest}" == f"/blobs/{SHA_A}"
    assert Digest(digest) is digest
    assert pickle.loads(pickle.dumps(digest)) == digest
    assert type(pickle.loads(pickle.dumps(digest))) is Digest
    assert json.dumps({"d": digest}) == json.dumps({"d": SHA_A})


class _HasDigest(BaseModel):
    digest: Digest
    maybe: Digest | None = None


def test_digest_as_pydantic_field_validates_and_serialises() -> None:
    model = _HasDigest.model_validate({"digest": SHA_A})
    assert type(model.digest) is Digest
    assert model.maybe is None
    assert model.model_dump() == {"digest": SHA_A, "maybe": None}
    assert type(model.model_dump()["digest"]) is str
    assert json.loads(model.model_dump_json()) == {"digest": SHA_A, "maybe": None}
    assert _HasDigest.model_validate_json(model.model_dump_json()) == model


def test_digest_as_pydantic_field_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="sha256 needs 64 hex characters"):
        _HasDigest.model_validate({"digest": "sha256:abc"})
    with pytest.raises(ValidationError):
        _HasDigest.model_validate({"digest": 12})


def test_verifier_accepts_matching_bytes_fed_in_chunks() -> None:
    data = b"some layer bytes" * 1000
    verifier = DigestVerifier(Digest.of(data))
    for start in range(0, len(data), 777):
        verifier.update(data[start : start + 777])
    assert verifier.size == len(data)
    assert verifier.verify() == Digest.of(data)


def test_verifier_raises_mismatch_with_both_digests() -> None:
    verifier = DigestVerifier(Digest.of(b"expected"))
    verifier.update(b"something else")
    with pytest.raises(DigestMismatchError) as caught:
        verifier.verify()
    assert caught.value.expected == Digest.of(b"expected")
    assert caught.value.actual == Digest.of(b"something else")
    assert isinstance(caught.value, ContentError)
    assert not caught.value.transient


def test_verifier_supports_sha512() -> None:
    data = b"abc" * 100
    good = DigestVerifier(Digest("sha512:" + hashlib.sha512(data).hexdigest()))
    good.update(data)
    assert good.verify().algorithm == "sha512"

    bad = DigestVerifier(Digest("sha512:" + hashlib.sha512(b"other").hexdigest()))
    bad.update(data)
    with pytest.raises(DigestMismatchError) as caught:
        bad.verify()
    assert caught.value.actual == "sha512:" + hashlib.sha512(data).hexdigest()


def test_verifier_of_nothing_is_the_empty_digest() -> None:
    verifier = DigestVerifier(Digest.of(b""))
    assert verifier.size == 0
    assert verifier.verify() == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0, max_value=4096), max_size=8))
def test_verifier_is_independent_of_chunking(data: bytes, cuts: list[int]) -> None:
    verifier = DigestVerifier(Digest.of(data))
    bounds = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    for start, end in itertools.pairwise(bounds):
        verifier.update(data[start:end])
    assert verifier.size == len(data)
    assert verifier.verify() == Digest.of(data)


@given(st.text(max_size=200))
def test_digest_on_arbitrary_text_validates_or_raises_invalid_reference(text: str) -> None:
    try:
        digest = Digest(text)
    except InvalidReferenceError:
        return
    assert digest.algorithm in {"sha256", "sha512"}
    assert f"{digest.algorithm}:{digest.hex}" == text


# --- repository names and tags -------------------------------------------------------------


def test_repository_component_regex_is_distributions() -> None:
    assert REPOSITORY_COMPONENT_RE.pattern == r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "ubuntu",
        "library/ubuntu",
        "a/b/c/d",
        "foo.bar",
        "foo_bar",
        "foo__bar",
        "foo-bar",
        "foo---bar",
        "0/1",
        "a" * MAX_REPOSITORY_LENGTH,
    ],
)
def test_valid_repository_names(name: str) -> None:
    assert validate_repository(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("Ubuntu", "lowercase"),
        ("library/Ubuntu", "lowercase"),
        ("a..b", "'..'"),
        ("a//b", "empty path component"),
        ("/a", "empty path component"),
        ("a/", "empty path component"),
        ("a" * (MAX_REPOSITORY_LENGTH + 1), "too long"),
        ("-a", "start and end with a letter or digit"),
        ("a.", "start and end with a letter or digit"),
        ("_a", "start and end with a letter or digit"),
        ("a___b", "bad separator"),
        ("a._b", "bad separator"),
        ("a b", "contains ' '"),
        ("a:b", "contains ':'"),
        ("a@b", "contains '@'"),
        ("café", "contains 'é'"),
    ],
)
def test_invalid_repository_names_say_why(name: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        validate_repository(name)
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message


def test_repository_too_long_message_names_the_limit() -> None:
    with pytest.raises(InvalidReferenceError, match="256 characters, the limit is 255"):
        validate_repository("a" * 256)


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "1", "_x", "A-b_c.D", "a" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("", "empty"),
        (".hidden", "must not start with '.' or '-'"),
        ("-x", "must not start with '.' or '-'"),
        ("a" * 129, "too long"),
        ("a/b", "contains '/'"),
        ("a:b", "contains ':'"),
        ("a+b", "contains '+'"),
    ],
)
def test_invalid_tags_say_why(tag: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        validate_tag(tag)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "host", ["docker.io", "localhost", "localhost:5000", "a-b.example.com:443", "[::1]:5000"]
)
def test_valid_registries(host: str) -> None:
    assert validate_registry(host) == host


@pytest.mark.parametrize("host", ["", "-a.com", "a_b.com", "host:", "host:0", "host:65536", "host:x", "a..b"])
def test_invalid_registries(host: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid registry"):
        validate_registry(host)


@given(st.text(max_size=300))
def test_validate_repository_on_arbitrary_text_raises_only_invalid_reference(text: str) -> None:
    try:
        result = validate_repository(text)
    except InvalidReferenceError as exc:
        assert str(exc)
        assert "\n" not in str(exc)
        return
    assert result == text
    assert len(text) <= MAX_REPOSITORY_LENGTH
    assert all(REPOSITORY_COMPONENT_RE.fullmatch(part) for part in text.split("/"))


@given(st.text(max_size=200))
def test_validate_tag_on_arbitrary_text_raises_only_invalid_reference(text: str) -> None:
    try:
        assert validate_tag(text) == text
    except InvalidReferenceError:
        return


# --- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "ref"),
    [
        ("ubuntu", None, "ubuntu", None, None, "latest"),
        ("ubuntu:22.04", None, "ubuntu", "22.04", None, "22.04"),
        ("library/ubuntu", None, "library/ubuntu", None, None, "latest"),
        ("docker.io/library/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "22.04"),
        ("localhost/app", "localhost", "app", None, None, "latest"),
        ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", None, "v1"),
        ("registry:5000/app", "registry:5000", "app", None, None, "latest"),
        ("[::1]:5000/app", "[::1]:5000", "app", None, None, "latest"),
        (f"ghcr.io/o/app@{SHA_A}", "ghcr.io", "o/app", None, SHA_A, SHA_A),
        (f"ghcr.io/o/app:v2@{SHA_A}", "ghcr.io", "o/app", "v2", SHA_A, SHA_A),
        # Without a slash there is no registry part: docker reads this as repository:tag.
        ("localhost:5000", None, "localhost", "5000", None, "5000"),
        ("localhost", None, "localhost", None, None, "latest"),
    ],
)
def test_reference_parse(
    text: str, registry: str | None, repository: str, tag: str | None, digest: str | None, ref: str
) -> None:
    reference = Reference.parse(text)
    assert reference.registry == registry
    assert reference.repository == repository
    assert reference.tag == tag
    assert reference.digest == digest
    assert reference.ref == ref
    assert str(reference) == text
    if digest is not None:
        assert type(reference.digest) is Digest


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Ubuntu", "lowercase"),
        ("docker.io/Library/ubuntu", "lowercase"),
        ("ubuntu:", "tag is empty"),
        ("ubuntu:.x", "must not start"),
        ("ubuntu@", "invalid digest"),
        ("ubuntu@sha256:123", "invalid digest"),
        ("localhost:99999/app", "out of range"),
        ("bad_host.com/app", "invalid registry"),
        ("localhost/", "repository name is empty"),
        ("a:b:c", "contains ':'"),
        ("a//b", "empty path component"),
        ("ubuntu latest", "contains ' '"),
    ],
)
def test_reference_parse_refuses_bad_text(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        Reference.parse(text)
    assert reason in str(caught.value)


def test_reference_is_frozen_and_hashable() -> None:
    reference = Reference.parse("docker.io/library/ubuntu:22.04")
    with pytest.raises(ValidationError):
        reference.tag = "other"
    assert {reference: 1}[Reference.parse("docker.io/library/ubuntu:22.04")] == 1
    assert reference.name == "docker.io/library/ubuntu"


def test_reference_fields_are_validated_on_construction() -> None:
    with pytest.raises(ValidationError, match="lowercase"):
        Reference(repository="Bad")
    with pytest.raises(ValidationError, match="invalid tag"):
        Reference(repository="ok", tag="-bad")
    with pytest.raises(ValidationError, match="invalid digest"):
        Reference(repository="ok", digest="sha256:short")  # type: ignore[arg-type]


def test_reference_refuses_what_str_could_not_give_back() -> None:
    # str() would print "myhost/app", which reads as the repository "myhost/app".
    with pytest.raises(ValidationError, match="would read as part of the repository"):
        Reference(registry="myhost", repository="app")
    # str() would print "example.com/app", which reads as registry "example.com".
    with pytest.raises(ValidationError, match="would read as registry"):
        Reference(registry=None, repository="example.com/app")
    assert (
        str(Reference(registry="example.com", repository="example.com/app")) == "example.com/example.com/app"
    )


def test_reference_round_trips_through_json() -> None:
    reference = Reference.parse(f"localhost:5000/a/b:t@{SHA_A}")
    assert Reference.model_validate_json(reference.model_dump_json()) == reference


_components = st.from_regex(REPOSITORY_COMPONENT_RE, fullmatch=True).filter(lambda c: len(c) <= 40)
_repositories = st.lists(_components, min_size=1, max_size=4).map("/".join)
_host_labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_registries = st.one_of(
    st.none(),
    st.sampled_from(["localhost", "[::1]:5000"]),
    st.lists(_host_labels, min_size=2, max_size=4).map(".".join),
    st.tuples(_host_labels, st.integers(1, 65535)).map(lambda pair: f"{pair[0]}:{pair[1]}"),
)
_tags = st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", fullmatch=True)
_digests = st.none() | st.binary(max_size=64).map(Digest.of)


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(_registries, _repositories, _tags, _digests)
def test_valid_references_round_trip_through_parse_and_str(
    registry: str | None, repository: str, tag: str | None, digest: Digest | None
) -> None:
    first = repository.partition("/")[0]
    if registry is None and "/" in repository and ("." in first or first == "localhost"):
        return  # would read as a registry; test_reference_refuses_what_str_could_not_give_back
    reference = Reference(registry=registry, repository=repository, tag=tag, digest=digest)
    parsed = Reference.parse(str(reference))
    assert parsed == reference
    assert str(parsed) == str(reference)
    assert parsed.ref == (digest or tag or "latest")


@given(st.text(max_size=300))
def test_reference_parse_on_arbitrary_text_raises_only_invalid_reference(text: str) -> None:
    try:
        reference = Reference.parse(text)
    except InvalidReferenceError:
        return
    assert str(reference) == text


# --- descriptors ---------------------------------------------------------------------------


def test_descriptor_reads_camel_case_and_ignores_unknown_fields() -> None:
    descriptor = Descriptor.model_validate(
        desc(
            OCI_LAYER_GZIP,
            SHA_A,
            7,
            urls=["https://example.com/x"],
            annotations={"k": "v"},
            artifactType="application/x",
            data="e30=",
            somethingNew=1,
        )
    )
    assert descriptor.media_type == OCI_LAYER_GZIP
    assert type(descriptor.digest) is Digest
    assert descriptor.size == 7
    assert descriptor.urls == ("https://example.com/x",)
    assert descriptor.annotations == {"k": "v"}
    assert descriptor.artifact_type == "application/x"
    dumped = descriptor.model_dump(by_alias=True, exclude_none=True)
    assert dumped["mediaType"] == OCI_LAYER_GZIP
    assert dumped["artifactType"] == "application/x"


def test_descriptor_accepts_python_names_too() -> None:
    descriptor = Descriptor(media_type=OCI_CONFIG, digest=SHA_A, size=1)  # type: ignore[call-arg, arg-type]
    assert descriptor.media_type == OCI_CONFIG


@pytest.mark.parametrize("size", [-1, "12", 1.5, True, None])
def test_descriptor_size_must_be_a_non_negative_integer(size: Any) -> None:
    with pytest.raises(ValidationError):
        Descriptor.model_validate(desc(OCI_CONFIG, SHA_A, size))


def test_descriptor_with_annotations_is_hashable() -> None:
    one = Descriptor.model_validate(desc(OCI_CONFIG, SHA_A, 1, annotations={"a": "b"}))
    two = Descriptor.model_validate(desc(OCI_CONFIG, SHA_A, 1, annotations={"a": "b"}))
    assert one == two
    assert len({one, two}) == 1


# --- manifests -----------------------------------------------------------------------------


def test_max_manifest_bytes_is_four_mebibytes() -> None:
    assert MAX_MANIFEST_BYTES == 4 * 1024 * 1024


def test_parse_oci_image_manifest() -> None:
    raw = encode(oci_image(annotations={"org.opencontainers.image.created": "now"}))
    manifest = parse_manifest(raw)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.raw is raw
    assert manifest.digest == Digest.of(raw)
    assert manifest.size == len(raw)
    assert not manifest.is_index
    assert manifest.config is not None
    assert manifest.config.digest == SHA_A
    assert [layer.digest for layer in manifest.layers] == [SHA_B, SHA_C]
    assert [blob.digest for blob in manifest.blobs] == [SHA_A, SHA_B, SHA_C]
    assert manifest.children == ()
    assert manifest.subject is None


def test_parse_docker_schema2_manifest_with_foreign_layer() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": desc(DOCKER_CONFIG, SHA_A, 1),
        "layers": [
            desc(DOCKER_FOREIGN_LAYER, SHA_B, 2, urls=["https://mcr.microsoft.com/l/b"]),
            desc(DOCKER_LAYER, SHA_C, 3),
        ],
    }
    manifest = parse_manifest(encode(document))
    assert manifest.media_type == DOCKER_MANIFEST_V2
    assert [is_foreign_layer(layer.media_type) for layer in manifest.layers] == [True, False]
    assert manifest.layers[0].urls == ("https://mcr.microsoft.com/l/b",)


def test_parse_oci_index() -> None:
    raw = encode(oci_index())
    manifest = parse_manifest(raw)
    assert manifest.is_index
    assert manifest.media_type == OCI_INDEX
    assert [child.digest for child in manifest.children] == [SHA_A, SHA_B]
    platform = manifest.children[1].platform
    assert platform is not None
    assert (platform.architecture, platform.os, platform.variant, platform.os_version) == (
        "arm64",
        "linux",
        "v8",
        "x",
    )
    assert manifest.config is None
    assert manifest.blobs == ()


def test_parse_docker_manifest_list() -> None:
    manifest = parse_manifest(encode(oci_index(mediaType=DOCKER_MANIFEST_LIST)))
    assert manifest.is_index
    assert manifest.media_type == DOCKER_MANIFEST_LIST
    assert len(manifest.children) == 2


def test_parse_artifact_with_subject() -> None:
    document = oci_image(artifactType="application/vnd.example.sbom", subject=desc(OCI_MANIFEST, SHA_C, 9))
    manifest = parse_manifest(encode(document))
    assert manifest.artifact_type == "application/vnd.example.sbom"
    assert manifest.subject is not None
    assert manifest.subject.digest == SHA_C


def test_raw_bytes_are_kept_exactly() -> None:
    # Odd spacing, key order and unicode escapes: re-serialising would change the digest.
    raw = (
        b'{ "layers" : [],\n\t"config":{"size":1,"digest":"' + SHA_A.encode() + b'","mediaType":"a\\u0062"},'
        b'"schemaVersion":2, "mediaType":"' + OCI_MANIFEST.encode() + b'"}  \n'
    )
    manifest = parse_manifest(raw)
    assert manifest.raw == raw
    assert manifest.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert manifest.config is not None
    assert manifest.config.media_type == "ab"
    assert manifest.layers == ()


def test_media_type_comes_from_the_body_before_the_header() -> None:
    manifest = parse_manifest(encode(oci_image()), content_type=DOCKER_MANIFEST_V2)
    assert manifest.media_type == OCI_MANIFEST


def test_media_type_falls_back_to_content_type_without_parameters() -> None:
    document = oci_image()
    del document["mediaType"]
    manifest = parse_manifest(encode(document), content_type=f"{DOCKER_MANIFEST_V2}; charset=utf-8")
    assert manifest.media_type == DOCKER_MANIFEST_V2


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/json; charset=utf-8"])
def test_media_type_is_inferred_without_a_meaningful_header(content_type: str | None) -> None:
    image = oci_image()
    del image["mediaType"]
    index = oci_index()
    del index["mediaType"]
    assert parse_manifest(encode(image), content_type).media_type == OCI_MANIFEST
    assert parse_manifest(encode(index), content_type).media_type == OCI_INDEX


def test_manifest_kind_that_cannot_be_told_is_refused() -> None:
    with pytest.raises(ContentError, match="cannot tell the manifest kind"):
        parse_manifest(b'{"schemaVersion": 2}')


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        ({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}, None),
        ({"schemaVersion": 1, "name": "x"}, OCI_MANIFEST),
        ({"schemaVersion": 2, "mediaType": DOCKER_SCHEMA1_MANIFEST}, None),
        ({"name": "x", "fsLayers": []}, DOCKER_SCHEMA1_SIGNED_MANIFEST),
    ],
)
def test_schema1_is_refused_with_a_clear_reason(document: dict[str, Any], content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="Docker schema1 manifests are not copied"):
        parse_manifest(encode(document), content_type)


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        ({"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}, None),
        ({"schemaVersion": 2, "mediaType": OCI_CONFIG, "config": {}, "layers": []}, None),
        ({"schemaVersion": 2, "blobs": []}, "application/vnd.example.thing+json"),
    ],
)
def test_unknown_media_types_are_refused(document: dict[str, Any], content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="not one regflow copies"):
        parse_manifest(encode(document), content_type)


def test_oversized_manifest_is_refused_before_parsing() -> None:
    raw = b"{" + b" " * MAX_MANIFEST_BYTES + b"}"
    with pytest.raises(ManifestTooLargeError, match="over the 4194304-byte limit"):
        parse_manifest(raw)


def test_manifest_at_the_size_limit_is_accepted() -> None:
    raw = encode(oci_image())
    raw = raw + b" " * (MAX_MANIFEST_BYTES - len(raw))
    assert len(raw) == MAX_MANIFEST_BYTES
    assert parse_manifest(raw).size == MAX_MANIFEST_BYTES


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (encode(oci_image()).decode().encode("utf-16"), "not valid JSON"),
        (b"[1, 2]", "not a JSON object (got list)"),
        (b'"text"', "not a JSON object (got str)"),
        (b"[" * 100_000, "not valid JSON"),
        (encode({**oci_image(), "mediaType": 5}), "mediaType is not a string"),
        (encode({**oci_image(), "schemaVersion": 3}), "schemaVersion must be 2, got 3"),
        (encode({**oci_image(), "schemaVersion": True}), "schemaVersion must be 2, got True"),
        (encode({k: v for k, v in oci_image().items() if k != "schemaVersion"}), "got None"),
        (encode({**oci_image(), "layers": None}), "invalid manifest: layers"),
        (encode({k: v for k, v in oci_image().items() if k != "config"}), "invalid manifest: config"),
        (
            encode({**oci_image(), "config": desc(OCI_CONFIG, "sha256:zz", 1)}),
            "config.digest: invalid digest",
        ),
        (encode({**oci_image(), "layers": [desc(OCI_LAYER, SHA_A, -5)]}), "layers.0.size"),
        (encode({**oci_index(), "manifests": {}}), "invalid manifest: manifests"),
        (encode({**oci_index(), "layers": []}), "index but also has layers or config"),
        (encode({**oci_image(), "manifests": []}), "image manifest but also has manifests"),
    ],
)
def test_malformed_manifests_raise_content_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ContentError) as caught:
        parse_manifest(raw)
    assert reason in str(caught.value)
    assert len(str(caught.value)) <= 200


def test_error_messages_never_echo_the_body() -> None:
    secret = "x" * 5000
    raw = encode({"schemaVersion": 2, "mediaType": secret})
    with pytest.raises(UnsupportedMediaTypeError) as unsupported:
        parse_manifest(raw)
    assert len(str(unsupported.value)) <= 200
    assert "x" * 200 not in str(unsupported.value)
    raw = encode({**oci_image(), "layers": [{"mediaType": secret, "digest": secret, "size": 1}]})
    with pytest.raises(ContentError) as invalid:
        parse_manifest(raw)
    assert "layers.0.digest" in str(invalid.value)
    assert "x" * 200 not in str(invalid.value)


def test_expected_digest_is_checked() -> None:
    raw = encode(oci_image())
    assert parse_manifest(raw, expected_digest=Digest.of(raw)).digest == Digest.of(raw)
    sha512 = Digest("sha512:" + hashlib.sha512(raw).hexdigest())
    assert parse_manifest(raw, expected_digest=sha512).digest == Digest.of(raw)
    with pytest.raises(DigestMismatchError, match="manifest digest mismatch"):
        parse_manifest(raw, expected_digest=Digest(SHA_A))


def test_manifest_is_frozen_and_hides_raw_from_repr() -> None:
    manifest = parse_manifest(encode(oci_image()))
    with pytest.raises(ValidationError):
        manifest.media_type = OCI_INDEX
    assert "raw" not in repr(manifest)
    assert hash(manifest) == hash(parse_manifest(encode(oci_image())))


def test_manifest_refuses_a_digest_that_is_not_of_raw() -> None:
    with pytest.raises(ValidationError, match="not the sha256 of raw"):
        Manifest(raw=b"{}", media_type=OCI_MANIFEST, digest=Digest(SHA_A))
    manifest = Manifest(raw=b"{}", media_type=OCI_MANIFEST, digest=Digest.of(b"{}"))
    assert manifest.blobs == ()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_descriptor_like = st.builds(
    desc,
    st.sampled_from([OCI_LAYER, OCI_MANIFEST, DOCKER_FOREIGN_LAYER]) | st.text(max_size=5),
    st.sampled_from([SHA_A, "sha256:x", "md5:" + "a" * 32]),
    st.integers(-2, 2) | st.sampled_from(["1", 1.5, None]),
)
_field_values = st.one_of(
    _json,
    _descriptor_like,
    st.lists(_descriptor_like, max_size=3),
    st.sampled_from([1, 2, *MANIFEST_ACCEPT, DOCKER_SCHEMA1_MANIFEST]),
)
_manifest_keys = st.sampled_from(
    ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "artifactType"]
)


@st.composite
def _manifest_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest with some fields removed or replaced: reaches the deep checks."""
    document = dict(
        draw(st.sampled_from([oci_image(), oci_index(), oci_index(mediaType=DOCKER_MANIFEST_LIST)]))
    )
    for key in draw(st.lists(_manifest_keys, max_size=3)):
        document.pop(key, None)
    document.update(draw(st.dictionaries(_manifest_keys, _field_values, max_size=3)))
    return document


@given(st.binary(max_size=2048), st.none() | st.sampled_from(["application/json", *MANIFEST_ACCEPT]))
def test_parse_manifest_on_arbitrary_bytes_raises_only_content_errors(
    raw: bytes, content_type: str | None
) -> None:
    try:
        manifest = parse_manifest(raw, content_type)
    except ContentError as exc:
        assert len(str(exc)) <= 200
        return
    assert manifest.raw == raw


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_manifest_like(), st.none() | st.sampled_from(["text/plain", *MANIFEST_ACCEPT]))
def test_parse_manifest_on_manifest_like_json_raises_only_content_errors(
    document: dict[str, Any], content_type: str | None
) -> None:
    raw = encode(document)
    try:
        manifest = parse_manifest(raw, content_type)
    except ContentError as exc:
        assert len(str(exc)) <= 200
        return
    # Whatever parsed is consistent with the bytes and one of the kinds we copy.
    assert manifest.raw == raw
    assert manifest.digest == Digest.of(raw)
    assert manifest.media_type in MANIFEST_ACCEPT
    assert manifest.is_index == ("manifests" in document)
    if manifest.is_index:
        assert manifest.config is None
        assert manifest.layers == ()
    else:
        assert manifest.config is not None
        assert manifest.blobs[0] == manifest.config
