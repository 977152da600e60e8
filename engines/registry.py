"""The one registry mechanism every engine kind uses: name -> class, filled by a class decorator."""

from __future__ import annotations

from collections.abc import Callable


def registrar(table: dict[str, type]) -> Callable[[str], Callable[[type], type]]:
    """A ``@register(name)`` decorator that records a class in ``table`` and sets its ``name``."""

    def register(name: str) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            table[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return wrap

    return register
