"""Configs from conf/: composition as ``python run.py`` composes, a run's config typed by its schema, and a
conf/method preset with overrides (a ``compare`` entry, or the method another one wraps).

Composition needs the plugins' schemas in Hydra's ConfigStore: ``harness.api.load_plugins()`` puts them there.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.core.config import CONF_DIR, RunConfig
from harness.core.errors import SpeclabError


def compose(overrides: list[str]) -> DictConfig:
    """conf/config.yaml with Hydra-style ``overrides``, inside run.py's Hydra app or outside it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside run.py's Hydra app, which already knows conf/
        return hydra_compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def as_config(cfg: Any) -> DictConfig:
    """A RunConfig-typed DictConfig from a DictConfig, a RunConfig or a plain dict (Hydra's own node dropped)."""
    schema = OmegaConf.structured(RunConfig)
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is RunConfig:
        return cfg
    data = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg if isinstance(cfg, dict) else OmegaConf.structured(cfg))
    data = OmegaConf.masked_copy(data, [k for k in data.keys() if k != "hydra"]) if "hydra" in data else data
    return OmegaConf.merge(schema, data)


def method_node(entry: str) -> DictConfig:
    """The config of a conf/method option with optional overrides (``"hf_assisted k=6"``)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    name, *overrides = entry.split()
    if not (CONF_DIR / "method" / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")))
        raise SpeclabError(f"unknown method {name!r} in compare; choose from: {known}")
    try:
        return compose([f"method={name}"] + [f"method.{o}" for o in overrides]).method
    except (HydraException, OmegaConfBaseException) as e:
        while e.__cause__ is not None:  # Hydra wraps the error that names the key or value
            e = e.__cause__
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise SpeclabError(f"bad compare entry {entry!r}: {reason}; check it against conf/method/{name}.yaml") from None
