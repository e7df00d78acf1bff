"""Medusa and Hydra on the tiny target: the trainer end to end (writing the official keys), greedy identity, the
typical rule, training = inference, and one clear line for every bad head or setting (the official layouts are
checked against an independent forward in test_official_layouts.py).

The heads come from ``scripts/train_medusa.py`` (the ``parallel_heads`` fixture in conftest.py, trained on the
answers the EAGLE fixture cached); they know the tiny prompts' continuations, so drafts are accepted.
"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from harness.core.config import EngineConfig
from harness.core.errors import SpeclabError
from harness.core.registry import METHODS
from harness.drafting.heads.layers import causal_mask
from harness.drafting.heads.medusa_checkpoints import load_parallel_heads
from harness.drafting.heads.medusa_heads import MedusaHeads, ResBlock
from harness.drafting.tree_shapes import MEDUSA_MC_SIM_7B_63, resolve_choices
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling
from harness.engine.verifiers import TypicalVerifier
from harness.training.eagle import batches
from harness.training.parallel import ParallelHeadsLoss
from methods.hydra import HydraConfig
from methods.medusa import MedusaConfig

from . import official_heads as oh
from .conftest import EAGLE_GEN_TOKENS, TRAINED_TAU, build_with_head
from .test_greedy_equivalence import hf_greedy

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMAS = {"medusa": MedusaConfig, "hydra": HydraConfig}
MAX_NEW = EAGLE_GEN_TOKENS


def build(target, heads: dict, method: str, sampling: Sampling = Sampling(), **overrides) -> EngineGenerator:
    return build_with_head(target, SCHEMAS[method], heads[method]["folder"], sampling, **overrides)


@pytest.fixture(scope="module")
def references(tiny_target, tiny_prompts):
    return [hf_greedy(tiny_target, p, MAX_NEW) for p in tiny_prompts]


# -- the trainer and the layouts ----------------------------------------------------------------------------------

def test_trainer_writes_official_layouts(parallel_heads, tiny_target):
    for variant, run in parallel_heads.items():
        folder = run["folder"]
        config = json.loads((folder / "config.json").read_text())
        state = torch.load(folder / f"{variant}_lm_head.pt", weights_only=True)
        assert config["speclab_head"]["command"].startswith("python scripts/train_medusa.py")
        assert (folder / "README.md").is_file() and (folder / "token_frequency.json").is_file()
        written = {k: tuple(v.shape) for k, v in state.items()}
        d = oh.Dims.of(tiny_target)
        if variant == "medusa":  # the legacy layout: ResBlocks only, the target's lm_head shared
            assert config["medusa_num_heads"] == 4 and config["medusa_num_layers"] == 1
            assert written == dict(oh.medusa_keys(d, 4, 1, own_output=False))
        else:  # the official keys, less what the official loader fills from the target (or never reads)
            assert config["hydra_head_arch"] == "prefix-mlp" and config["grounded_heads"] is True
            assert config["hydra_num_heads"] == 4 and config["hydra_num_layers"] == 2
            left_out = ("prefix_embeding_layer.embed_tokens.weight", "input_embed_fn.weight", "rotary_emb.inv_freq")
            official = {k: v for k, v in oh.hydra_keys(d, 4, 2) if not k.endswith(left_out)
                        and not (k.startswith("hydra_lm_head.") and k.endswith(".weight"))}
            assert written == official
        heads = load_parallel_heads(str(folder), variant, tiny_target)
        assert heads.num_heads == 4
        assert run["stats"]["learning_curve"][-1]["tau"] == run["stats"]["heldout_tau"]
        assert run["stats"]["heldout_tau"] >= TRAINED_TAU > run["stats"]["heldout_tau_untrained"], variant


def test_trainer_resumes_from_its_checkpoint(parallel_heads):
    from scripts.train_medusa import main

    run = parallel_heads["medusa"]
    again = main(run["args"])  # the checkpoint says training is done: nothing is trained again
    assert again["steps"] == run["stats"]["steps"]
    assert again["heldout_tau"] == pytest.approx(run["stats"]["heldout_tau"])


def _write(folder, name: str, state: dict, config: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("case,message", [
    ("medusa_width", "shape"),
    ("medusa_vocab", "vocabulary"),
    ("hydra_width", "shape"),
    ("hydra_arch", "prefix-mlp"),
    ("wrong_kind", "use method=medusa"),
    ("pickle", "weights_only"),
    ("layers", "medusa_num_layers"),
    ("no_blocks", "ResBlocks"),
])
def test_bad_heads_are_one_clear_line(tmp_path, tiny_target, case, message):
    h, v = tiny_target.config.hidden_size, tiny_target.vocab_size
    kind = "hydra" if case.startswith("hydra") else "medusa"
    medusa = {"0.0.linear.weight": torch.zeros(h, h), "0.0.linear.bias": torch.zeros(h)}
    cfg = {"medusa_num_heads": 1, "medusa_num_layers": 1}
    folder = tmp_path / case
    if case == "medusa_width":
        _write(folder, "medusa_lm_head.pt", {"0.0.linear.weight": torch.zeros(h + 8, h + 8)}, cfg)
    elif case == "medusa_vocab":
        _write(folder, "medusa_lm_head.pt", {**medusa, "0.1.weight": torch.zeros(v + 5, h)}, cfg)
    elif case in ("hydra_width", "hydra_arch"):
        state = {"hydra_mlp.0.1.linear.weight": torch.zeros(h, 3 * h)}
        arch = "prefix-mlp" if case == "hydra_width" else "cross-attn"
        _write(folder, "hydra_lm_head.pt", state, {"hydra_head_arch": arch, "grounded_heads": True})
    elif case == "wrong_kind":
        _write(folder, "medusa_lm_head.pt", medusa, cfg)
        kind = "hydra"
    elif case == "pickle":
        folder.mkdir()
        torch.save({"0.0.linear.weight": torch.zeros(h, h), "extra": object()}, folder / "medusa_lm_head.pt")
        (folder / "config.json").write_text(json.dumps(cfg))
    elif case == "layers":
        _write(folder, "medusa_lm_head.pt", medusa, {"medusa_num_layers": 3})
    else:
        _write(folder, "medusa_lm_head.pt", {"something": torch.zeros(2)}, cfg)
    with pytest.raises(SpeclabError, match=message) as err:
        load_parallel_heads(str(folder), kind, tiny_target)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method,overrides,message", [
    ("medusa", {"choices": [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]]}, "depth 5"),
    ("hydra", {"choices": [[1]]}, "lower-ranked sibling"),
    ("medusa", {"dtype": "float8"}, "method.dtype"),
    ("medusa", {"vocab_size": 0}, "vocab_size"),
    ("medusa", {"rule": "typical"}, "temperature > 0"),
    ("hydra", {"rule": "nonsense"}, "choose auto, greedy, rejection, typical"),
])
def test_bad_settings_are_one_clear_line(tiny_target, parallel_heads, method, overrides, message):
    with pytest.raises(SpeclabError, match=message) as err:
        build(tiny_target, parallel_heads, method, **overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,message", [({"typical_bonus": "median"}, "argmax or sample"),
                                               ({"posterior_threshold": 0.0}, "posterior_threshold > 0")])
def test_bad_typical_settings_are_one_clear_line(tiny_target, parallel_heads, overrides, message):
    with pytest.raises(SpeclabError, match=message):
        build(tiny_target, parallel_heads, "medusa", Sampling(temperature=0.7), rule="typical", **overrides)


def test_no_default_head_names_the_training_command(tiny_target):
    node = OmegaConf.structured(MedusaConfig)
    with pytest.raises(SpeclabError, match="scripts/train_medusa.py --variant medusa"):
        METHODS.build(node, MethodContext(tiny_target, Sampling(), EngineConfig(kernel="torch")))


# -- greedy identity ---------------------------------------------------------------------------------------------

GREEDY_CASES = [
    ("medusa", {"choices": "medusa_mc8", "vocab_size": 64}),
    ("medusa", {"choices": "cpu8_d4", "vocab_size": 64}),
    ("medusa", {"choices": "chain4", "vocab_size": None}),
    ("medusa", {"choices": "medusa_mc_sim_7b_63", "vocab_size": 64}),
    ("medusa", {"choices": [[0]], "vocab_size": 64, "dtype": "bfloat16"}),
    ("hydra", {"choices": "medusa_mc8", "vocab_size": 64}),
    ("hydra", {"choices": "cpu8_d4", "vocab_size": 64}),
    ("hydra", {"choices": "chain4", "vocab_size": None}),
    ("hydra", {"choices": "medusa_mc_sim_7b_63", "vocab_size": 64}),
    ("hydra", {"choices": "cpu6", "vocab_size": 64, "dtype": "bfloat16"}),
    ("medusa", {"choices": "cpu6", "vocab_size": 64, "dtype": "float32"}),
    ("hydra", {"choices": "cpu6", "vocab_size": 64, "dtype": "float32"}),
]


@pytest.mark.parametrize("method,overrides", GREEDY_CASES,
                         ids=lambda x: x if isinstance(x, str) else "-".join(f"{k}={v}" for k, v in x.items()))
def test_greedy_output_is_plain_greedy(tiny_target, tiny_prompts, references, parallel_heads, method, overrides):
    gen = build(tiny_target, parallel_heads, method, **overrides)
    accepted = longest = 0
    for prompt, ref in zip(tiny_prompts, references):
        res = gen.generate(prompt, MAX_NEW, None)
        assert res.token_ids == ref
        assert res.steps == 1 + len(res.drafted) and sum(res.emitted) + 1 == len(ref)
        accepted += sum(res.accepted)
        longest = max(longest, *res.accepted)
    assert accepted >= 20, f"accepted {accepted}"  # the heads know these continuations
    if len(resolve_choices(overrides["choices"])) > 1:
        assert longest >= 2


def test_budget_and_eos_are_respected(tiny_target, tiny_prompts, references, parallel_heads):
    for method in ("medusa", "hydra"):
        gen = build(tiny_target, parallel_heads, method, choices="medusa_mc_sim_7b_63", vocab_size=64)
        for n in (1, 2, 5):
            res = gen.generate(tiny_prompts[0], n, None)
            assert res.token_ids == references[0][:n]


def test_medusa_children_ignore_their_parent(tiny_target, tiny_prompts, parallel_heads):
    """Medusa's depth-d nodes are head d-1's top candidates whatever the parent (Hydra's read the parent)."""
    from harness.engine.drafter import DecodeState

    prompt = tiny_prompts[1]
    for method in ("medusa", "hydra"):
        drafter = build(tiny_target, parallel_heads, method, choices=[[0], [1], [0, 0], [1, 0]], vocab_size=64).drafter
        state = DecodeState(list(prompt), len(prompt), 8, tiny_target, Sampling(), None)
        with torch.inference_mode():
            prefill = tiny_target.forward(tiny_target.new_cache(len(prompt) + 8), prompt[:-1], hidden_layers=("final",))
        drafter.begin(state, prefill)
        proposal = drafter.propose(state, 4)
        assert proposal.parents == [-1, -1, 0, 1] and proposal.q is None
        if method == "medusa":
            assert proposal.tokens[2] == proposal.tokens[3]
        assert drafter.propose(state, 4).tokens == proposal.tokens  # nothing committed: the same tree


# -- training = inference ------------------------------------------------------------------------------------------

def test_hydra_training_inputs_equal_the_drafter_inputs(tiny_target, tiny_prompts, parallel_heads):
    """The loss's teacher-forced head inputs at t are what the drafter builds at t for the same tokens: the prefix
    layer run incrementally on its cache equals the causal run over the whole sequence, and the head logits agree."""
    heads = load_parallel_heads(str(parallel_heads["hydra"]["folder"]), "hydra", tiny_target)
    seq = tiny_prompts[1] + [5, 9, 11, 3, 7]
    with torch.inference_mode():
        out = tiny_target.forward(tiny_target.new_cache(len(seq) + 1), seq, hidden_layers=("final",))
        final = out.hidden["final"].float()
        full = heads.prefix(final[None], torch.arange(len(seq))[None])[0]
        cache = heads.new_cache(len(seq) + 8)
        cut = len(seq) - 4
        first = heads.prefix(final[None, :cut], torch.arange(cut)[None], cache)[0]
        rest = heads.prefix(final[None, cut:], torch.arange(cut, len(seq))[None], cache,
                            causal_mask(cut, len(seq) - cut, torch.float32))[0]
        assert torch.allclose(torch.cat([first, rest]), full, atol=1e-5)
        t = len(seq) - 4
        x = torch.cat([full[t], heads.embed(torch.tensor(seq[t + 1])), heads.embed(torch.tensor(seq[t + 2]))])
        drafted = heads.head_logits(1, x)
    sample = {"id": "x", "prompt": seq[:t], "answer": seq[t:], "hidden": {"final": final.half().float()}}
    batch = next(batches([sample], 1, 0))
    loss = ParallelHeadsLoss(heads, tiny_target.lm_head.weight, _full_vocab(tiny_target))
    with torch.no_grad():
        state: dict = {}
        b, tt = torch.tensor([0]), torch.tensor([t])
        trained = loss._logits(1, loss._inputs(batch, 1, b, tt, state))[0]
    assert torch.allclose(trained, drafted, atol=1e-2)


def _full_vocab(target):
    from harness.drafting.vocab import ReducedVocab

    return ReducedVocab(torch.arange(target.vocab_size), target.vocab_size)


def test_resblock_starts_as_identity():
    block = ResBlock(8)
    x = torch.randn(3, 8)
    assert torch.allclose(block(x), x + torch.nn.functional.silu(block.linear.bias))
    assert isinstance(MedusaHeads(8, 16, 2, 1, torch.nn.Linear(8, 16)).medusa_head[0][0], ResBlock)


# -- typical acceptance ----------------------------------------------------------------------------------------------

def test_typical_rule_takes_the_longest_passing_path():
    """Root children 0 and 1 pass; under 1 a grandchild passes too: the path [1, 3] wins over [0]."""
    v = 6
    logits = torch.full((5, v), -10.0)
    logits[0, [2, 4]] = 3.0  # after the root: tokens 2 and 4 likely
    logits[2, 5] = 5.0  # after node 1 (token 4): token 5 very likely
    logits[1, 1] = 5.0
    logits[3, 0] = 5.0
    proposal = Proposal([2, 4, 1, 5], [-1, -1, 0, 1])
    verifier = TypicalVerifier(Sampling(temperature=1.0))
    res = verifier.verify(logits, proposal)
    assert res.accepted == [1, 3] and res.token == 0
    proposal = Proposal([3, 3], [-1, 0])  # nothing passes: the target's argmax after the root
    res = verifier.verify(logits, proposal)
    assert res.accepted == [] and res.token in (2, 4)


def test_typical_rows_are_labelled_lossy(tiny_target, tiny_prompts, parallel_heads):
    gen = build(tiny_target, parallel_heads, "hydra", Sampling(temperature=0.7), rule="typical", vocab_size=64)
    assert gen.lossless is False and gen.acceptance_rule == "typical"
    res = gen.generate(tiny_prompts[0], 12, torch.Generator().manual_seed(0))
    assert len(res.token_ids) == 12
    lossless = build(tiny_target, parallel_heads, "hydra", Sampling(temperature=0.7), vocab_size=64)
    assert lossless.lossless is True and lossless.acceptance_rule == "rejection"


def test_medusa_tree_preset_is_the_reference_tree():
    paths = resolve_choices("medusa_mc_sim_7b_63")
    assert len(paths) == len(MEDUSA_MC_SIM_7B_63) == 63
    assert [sum(len(c) == d for c in paths) for d in (1, 2, 3, 4)] == [10, 28, 23, 2]
    assert max(len(c) for c in resolve_choices("cpu8_d4")) == 4 and len(resolve_choices("cpu8_d4")) == 7
    # the default: the reference tree's 8 likeliest nodes, a closed tree of depth 3
    assert resolve_choices("medusa_mc8") == sorted(map(tuple, MEDUSA_MC_SIM_7B_63[:8]), key=lambda c: (len(c), c))
    assert max(len(c) for c in resolve_choices("medusa_mc8")) == 3


def test_tree_sweep_script_measures_each_tree_on_held_out_prompts(parallel_heads, tmp_path):
    from scripts.sweep_trees import main

    argv = parallel_heads["medusa"]["args"]
    prompts_file = argv[argv.index("--prompts-file") + 1]
    out = tmp_path / "sweep.jsonl"
    rows = main(["--methods", "medusa", "--trees", "chain4,medusa_mc_sim_7b_63:8", "--model", "tiny-llama",
                 "--prompts-file", prompts_file, "--holdout", "0.2", "--eval-prompts", "2", "--eval-tokens", "8",
                 "--set", f"head={parallel_heads['medusa']['folder']}", "--set", "vocab_size=64", "--out", str(out)])
    assert [(r["tree"], r["nodes"]) for r in rows] == [("chain4", 4), ("medusa_mc_sim_7b_63:8", 8)]
    assert all(1.0 <= r["tau"] <= 5.0 and r["prompts"] == 2 for r in rows)
    assert len(out.read_text().splitlines()) == 2
