"""Config composition: every option of every group composes, and typos are errors."""

import pytest
from omegaconf import OmegaConf

from harness.core.config import CONF_DIR
from harness.core.presets import as_config

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


    def run_dir(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hc(config_name="config", overrides=list(overrides), return_hydra_config=True)
            return OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]

    a, b = run_dir(), run_dir()
    assert a == b and a.startswith("results/runs/demo/smollm2-135m/pld-")
    assert run_dir("task.limit=3") != a  # another selection of prompts is another run, reported apart
    assert run_dir("max_new_tokens=64") != a


@pytest.mark.parametrize("override", ["+method.unknown=1", "+task.unknown=1"])
def test_force_added_keys_are_rejected_by_the_family_schema(override):
    from harness.core.errors import SpeclabError
    from harness.core.registry import METHODS, TASKS

    cfg = compose(override)
    registry, node = (METHODS, cfg.method) if override.startswith("+method") else (TASKS, cfg.task)
    with pytest.raises(SpeclabError, match="unknown"):
        registry.typed(node)


def test_every_family_schema_accepts_its_yaml():
    from harness.core.registry import METHODS, TASKS

    for group, registry in (("method", METHODS), ("task", TASKS)):
        for option in options(group):
            extra = []
            node = compose(f"{group}={option}", *extra)[group]
            registry.typed(node)


# -- every option of the head-based and training-free methods ----------------------------------------------

OPTION_OVERRIDES = {
    # key -> (command-line value, value in the typed config)
    "eagle": {"name": ("eagle_mc", "eagle_mc"), "rule": ("rejection", "rejection"), "head": ("/heads/e1", "/heads/e1"),
              "dtype": ("bfloat16", "bfloat16"), "choices": ("eagle_mc_sim_7b_63", "eagle_mc_sim_7b_63"),
              "vocab_size": ("null", None)},
    "eagle2": {"name": ("e2", "e2"), "rule": ("greedy", "greedy"), "head": ("org/eagle-head", "org/eagle-head"),
               "dtype": ("float16", "float16"), "depth": ("7", 7), "top_k": ("10", 10), "total_tokens": ("60", 60),
               "vocab_size": ("4096", 4096)},
    "eagle3": {"name": ("e3", "e3"), "rule": ("auto", "auto"), "head": ("/heads/e3", "/heads/e3"),
               "dtype": ("float32", "float32"), "depth": ("8", 8), "top_k": ("1", 1), "total_tokens": ("2", 2)},
    "rest": {"name": ("rest_big", "rest_big"), "rule": ("rejection", "rejection"), "datastore": ("/d/ultra.npz", "/d/ultra.npz"),
             "max_suffix": ("8", 8), "min_suffix": ("1", 1), "max_hits": ("100", 100), "length": ("6", 6),
             "total_tokens": ("64", 64), "max_tokens": ("16", 16)},
    "recycling": {"name": ("tr", "tr"), "rule": ("greedy", "greedy"), "top_k": ("4", 4), "template": ("cpu8", "cpu8"),
                  "total_tokens": ("auto", "auto"), "max_tokens": ("80", 80), "persist": ("false", False),
                  "context": ("2", 2), "recycle_prompt": ("true", True)},
    "sam": {"name": ("samd", "samd"), "rule": ("auto", "auto"), "n_predicts": ("20", 20), "alpha": ("2.5", 2.5),
            "threshold": ("3", 3), "len_bias": ("0", 0), "static": ("true", True), "datastore": ("/d/x.npz", "/d/x.npz"),
            "aux": ("eagle2", "eagle2"), "max_tokens": ("12", 12)},
    "lookahead": {"name": ("lade", "lade"), "rule": ("rejection", "rejection"), "ngram": ("5", 5), "window": ("7", 7),
                  "guesses": ("7", 7), "seed": ("3", 3), "pool_from_prompt": ("true", True)},
    "layerskip": {"name": ("ls", "ls"), "rule": ("greedy", "greedy"), "exit_layer": ("8", 8), "k": ("4", 4),
                  "adapter": ("none", "none")},
    "medusa": {"name": ("med", "med"), "rule": ("typical", "typical"), "head": ("FasterDecoding/medusa-x", "FasterDecoding/medusa-x"),
               "dtype": ("float16", "float16"), "choices": ("medusa_mc_sim_7b_63", "medusa_mc_sim_7b_63"),
               "vocab_size": ("null", None), "posterior_threshold": ("0.05", 0.05), "posterior_alpha": ("0.2", 0.2),
               "typical_bonus": ("sample", "sample")},
    "adaptive": {"name": ("ad", "ad"), "rule": ("greedy", "greedy"), "inner": ("eagle2", "eagle2"), "max_depth": ("8", 8),
                 "expert_term": ("false", False), "prompt_carry": ("0.2", 0.2), "graded": ("false", False)},
    "hydra": {"name": ("hyd", "hyd"), "rule": ("rejection", "rejection"), "head": ("/heads/hydra", "/heads/hydra"),
              "dtype": ("bfloat16", "bfloat16"), "choices": ("chain4", "chain4"), "vocab_size": ("4096", 4096),
              "posterior_threshold": ("0.09", 0.09), "posterior_alpha": ("0.5", 0.5), "typical_bonus": ("argmax", "argmax")},
}


@pytest.mark.parametrize("method,key", [(m, k) for m, keys in OPTION_OVERRIDES.items() for k in keys])
def test_every_method_option_composes(method, key):
    from harness.core.registry import METHODS

    given, expect = OPTION_OVERRIDES[method][key]
    typed = METHODS.typed(compose(f"method={method}", f"method.{key}={given}").method)
    assert typed.family == METHODS.typed(compose(f"method={method}").method).family and typed[key] == expect


def test_override_table_covers_every_key():
    from harness.core.registry import METHODS

    for method, table in OPTION_OVERRIDES.items():
        keys = set(METHODS.typed(compose(f"method={method}").method).keys()) - {"family"}
        assert keys == set(table), f"{method}: add overrides for {sorted(keys - set(table))}"


@pytest.mark.parametrize("method", ["eagle", "eagle2", "medusa", "hydra", "sps"])
def test_vocab_size_is_auto_null_or_a_number(method):
    from harness.core.registry import METHODS

    assert METHODS.typed(compose(f"method={method}").method).vocab_size == "auto"  # official heads need no file
    for given, expect in (("auto", "auto"), ("null", None), ("4096", 4096)):
        assert METHODS.typed(compose(f"method={method}", f"method.vocab_size={given}").method).vocab_size == expect


def test_eagle_choices_take_a_literal_list():
    from harness.core.registry import METHODS
    from harness.drafting.tree_shapes import resolve_choices

    typed = METHODS.typed(compose("method=eagle", "method.choices=[[0],[1],[0,0],[0,0,0]]").method)
    assert resolve_choices(typed.choices) == [(0,), (1,), (0, 0), (0, 0, 0)]
    prefix = METHODS.typed(compose("method=medusa", "method.choices=medusa_mc_sim_7b_63:8").method)
    assert resolve_choices(prefix.choices) == resolve_choices("medusa_mc8")


@pytest.mark.parametrize("choices,message", [
    ("medusa_mc_sim_7b_63:0", "after ':' give how many"),
    ("medusa_mc_sim_7b_63:x", "after ':' give how many"),
    ("nope:4", "unknown tree choices 'nope'"),
])
def test_bad_tree_prefix_is_one_clear_error(choices, message):
    from harness.drafting.tree_shapes import resolve_choices

    with pytest.raises(ValueError, match=message):
        resolve_choices(choices)


@pytest.fixture(scope="module")
def untrained_head(tmp_path_factory, tiny_target):
    """An EAGLE-1 head folder for the tiny target with no token_frequency.json beside it."""
    from harness.drafting.heads.eagle_checkpoints import new_head, save_head

    return save_head(new_head("eagle", tiny_target), tmp_path_factory.mktemp("head") / "eagle", tiny_target, {})


@pytest.mark.parametrize("method,overrides,expect", [
    ("eagle", {"choices": "mc_sim_7b_63"}, "method.choices: unknown tree choices 'mc_sim_7b_63'"),
    ("eagle", {"choices": [[0], [0, 0, 0]]}, "method.choices: tree choice [0, 0, 0] has no parent [0, 0]"),
    ("eagle", {"choices": [[0], [2]]}, "needs its lower-ranked sibling [1]"),
    ("eagle", {"choices": [0, 1]}, "a list of rank paths such as [[0], [1], [0, 0]]"),
    ("eagle", {"choices": []}, "tree choices are empty"),
    ("eagle2", {"depth": 0}, "needs depth >= 1"),
    ("eagle3", {"top_k": 0}, "top_k >= 1"),
    ("eagle2", {"total_tokens": 1}, "total_tokens >= 2"),
    ("eagle3", {"head": "/no/such/eagle3-head"}, "/no/such/eagle3-head"),
    ("eagle", {"head": None}, "no default eagle head for model 'tiny-llama'; set method.head="),
    ("eagle3", {"head": None}, "python scripts/train_eagle.py --variant eagle3"),
    ("eagle2", {"dtype": "float8"}, "unknown method.dtype 'float8'; choose auto or one of float32, bfloat16, float16"),
    ("eagle", {"vocab_size": 0}, "method.vocab_size must be positive"),
    ("eagle2", {"vocab_size": 64}, "token_frequency.json"),
    ("eagle", {"vocab_size": "most"}, "method.vocab_size must be auto, null or a positive integer, got 'most'"),
])
def test_bad_eagle_values_are_one_clear_line(tiny_target, untrained_head, method, overrides, expect):
    from harness.core.config import EngineConfig
    from harness.core.errors import SpeclabError
    from harness.core.registry import METHODS
    from harness.engine.method import MethodContext
    from harness.engine.sampling import Sampling

    node = compose(f"method={method}").method
    node.head = str(untrained_head)
    for key, value in overrides.items():
        node[key] = value
    with pytest.raises(SpeclabError) as err:
        METHODS.build(node, MethodContext(tiny_target, Sampling(), EngineConfig(kernel="torch")))
    message = str(err.value)
    assert expect in message and "\n" not in message, message


def test_bad_eagle_value_exits_with_one_line(tmp_path):
    from .test_cli import error_line, run_cli

    proc = run_cli("model=tiny-llama", "method=eagle2", "method.total_tokens=1", tmp_path=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "total_tokens >= 2" in error_line(proc)


@pytest.mark.parametrize("override", [
    "engine.device=auto", "engine.device=cpu", "engine.device=cuda:1", "engine.cuda_graphs=on", "engine.cuda_graphs=off",
    "engine.graph_widths=[1,4,16]", "engine.kernel=hybrid", "engine.kernel=onednn", "engine.kernel=torch",
    "model.dtype=auto", "model.dtype=bfloat16", "synthetic.mode=rates", "synthetic.rates=[0.9,0.5]",
    "synthetic.mode=trace", "synthetic.trace=results/runs/x", "synthetic.seed=3",
])
def test_engine_and_synthetic_options_compose(override):
    cfg = as_config(compose(override))
    key, value = override.split("=", 1)
    node = OmegaConf.select(cfg, key)
    assert str(node if not OmegaConf.is_list(node) else list(node)).replace(" ", "").strip("'") == value.strip("'")


def test_options_added_later_keep_earlier_run_folders():
    """engine.device, engine.cuda_graphs, engine.graph_widths and synthetic at their defaults leave a run's config
    hash (and so its folder) as it was before they existed; set otherwise, they make another run."""
    from harness.core.run_identity import config_hash, semantic_config

    cfg = compose()
    semantic = semantic_config(cfg)
    assert "synthetic" not in semantic and not {"device", "cuda_graphs", "graph_widths"} & set(semantic["engine"])
    assert config_hash(compose("engine.device=cpu")) != config_hash(cfg)
    assert config_hash(compose("synthetic.mode=rates", "synthetic.rates=[0.5]")) != config_hash(cfg)
