"""Typed building of dataclasses from plain mappings, and dotted ``key=value`` overrides.

The one typed builder (``build_dataclass``) of the run config and the sweep file's
sections, and the ``--set`` parser: values are YAML scalars, lists or mappings read with
the strict safe loader of ``neuroreg.yamlio`` (no Python tags, nesting bounded), and any
YAML error is a ConfigError naming ``--set``, never a traceback.
"""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from neuroreg.errors import ConfigError
from neuroreg.yamlio import parse_value_text

MAX_OVERRIDE_CHARS = 1 << 16
"""Longest ``--set`` value (64 KiB)."""


def build_dataclass(cls: type, d: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types (the one
    typed builder: the run config and the sweep file's sections both go through it)."""
    where = prefix or "config"
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(where, f"must be a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in d:
        if key not in known:
            raise ConfigError(
                f"{prefix}.{key}" if prefix else str(key),
                f"unknown field; known fields of {where}: {sorted(known)}",
            )
    kwargs = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = get_origin(tp)
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(name, f"wrong type {type(value).__name__} ({value!r}); expected {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(name, f"must be one of {get_args(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be a list, got {type(value).__name__}")
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(inner, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a mapping, got {type(value).__name__}")
        return dict(value)
    if is_dataclass(tp):
        return build_dataclass(tp, value, name)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > 2**1023:
                raise ConfigError(name, f"a {len(str(abs(value)))}-digit number is beyond the range of a float; give a smaller one")
            return float(value)
        raise ConfigError(name, f"must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, f"must be a string, got {value!r}")
    return value


def parse_value(text: str, field: str = "--set") -> Any:
    """A ``--set`` value, parsed as YAML (numbers, booleans, lists, null); a ConfigError naming
    ``field`` when it does not parse, holds a Python tag or nests too deep."""
    if len(text) > MAX_OVERRIDE_CHARS:
        raise ConfigError(field, f"the value is {len(text)} characters long; at most {MAX_OVERRIDE_CHARS}")
    return parse_value_text(text, field) if text != "" else ""


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (a copy is returned)."""
    out = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", f"{item!r} is not key=value (e.g. regularizer.alpha=4)")
        key, text = item.split("=", 1)
        set_dotted(out, key.strip(), parse_value(text, f"--set {key.strip()}"))
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(key, f"{p} is not a section")
        node = nxt
    node[parts[-1]] = value


def config_with(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with dotted ``params`` set: a trial's config from
    its sweep's base and its parameters (the trainable, --dry-run and gather all use it)."""
    out = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(out, key, value)
    return out
