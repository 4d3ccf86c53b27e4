"""The YAML config file: registries and policies, in Harbor's field names, checked in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from adapters.errors import ConfigError
from policies.models import Config, parse_config

PEM_MARK = "-----BEGIN"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last value silently, so a second ``access_secret`` or ``name`` left in a
    file would win without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                mark = key_node.start_mark
                raise ConfigError(
                    f"line {mark.line + 1}, column {mark.column + 1}: the key {key!r} appears twice "
                    "in the same mapping"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config_file(path: str | Path) -> Config:
    """Read, parse and validate a config file; every problem is a ConfigError saying where."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Only the position and the parser's own words: the excerpt YAML would quote may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{path}: {where}invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({type(exc).__name__})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    if not isinstance(data, dict):
        found = "nothing" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"{path}: the file must be a mapping with version, registries and policies, not {found}"
        )
    try:
        config = parse_config(data)
    except ConfigError as exc:
        problem = ConfigError(f"{path}: {exc.message}")
        problem.field = exc.field
        raise problem from None
    _anchor_ca_paths(config, path.parent)
    return config


def _anchor_ca_paths(config: Config, base: Path) -> None:
    """Make relative ``ca_certificate`` paths relative to the file, not to wherever regflow runs.

    The store keeps the path and reads it when a registry is used, often from another directory.
    """
    for i, registry in enumerate(config.registries):
        value = registry.ca_certificate
        if value is None or PEM_MARK in value:
            continue
        field = f"registries[{i}].ca_certificate"
        try:
            ca_path = Path(value).expanduser()
            if not ca_path.is_absolute():
                ca_path = (base / ca_path).resolve()
            is_file = ca_path.is_file()
        except RuntimeError:  # expanduser: a ~user the system does not know
            raise ConfigError(f"{_excerpt(value)}: no such user's home directory", field=field) from None
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a loop of links
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"{_excerpt(value)} is not a usable path: {reason}", field=field) from None
        if not is_file:
            raise ConfigError(f"{_excerpt(str(ca_path))} is not a file", field=field)
        registry.ca_certificate = str(ca_path)


def _excerpt(text: str, limit: int = 120) -> str:
    """A path as a message may show it: one line, and not a page long."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown) if not shown.isprintable() else shown
