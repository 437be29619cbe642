"""One registry per extension point (teacher file formats, dataset readers, TFLite modes, stages): adding a
kind of thing is one new module in the registry's package, found without an edit anywhere else.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Iterator


class UnknownNameError(KeyError):
    """A name no module of the registry registered; the message lists the names that exist."""

    def __str__(self):  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


class Registry:
    """name -> registered object, in registration order.

    `package` (dotted) is where the built-in entries live, one module each: every module in it is imported on
    the first lookup, so a new file there registers itself (Model Garden's `register_task_cls`, RADIO's
    `adaptor_registry`, without their `import registry_imports`). Code outside the package (a user's plug-in,
    a test) registers with the same decorator after importing its module.
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._items: dict[str, object] = {}
        self._loaded = package is None

    def register(self, name: str, obj=None):
        """`@registry.register("name")` on a class or function, or `registry.register("name", obj)`."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")

        def add(o):
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {_where(self._items[name])} "
                                 f"and by {_where(o)}")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def register_instance(self, name: str):
        """Class decorator: registers one instance of the class under `name`, with its `name` attribute set
        (the extension points whose entries are objects with behaviour: teacher formats, TFLite modes)."""

        def add(cls):
            obj = cls()
            obj.name = name
            self.register(name, obj)
            return cls

        return add

    def ordered(self, key: str = "order") -> list:
        """Every entry, sorted by its `key` attribute (then by name)."""
        return [o for _, o in sorted(self.items(), key=lambda item: (getattr(item[1], key), item[0]))]

    def unregister(self, name: str):
        self._items.pop(name, None)

    def _load(self):
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not m.name.startswith("_"):
                importlib.import_module(f"{self.package}.{m.name}")

    def get(self, name: str):
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; expected one of: "
                                   f"{', '.join(self.names()) or '(none registered)'}") from None

    def names(self) -> tuple[str, ...]:
        """In name order: registration order depends on which module happened to be imported first."""
        self._load()
        return tuple(sorted(self._items))

    def items(self) -> list[tuple[str, object]]:
        self._load()
        return [(n, self._items[n]) for n in self.names()]

    def __contains__(self, name) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _where(o) -> str:
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', type(o).__name__)}"


__all__ = ["Registry", "UnknownNameError"]
