"""``regflow copy SRC DST``: one image, ad hoc, in skopeo's transport syntax (tasks/transports.py),
through the same engine as every policy (tasks/copy_image.py). No Prefect, no policy.

Exit codes as every command: 0 copied (or already identical), 1 the copy failed, 2 bad input
(nothing was written).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from adapters.errors import ConfigError
from regflow_cli.common import EXIT_FAILED, EXIT_OK, fail, out, run_or_fail, user_errors
from regflow_cli.common import store as _store

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _switch(value: str, name: str) -> bool:
    """skopeo's ``--src-tls-verify=false``: a Go boolean flag with its value after '='."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    fail(f"{name} takes true or false, not {value!r}")


def copy_command(
    source: Annotated[str, typer.Argument(metavar="SRC", help="docker://HOST/REPO[:TAG|@DIGEST], "
                                          "oci:DIR[:TAG] or oci-archive:FILE[:TAG]")],
    destination: Annotated[str, typer.Argument(metavar="DST", help="the same forms as SRC")],
    all_platforms: Annotated[bool, typer.Option(
        "--all-platforms", help="copy a whole index (every platform), byte for byte")] = False,
    platform: Annotated[str | None, typer.Option(
        "--platform", help="copy the image of this OS/ARCH[/VARIANT] from an index "
        "(default: this machine's, as skopeo)")] = None,
    src_tls_verify: Annotated[str, typer.Option(
        "--src-tls-verify", is_flag=False, flag_value="true", metavar="BOOL",
        help="verify the source registry's TLS certificate; false also tries plain HTTP")] = "true",
    dest_tls_verify: Annotated[str, typer.Option(
        "--dest-tls-verify", is_flag=False, flag_value="true", metavar="BOOL",
        help="verify the destination registry's TLS certificate; false also tries plain HTTP")] = "true",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Copy one image between registries and OCI layouts or archives, as skopeo copy does,
    verified and byte-exact. Credentials for a docker:// host come from the registry of the
    store on that host, if any; otherwise the copy is anonymous."""
    from tasks.copy_image import CopyRequest, PlatformChoice, copy_image
    from tasks.transports import parse_location

    with user_errors():
        request = CopyRequest(
            source=parse_location(source), destination=parse_location(destination),
            all_platforms=all_platforms,
            platform=PlatformChoice.parse(platform) if platform is not None else None,
            src_tls_verify=_switch(src_tls_verify, "--src-tls-verify"),
            dest_tls_verify=_switch(dest_tls_verify, "--dest-tls-verify"))
        if request.all_platforms and request.platform is not None:
            raise ConfigError("--all-platforms and --platform exclude each other")
        store = _store()

    async def run() -> Any:
        try:
            return await copy_image(request, store)
        finally:
            store.close()

    result = run_or_fail(run(), f"copy {source} -> {destination} failed")
    if as_json:
        print(json.dumps(result.model_dump(mode="json")))
    else:
        _print(result)
    raise typer.Exit(EXIT_OK if result.status in ("copied", "skipped") else EXIT_FAILED)


def _print(result: Any) -> None:
    picked = f" ({result.platform})" if result.platform else ""
    if result.status == "copied":
        out.print(f"[green]copied[/green] {result.source} -> {result.destination}: {result.digest}{picked}, "
                  f"{result.bytes} bytes of blobs sent", highlight=False)
    elif result.status == "skipped":
        out.print(f"[green]up to date[/green] {result.destination}: {result.digest}{picked} "
                  f"({result.reason})", highlight=False)
    else:
        out.print(f"[red]{result.status}[/red] {result.source} -> {result.destination}: {result.reason}",
                  highlight=False)
