"""Typed configs: dataclass defaults, then a named preset, then a YAML file, then CLI overrides.

Every stage defines its own dataclass config and preset table; this module resolves them the
same way everywhere and writes the resolved config next to a run's outputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text

T = TypeVar("T")

#: config fields that every trainer lets differ on ``--resume`` (where and how often it
#: checkpoints, how it meets a non-finite loss); each trainer's RESUMABLE_CHANGES adds its own
RESUMABLE_RUNTIME = frozenset({"checkpoint_every", "nonfinite", "device"})

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_BOOL_WORDS = _TRUE | _FALSE
#: values that are never a single bool/int/float/str (YAML lists and mappings, empty values)
_NOT_SCALAR = (list, tuple, dict, set, type(None))


def _coerce_union(value: Any, annotation: Any, name: str, source: str) -> Any:
    """``X | Y | None``: None if allowed, else the first member type that accepts ``value``."""
    args = typing.get_args(annotation)
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


def _coerce_sequence(value: Any, annotation: Any, name: str, source: str) -> Any:
    """``list[X]``, ``tuple[X, ...]`` or ``tuple[X, Y]`` from a list or a comma-separated
    string; a fixed-length tuple needs exactly that many values."""
    origin = typing.get_origin(annotation) or annotation
    args = typing.get_args(annotation)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise MrictError(f"option {name!r}: expected a list, got {value!r}", source)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise MrictError(
                f"option {name!r}: expected {len(args)} values, got {list(value)!r}", source
            )
        inner = args
    else:
        inner = (args[0] if args else Any,) * len(value)
    items = [_coerce(v, a, name, source) for v, a in zip(value, inner, strict=True)]
    return tuple(items) if origin is tuple else items


def _coerce_literal(value: Any, annotation: Any, name: str, source: str) -> Any:
    args = typing.get_args(annotation)
    if value not in args:
        raise MrictError(f"option {name!r}: {value!r} is not one of {list(args)}", source)
    return value


def _coerce_bool(value: Any, annotation: Any, name: str, source: str) -> bool:
    """A bool, or one of the strings true/1/yes/on, false/0/no/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return value.lower() in _TRUE
    raise MrictError(f"option {name!r}: expected true/false, got {value!r}", source)


def _coerce_scalar(value: Any, annotation: Any, name: str, source: str) -> Any:
    """int, float or str through the type itself; never from a bool, a list, a mapping or an
    empty value, and an int never from a float with a fraction."""
    try:
        if isinstance(value, (bool, *_NOT_SCALAR)):
            raise TypeError
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return annotation(value)
    except (TypeError, ValueError) as exc:
        raise MrictError(
            f"option {name!r}: expected {annotation.__name__}, got {value!r}", source
        ) from exc


#: how a value is checked and converted, by the declared type (its origin for generics)
_COERCERS: dict[Any, Callable[[Any, Any, str, str], Any]] = {
    typing.Union: _coerce_union,
    types.UnionType: _coerce_union,
    list: _coerce_sequence,
    tuple: _coerce_sequence,
    typing.Literal: _coerce_literal,
    bool: _coerce_bool,
    int: _coerce_scalar,
    float: _coerce_scalar,
    str: _coerce_scalar,
}


def _coerce(value: Any, annotation: Any, name: str, source: str) -> Any:
    """``value`` as the declared type ``annotation`` of option ``name``; a one-line
    :class:`MrictError` naming ``name`` and ``source`` when it is not one."""
    if annotation is Any:
        return value
    coerce = _COERCERS.get(typing.get_origin(annotation) or annotation)
    if coerce is None:  # a programming error: every config field's type must be checked
        raise TypeError(f"option {name!r}: no check for its declared type {annotation!r}")
    return coerce(value, annotation, name, source)


def coerce_options(cls: type, update: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """``update`` (option: value; ``-`` in a name reads as ``_``) with every value checked
    and converted to its declared type in the dataclass ``cls``. An unknown option or a
    badly typed value raises a one-line :class:`MrictError` naming the option and ``source``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in update.items():
        key = str(key).replace("-", "_")
        if key not in fields:
            raise MrictError(f"unknown option {key!r} (known: {', '.join(sorted(fields))})", source)
        values[key] = _coerce(value, hints[key], key, str(source))
    return values


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
    values: dict[str, Any] = {}
    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise MrictError(f"unknown preset {preset!r} (choose from {', '.join(presets)})")
        values.update(coerce_options(cls, presets[preset], f"preset {preset}"))
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
        values.update(coerce_options(cls, loaded, path))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(coerce_options(cls, given, "command line"))
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
