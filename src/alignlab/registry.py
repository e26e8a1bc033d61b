"""One place per extension point: a named registry of probe fitters, RL arms, pretraining objectives, organisms,
auditors or studies. Each module that owns an extension point holds one `Registry`; a new probe type, arm, ...
is one `@REGISTRY.register("name")` (see docs/extending.md), and every config check, CLI choice and study loop
reads the registry, so nothing else has to change."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from alignlab import AlignlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> extensions of one kind, in registration order. Iterating gives the names; `REG[name]` the
    extension, or a one-line error that lists the known names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None, *, replace: bool = False):
        """`REG.register("name", item)`, or `@REG.register("name")` above a function or class. A name already
        taken is refused unless `replace` (so two extensions never shadow each other by accident)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise AlignlabError(f"{self.kind} name {name!r} must be a non-empty string without outer spaces")

        def add(obj: T) -> T:
            if name in self._items and not replace:
                raise AlignlabError(f"{self.kind} {name!r} is already registered (pass replace=True to swap it)")
            self._items[name] = obj
            return obj

        return add if item is None else add(item)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise AlignlabError(f"unknown {self.kind} {name!r}: choose from {', '.join(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def names(self, keep: Callable[[T], bool] | None = None) -> tuple[str, ...]:
        return tuple(n for n, item in self._items.items() if keep is None or keep(item))

    def check(self, names: Iterable[str], where: str) -> None:
        """A one-line error naming `where` (a config field) if any of `names` is not registered."""
        unknown = sorted(set(names) - set(self._items))
        if unknown:
            raise AlignlabError(f"{where} has unknown {self.kind}s {unknown}; choose from {list(self._items)}")
