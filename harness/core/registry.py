"""A registry per named kind (trainers, built-in data, embedded models, metrics, golden-set tasks,
storages, samplers, pruners), each lookup with did-you-mean."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.core.errors import HarnessError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = item
            return item
        return add

    def get(self, name: str, *, file: str | None = None, key: str | None = None) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise HarnessError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)} "
                               f"(known: {known})", file=file, key=key) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
