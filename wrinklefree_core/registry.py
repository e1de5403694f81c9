"""A table of named entries that the files of one package fill, each registering its entries at import.

The stage, objective and architecture registries are each one of these: a new entry is a new file
in that package, found by importing every module of the package once (`entries()`), so no list of
files is kept by hand. The modules that define the registry itself are `skip`ped.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, filled by the modules of `package` (module docstring)."""

    def __init__(self, package: str, kind: str, skip: tuple[str, ...] = ()) -> None:
        self.package, self.kind, self.skip = package, kind, skip
        self._entries: dict[str, T] = {}
        self._discovered = False

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a different entry under a taken name is a ValueError."""
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Drop `name` (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def entries(self) -> dict[str, T]:
        """The table itself (not a copy), after importing each module of the package once."""
        if not self._discovered:
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if info.name not in self.skip:
                    importlib.import_module(f"{self.package}.{info.name}")
            self._discovered = True
        return self._entries
