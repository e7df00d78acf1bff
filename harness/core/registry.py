"""The registries through which methods and tasks plug in, and the one function that loads the plugins.

A plugin module (any module of the ``methods`` or ``tasks`` package) declares what it provides in a module-level
``FAMILIES`` list of :class:`Family` entries: a family name, its config schema and its builder. Importing a module
registers nothing; :func:`load_plugins` (which ``harness.api`` calls for the CLI, the scripts and the Python API)
imports every module of the plugin packages, adds their families to :data:`METHODS` / :data:`TASKS` and puts
each schema in Hydra's ConfigStore as ``schema/<group>/<family>``, where conf/ YAMLs start from it. Adding a method
is adding its module and its YAML: nothing else names it.

:meth:`Registry.typed` checks a composed config node against its family's schema, so a key the family does not
know is an error even when it was force-added (``+method.foo=1``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.core.errors import SpeclabError


@dataclass(frozen=True)
class Family:
    """One plugin: ``build(config, *context)`` makes it from a config typed by ``schema``."""

    name: str
    schema: type
    build: Callable[..., Any]


class Registry:
    def __init__(self, kind: str, conf_group: str) -> None:
        self.kind = kind
        self.conf_group = conf_group
        self._families: dict[str, Family] = {}

    def add(self, family: Family) -> None:
        known = self._families.get(family.name)
        if known is not None and known != family:
            raise ValueError(f"{self.kind} {family.name!r} registered twice")
        self._families[family.name] = family

    def get(self, name: str) -> Family:
        if name not in self._families:
            if not self._families:
                raise SpeclabError(f"no {self.kind} families are loaded; call harness.api.load_plugins() first")
            raise SpeclabError(
                f"unknown {self.kind} family {name!r}; known: {', '.join(sorted(self._families))} "
                f"(add a module that declares it in FAMILIES, or fix '{self.conf_group}.family')"
            )
        return self._families[name]

    def typed(self, node: Any) -> Any:
        """``node`` merged onto its family's schema: unknown keys and wrong types raise SpeclabError."""
        family = self.get(node["family"])
        known = list(OmegaConf.structured(family.schema).keys())
        unknown = [k for k in node.keys() if k not in known]
        if unknown:
            raise SpeclabError(f"unknown key {self.conf_group}.{unknown[0]} for {self.kind} family {family.name!r}; "
                               f"known keys: {', '.join(known)}")
        try:
            return OmegaConf.merge(OmegaConf.structured(family.schema), node)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or getattr(e, "key", None)
            raise SpeclabError(f"invalid value for {self.conf_group}.{key} ({family.name!r}): "
                               f"{str(e).splitlines()[0]}") from None

    def build(self, node: Any, *args: Any) -> Any:
        return self.get(node["family"]).build(self.typed(node), *args)

    def names(self) -> list[str]:
        return sorted(self._families)


METHODS = Registry("method", "method")
TASKS = Registry("task", "task")


def load_plugins(packages: Mapping[str, Registry]) -> None:
    """Import every module of each plugin package and register the families it declares (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for package, registry in packages.items():
        root = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{package}.{info.name}")
            for family in getattr(module, "FAMILIES", ()):
                registry.add(family)
                store.store(group=f"schema/{registry.conf_group}", name=family.name, node=family.schema)
