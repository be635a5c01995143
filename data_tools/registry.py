"""One registry class for every named thing: model families, schedules, samplers, loss weightings, GAN sizes.

    DENOISERS = Registry("diffusion model")

    @DENOISERS.register("dit-digits")
    def dit_digits(**overrides): ...

    DENOISERS.register("unet-mnist", make_unet)     # or without the decorator
    DENOISERS.list()                                 # sorted names
    DENOISERS.get("dit-digit")                       # RegistryError: unknown diffusion model 'dit-digit'
                                                     #   (did you mean 'dit-digits'?); registered: ...
    DENOISERS.create("dit-digits", depth=2)          # get(name)(*args, **kwargs)

An entry is any object; `create` calls it. Names are unique: registering a taken name fails unless
`replace=True`, so two packages cannot silently shadow each other.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar, overload

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown or duplicate name. A KeyError for lookups, a ValueError for validation code."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # what an entry is, for error messages: "diffusion model", "sampler", ...
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, entry: Any = None, *, replace: bool = False) -> Any:
        """`register(name, entry)` adds it; `@register(name)` decorates a function or class."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not obj:
                raise RegistryError(f"{self.kind} {name!r} is already registered; pass replace=True to swap it")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        self.get(name)
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def list(self) -> list[str]:
        return sorted(self._entries)

    def unknown(self, name: Any) -> RegistryError:
        """The error for a name that is not registered, with the closest names as a hint."""
        close = difflib.get_close_matches(str(name), self._entries, n=1) if isinstance(name, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return RegistryError(f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(self.list()) or 'none'}")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.list()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
