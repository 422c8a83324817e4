"""YAML for configuration files: safe (no Python tags) and strict (duplicate keys refused).

PyYAML's safe_load keeps the last of two equal keys without a word, so a file that sets
``alpha`` twice silently loses one; configuration files are read here instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from neuroreg.errors import ConfigError
from neuroreg.safe_io import check_regular, read_bytes

MAX_FILE_BYTES = 1 << 20
"""Largest configuration file read (1 MiB; the shipped ones are under 5 KiB)."""
MAX_ALIASES = 64
"""Most YAML aliases (*ref) one file may use: a few for reuse, never a 'billion laughs' bomb."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings (the shipped files nest 4 deep); deeper is refused
before Python's recursion limit could turn it into a traceback."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping in the file sets the same key twice."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*ref): refused as an expansion bomb",
                    self.peek_event().start_mark)
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"lists and mappings nest more than {MAX_DEPTH} deep", self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} appears twice (first at line {seen[key].line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def load_strict(text: str) -> Any:
    """Parse YAML text like ``yaml.safe_load``, refusing duplicate keys (a yaml.YAMLError)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value_text(text: str, field: str) -> Any:
    """One value given on a command line (``--set key=VALUE``, ``--where key=VALUE``), parsed as
    strict safe YAML; a ConfigError naming ``field`` when it does not parse."""
    try:
        return load_strict(text)
    except yaml.YAMLError as e:
        raise ConfigError(field, f"{text[:60]!r} is not a valid YAML value: {describe_error(e)} "
                                 "(quote text, e.g. key='[1'; close lists and mappings)") from None
    except RecursionError:
        raise ConfigError(field, f"the value nests more than {MAX_DEPTH} deep") from None


def describe_error(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where (line, column), without PyYAML's multi-line dump."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def read_yaml_file(path: str | Path, field: str, what: str) -> Any:
    """A YAML configuration file, parsed strictly; every way it can be wrong is a ConfigError
    naming ``field`` (the flag or key that named the file) and the fix, never a traceback.

    ``what`` names what the file should be ("run config YAML", "sweep file").
    """
    p = Path(path)
    check_regular(p, field, what)  # missing, a folder, a broken link, a FIFO or device: named as such
    data = read_bytes(p, field, MAX_FILE_BYTES, what)
    return parse_yaml_bytes(data, str(p), field, what)


def parse_yaml_bytes(data: bytes, source: str, field: str, what: str) -> Any:
    """The checks of ``read_yaml_file`` for bytes read elsewhere (a bucket); ``source`` names them."""
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(field, f"{source} is {len(data) / 2**20:.1f} MiB; a {what} is a small text file "
                                 f"(at most {MAX_FILE_BYTES >> 20} MiB)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(field, f"{source} is not UTF-8 text; give a {what}") from None
    try:
        return load_strict(text)
    except yaml.YAMLError as e:
        raise ConfigError(field, f"{source} is not a valid {what}: {describe_error(e)}") from None

