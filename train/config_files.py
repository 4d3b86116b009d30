"""Config files: TOML in, dotted ``--set`` overrides, TOML out.

:func:`load_config` reads a file, applies ``section.key=value`` overrides in
order and validates the result (:func:`train.config.config_from_dict`);
:func:`dump_toml` writes a resolved :class:`~train.config.Config` back as the
``config.toml`` stored beside every run.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from train.config import Config, ConfigError, config_from_dict, config_to_dict

__all__ = ["dump_toml", "load_config", "parse_override"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a", "b", "c"], parsed value)``.

    The value is parsed as TOML (``3``, ``2e-4``, ``true``, ``[48, 48, 48]``,
    ``"x"``); anything that is not valid TOML is kept as a plain string.
    """
    key, sep, raw = text.partition("=")
    path = [p.strip() for p in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def _apply(table: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = table
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config, apply dotted overrides, check types and values.

    Parameters
    ----------
    path : Path or str
        TOML file.
    overrides : list of str
        ``"section.key=value"`` strings applied in order (later ones win).

    Raises
    ------
    ConfigError
        Missing or unreadable file, unknown keys (named with their section),
        wrong types, out-of-range values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    for text in overrides:
        keys, value = parse_override(text)
        _apply(table, keys, value, text)
    try:
        return config_from_dict(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} {v!r} to TOML")


def _toml_lines(table: dict[str, Any], prefix: str) -> list[str]:
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            sub = _toml_lines(v, f"{name}.")
            if any(not isinstance(x, dict) for x in v.values()):
                lines += ["", f"[{name}]"]
            lines += sub
    return lines


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML text that :func:`load_config` reads back to an equal config."""
    return "\n".join(_toml_lines(config_to_dict(cfg), "")) + "\n"
