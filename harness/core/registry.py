"""Small name -> builder registries through which methods and tasks plug in.

Each entry carries its config schema; :meth:`Registry.typed` checks a composed config node against it,
so a key the family does not know is an error even when it was force-added (``+method.foo=1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.core.errors import SpeclabError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str, conf_group: str) -> None:
        self.kind = kind
        self.conf_group = conf_group
        self._items: dict[str, F] = {}
        self._schemas: dict[str, type] = {}

    def register(self, name: str, schema: type | None = None) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            if schema is not None:
                self._schemas[name] = schema
            return fn

        return deco

    def get(self, name: str) -> F:
        if name not in self._items:
            raise SpeclabError(
                f"unknown {self.kind} family {name!r}; known: {', '.join(sorted(self._items))} "
                f"(add a module that registers it, or fix '{self.conf_group}.family')"
            )
        return self._items[name]

    def typed(self, node: Any) -> Any:
        """``node`` merged onto its family's schema: unknown keys and wrong types raise SpeclabError."""
        family = node["family"]
        self.get(family)
        schema = self._schemas.get(family)
        if schema is None:
            return node
        known = list(OmegaConf.structured(schema).keys())
        unknown = [k for k in node.keys() if k not in known]
        if unknown:
            raise SpeclabError(
                f"unknown key {self.conf_group}.{unknown[0]} for {self.kind} family {family!r}; known keys: {', '.join(known)}"
            )
        try:
            return OmegaConf.merge(OmegaConf.structured(schema), node)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or getattr(e, "key", None)
            raise SpeclabError(f"invalid value for {self.conf_group}.{key} ({family!r}): {str(e).splitlines()[0]}") from None

    def build(self, node: Any, *args: Any) -> Any:
        return self.get(node["family"])(self.typed(node), *args)

    def names(self) -> list[str]:
        return sorted(self._items)
