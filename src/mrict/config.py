"""Typed configs: dataclass defaults, then a named preset, then a YAML file, then CLI overrides.

Every stage defines its own dataclass config and preset table; this module resolves them the
same way everywhere and writes the resolved config next to a run's outputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, name: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name, source)
            except MrictError:
                continue
        raise MrictError(f"option {name!r}: {value!r} is not a valid {annotation}", source)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MrictError(f"option {name!r}: expected a list, got {value!r}", source)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, name, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        if value not in args:
            raise MrictError(f"option {name!r}: {value!r} is not one of {list(args)}", source)
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        }:
            return value.lower() in {"true", "1", "yes", "on"}
        raise MrictError(f"option {name!r}: expected true/false, got {value!r}", source)
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError) as exc:
            raise MrictError(
                f"option {name!r}: expected {annotation.__name__}, got {value!r}", source
            ) from exc
    return value


def resolve_config(
    cls: type[T],
    presets: dict[str, dict[str, Any]] | None = None,
    preset: str | None = None,
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults <- preset <- YAML file <- overrides (later wins).

    Unknown keys and badly typed values raise :class:`MrictError` naming the source.
    ``overrides`` with value ``None`` are ignored (unset CLI options).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}

    def apply(update: dict[str, Any], source: str) -> None:
        for key, value in update.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise MrictError(
                    f"unknown option {key!r} (known: {', '.join(sorted(fields))})", source
                )
            values[key] = _coerce(value, hints[key], key, source)

    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise MrictError(f"unknown preset {preset!r} (choose from {', '.join(presets)})")
        apply(presets[preset], f"preset {preset}")
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text("utf-8")) or {}
        except FileNotFoundError as exc:
            raise MrictError("config file not found", path) from exc
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise MrictError(
                f"config file is not valid YAML ({exc.__class__.__name__})", path
            ) from exc
        if not isinstance(loaded, dict):
            raise MrictError("config file must hold a mapping of option: value", path)
        apply(loaded, str(path))
    apply({k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON/YAML dict of a dataclass config (tuples become lists)."""
    return {k: config_to_dict_value(v) for k, v in dataclasses.asdict(config).items()}


def check_resumable(
    saved: dict[str, Any], config: Any, allowed: frozenset[str], path: str | Path
) -> None:
    """Refuse to resume a run whose checkpointed config ``saved`` (a :func:`config_to_dict`
    dict) differs from ``config`` in any field outside ``allowed`` (one-line
    :class:`MrictError` naming the fields). A field missing from ``saved`` (a checkpoint
    written before the field existed) counts as its default."""
    if not isinstance(saved, dict):
        raise MrictError("checkpoint holds no readable config; start a new run", path)
    now = config_to_dict(config)
    changed = []
    for f in dataclasses.fields(config):
        if f.name in allowed:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if saved.get(f.name, config_to_dict_value(default)) != now[f.name]:
            changed.append(f.name)
    if changed:
        raise MrictError(
            f"cannot resume with a different {', '.join(changed)} (only "
            f"{', '.join(sorted(allowed))} may change)",
            path,
        )


def config_to_dict_value(value: Any) -> Any:
    """One config value as :func:`config_to_dict` stores it (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [config_to_dict_value(x) for x in value]
    if isinstance(value, Path):
        return str(value)
    return value


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
