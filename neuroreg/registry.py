"""Named entries at an extension point (like timm's ``register_model``).

A target, an attack or an evaluation suite is one module plus one registration; the
config validation, the sweep's metric check, gather and the report read the entries'
declarations instead of keeping lists of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from neuroreg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order (the order suites run in)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str, field: str) -> T:
        """The entry ``name``; a ConfigError naming ``field`` and the choices when unknown."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(field, f"unknown {self.kind} {name!r}; choose one of {self.names()}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
