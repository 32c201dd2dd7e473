"""A registry: the one list of the names of one kind of part.

Each kind of part (a value code, an upload code, an aggregator, a client task, a model,
a mask source) has one :class:`Registry`; a part registers itself where it is defined,
and everything else (the spec's validation, the round loop, the engines) looks it up by
name. Nothing keeps a second list of the names. (open_lth's ``pruning/registry.py`` and
``models/registry.py`` have the same shape: a dict from name to implementation and a
``get``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedticket.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of part, each bound to its implementation.

    ``kind`` names the setting the names are chosen by (``"federate.values"``), for the
    message a wrong name gets.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, T] = {}

    def add(self, name: str, part: T) -> T:
        """Register ``part`` as ``name``; a name is registered once."""
        if name in self._parts:
            raise ValueError(f"{self.kind}: {name!r} is registered already")
        self._parts[name] = part
        return part

    def remove(self, name: str) -> T:
        """Take ``name`` out again (a test's own part, say) and return its part."""
        return self._parts.pop(name)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda part: self.add(name, part)

    def __getitem__(self, name: str) -> T:
        try:
            return self._parts[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: "
                              f"{', '.join(self._parts)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def names(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def check(self, name: str) -> None:
        """Raise the one-line :class:`ConfigError` if ``name`` is not registered."""
        self[name]
