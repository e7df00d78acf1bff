"""Config composition: every option of every group composes, and typos are errors."""

import pytest
from omegaconf import OmegaConf

from harness.config import CONF_DIR
from harness.runner import as_config

from .conftest import compose

GROUPS = ["model", "method", "task", "baseline", "logger"]


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_defaults_compose():
    cfg = compose()
    assert cfg.model.name == "smollm2-135m" and cfg.method.family == "pld" and cfg.task.name == "demo"
    assert cfg.baseline.mode == "interleaved" and cfg.max_new_tokens == 128 and cfg.temperature == 0.0
    assert OmegaConf.get_type(as_config(cfg)).__name__ == "RunConfig"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    extra = ["model.path=org/some-model"] if (group, option) == ("model", "hf") else []
    cfg = compose(f"{group}={option}", *extra)
    node = cfg[group]
    assert node is not None
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group in ("method", "task"):
        assert node.family and node.name


def test_hf_model_name_comes_from_path():
    cfg = compose("model=hf", "model.path=HuggingFaceTB/SmolLM2-360M-Instruct")
    assert cfg.model.name == "SmolLM2-360M-Instruct"


@pytest.mark.parametrize(
    "override",
    ["max_new_token=5", "method.num_draftt=3", "model.dtypee=float32", "task.limt=3", "engine.thread=1"],
)
def test_typos_are_rejected(override):
    with pytest.raises(Exception) as err:
        compose(override)
    assert any(word in str(err.value) for word in ("not in struct", "Could not", "Key", "override"))


def test_type_errors_are_rejected():
    with pytest.raises(Exception):
        compose("max_new_tokens=many")
    with pytest.raises(Exception):
        compose("method.num_draft=ten")


def test_run_dir_is_derived_from_config_not_time():
    from hydra import compose as hc
    from hydra import initialize_config_dir

    import methods  # noqa: F401
    import tasks  # noqa: F401

    def run_dir(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hc(config_name="config", overrides=list(overrides), return_hydra_config=True)
            return OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]

    a, b = run_dir(), run_dir()
    assert a == b and a.startswith("results/runs/demo/smollm2-135m/pld-")
    assert run_dir("task.limit=3") == a  # more prompts extend the same run
    assert run_dir("max_new_tokens=64") != a


@pytest.mark.parametrize("override", ["+method.unknown=1", "+task.unknown=1"])
def test_force_added_keys_are_rejected_by_the_family_schema(override):
    from harness.errors import SpeclabError
    from harness.generator import METHODS
    from tasks.base import TASKS

    cfg = compose(override)
    registry, node = (METHODS, cfg.method) if override.startswith("+method") else (TASKS, cfg.task)
    with pytest.raises(SpeclabError, match="unknown"):
        registry.typed(node)


def test_every_family_schema_accepts_its_yaml():
    from harness.generator import METHODS
    from tasks.base import TASKS

    for group, registry in (("method", METHODS), ("task", TASKS)):
        for option in options(group):
            extra = []
            node = compose(f"{group}={option}", *extra)[group]
            registry.typed(node)
