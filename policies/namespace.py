"""Where a source repository lands on the target: Harbor's ``replaceNamespace`` and path rules."""

from __future__ import annotations

from adapters.errors import ConfigError, InvalidReferenceError


def replace_namespace(repository: str, namespace: str, replace_count: int) -> str:
    """The target path of ``repository`` under ``namespace``, Harbor's semantics.

    For ``a/b/c/img`` and namespace ``n``: -1 gives ``n/img``, 0 ``n/a/b/c/img``, k drops the
    first k components then prefixes ``n`` (1: ``n/b/c/img``, 3: ``n/img``). More components
    than precede the image name is an error. With an empty namespace the source path is kept,
    minus k components when k >= 0 (Harbor ignores k there; dropping them lets a policy strip a
    prefix without adding one).
    """
    components = repository.split("/")
    if "" in components:
        raise InvalidReferenceError(
            f"repository {repository!r} has an empty path component", field="repository"
        )
    *parents, name = components
    namespace = namespace.strip("/")
    # Harbor treats every negative count as the legacy "flatten" (-1).
    if replace_count < 0:
        return f"{namespace}/{name}" if namespace else repository
    if replace_count > len(parents):
        raise ConfigError(
            f"the source repository {repository!r} has only {len(parents)} path component(s) "
            f"before the image name {parents}, so {replace_count} cannot be dropped",
            field="dest_namespace_replace_count",
        )
    return "/".join([*([namespace] if namespace else []), *parents[replace_count:], name])


def _rule_text(min_components: int | None, max_components: int | None) -> str:
    if min_components == max_components:
        return f"exactly {min_components}"
    if max_components is None:
        return f"at least {min_components}"
    if min_components is None:
        return f"at most {max_components}"
    return f"between {min_components} and {max_components}"


def check_path_rule(path: str, min_components: int | None, max_components: int | None) -> None:
    """Raise ConfigError unless ``path`` has an allowed number of '/'-separated components.

    The rules come from the target adapter (Docker Hub: exactly 2; Harbor: at least 2); None on
    a side means no bound there.
    """
    if min_components is not None and max_components is not None and min_components > max_components:
        raise ValueError(f"path rule minimum {min_components} exceeds maximum {max_components}")
    count = len(path.split("/"))
    too_few = min_components is not None and count < min_components
    too_many = max_components is not None and count > max_components
    if too_few or too_many:
        raise ConfigError(
            f"the destination repository {path!r} has {count} path component(s), but the "
            f"destination registry takes {_rule_text(min_components, max_components)}; "
            "change dest_namespace or dest_namespace_replace_count",
            field="dest_namespace",
        )
