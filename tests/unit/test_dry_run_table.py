"""The tag column of ``regflow replicate --dry-run`` (regflow_cli/main.py): digests and
fallback-schema tags shortened, untagged manifests and referrers marked."""

from __future__ import annotations

from adapters.oci import Digest
from regflow_cli.main import _short, _tag_cell

IMAGE, SBOM = Digest.of(b"image"), Digest.of(b"sbom")


def test_a_digest_and_a_fallback_schema_tag_are_shortened_and_any_other_tag_is_whole() -> None:
    assert _short(str(IMAGE)) == f"sha256:{IMAGE.hex[:12]}…"
    assert _short(f"sha256-{IMAGE.hex}.att") == f"sha256-{IMAGE.hex[:12]}….att"
    assert _short(f"sha256-{IMAGE.hex}") == f"sha256-{IMAGE.hex[:12]}…"
    long_tag = "sha256-" + "0" * 10  # shaped like one, but names no digest: a tag like any other
    assert _short(long_tag) == long_tag
    assert _short("1.0") == "1.0"


def test_untagged_manifests_and_referrers_say_what_they_are() -> None:
    known = {IMAGE: "1.0"}
    assert _tag_cell("1.0", None, known) == "1.0"
    assert _tag_cell(str(IMAGE), None, known) == f"sha256:{IMAGE.hex[:12]}… [dim](untagged)[/dim]"
    # A referrer names its subject by tag where the run has one, else by short digest (an SBOM's
    # signature: its subject is a digest-only referrer).
    assert _tag_cell(f"sha256-{IMAGE.hex}.sig", IMAGE, known) == \
        f"sha256-{IMAGE.hex[:12]}….sig [dim](referrer of 1.0)[/dim]"
    assert _tag_cell(f"sha256-{SBOM.hex}.sig", SBOM, known) == \
        f"sha256-{SBOM.hex[:12]}….sig [dim](referrer of sha256:{SBOM.hex[:12]}…)[/dim]"
    assert _tag_cell(str(SBOM), IMAGE, known) == f"sha256:{SBOM.hex[:12]}… [dim](referrer of 1.0)[/dim]"
