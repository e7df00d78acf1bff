"""EAGLE-1/2/3 on the tiny target: the trainer end to end, greedy identity, tree mechanics, training-time test.

The heads come from ``scripts/train_eagle.py`` (the ``eagle_heads`` fixture in conftest.py); they know the
tiny test prompts' continuations, so drafts are accepted and the identity tests exercise acceptance, tree
gathers and bonus tokens rather than only rejections.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from harness.drafting.heads.eagle_checkpoints import load_head
from harness.drafting.heads.eagle_drafter import HeadDrafter, TreeShape
from harness.drafting.heads.layers import causal_mask
from harness.drafting.tree_shapes import CHOICES, EAGLE_MC_SIM_7B_63, best_first, choices_parents, resolve_choices
from harness.engine.decoder import Decoder
from harness.engine.method import EngineGenerator
from harness.engine.sampling import Sampling
from harness.engine.verifiers import make_verifier
from harness.training.eagle import EagleLoss, batches
from methods.eagle import EagleConfig
from methods.eagle2 import Eagle2Config
from methods.eagle3 import Eagle3Config

from .conftest import EAGLE_GEN_TOKENS, HELDOUT_PROMPTS, TRAINED_TAU, build_with_head
from .test_greedy_equivalence import hf_greedy

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMAS = {"eagle": EagleConfig, "eagle2": Eagle2Config, "eagle3": Eagle3Config}
HEAD_OF = {"eagle": "eagle", "eagle2": "eagle", "eagle3": "eagle3"}
MAX_NEW = EAGLE_GEN_TOKENS  # the heads were trained on this many answer tokens
# siblings at two levels and depth 4: every mask and q case of a static tree
BRANCHY = [[0], [1], [0, 0], [1, 0], [0, 1], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]]


def build(target, eagle_heads: dict, method: str, sampling: Sampling = Sampling(), **overrides) -> EngineGenerator:
    return build_with_head(target, SCHEMAS[method], eagle_heads[HEAD_OF[method]]["folder"], sampling, **overrides)


@pytest.fixture(scope="module")
def references(tiny_target, tiny_prompts):
    return [hf_greedy(tiny_target, p, MAX_NEW) for p in tiny_prompts]


# -- the trainer ---------------------------------------------------------------------------------------------

def test_trainer_writes_a_loadable_head(eagle_heads, tiny_target):
    for variant, run in eagle_heads.items():
        out = run["folder"]
        for name in ("config.json", "model.safetensors", "token_frequency.json", "README.md"):
            assert (out / name).is_file(), f"{variant}: {name} missing"
        meta = json.loads((out / "config.json").read_text())["speclab_head"]
        assert meta["variant"] == variant and meta["target"] == "tiny-llama"
        assert meta["command"].startswith("python scripts/train_eagle.py") and meta["steps"] > 0
        # measured on held-out copies of the tiny prompts the head learned: an untrained head drafts nothing accepted
        assert meta["heldout_prompts"] == HELDOUT_PROMPTS
        assert meta["heldout_tau"] >= TRAINED_TAU > meta["heldout_tau_untrained"], (variant, meta["heldout_tau"],
                                                                                     meta["heldout_tau_untrained"])
        ids = json.loads((out / "token_frequency.json").read_text())["token_ids"]
        assert len(ids) == len(set(ids)) and all(0 <= t < tiny_target.vocab_size for t in ids)
        assert "Held-out tau" in (out / "README.md").read_text()
        head, _ = load_head(str(out), tiny_target)
        assert head.variant == variant
        if variant == "eagle3":
            assert len(head.vocab) == 64 and head.lm_head.out_features == 64
        else:
            assert head.vocab is None  # EAGLE-1 drafts through the target's head; method.vocab_size restricts it


def test_trainer_resumes_from_its_caches(eagle_heads):
    from scripts.train_eagle import main

    run = eagle_heads["eagle3"]
    shards = sorted(run["work"].rglob("gen_*.pt"))
    assert len(shards) == 6  # 44 prompts in batches of 8, written once and shared by both variants
    stamps = [p.stat().st_mtime_ns for p in shards]
    weights = (run["folder"] / "model.safetensors").read_bytes()
    stats = main(run["args"])
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # answers reused, not generated again
    assert stats["steps"] == run["stats"]["steps"]  # the finished training checkpoint resumed, no extra step
    assert (run["folder"] / "model.safetensors").read_bytes() == weights


# -- greedy identity -------------------------------------------------------------------------------------------

GREEDY_CASES = [
    ("eagle", {"choices": "cpu8", "vocab_size": None}),
    ("eagle", {"choices": "chain4", "vocab_size": 64}),
    ("eagle", {"choices": "eagle_mc_sim_7b_63", "vocab_size": None}),
    ("eagle", {"choices": BRANCHY, "vocab_size": 32}),
    ("eagle2", {"depth": 5, "top_k": 2, "total_tokens": 8, "vocab_size": None}),
    ("eagle2", {"depth": 1, "top_k": 1, "total_tokens": 2, "vocab_size": 64}),
    ("eagle2", {"depth": 4, "top_k": 3, "total_tokens": 2, "vocab_size": None}),
    ("eagle2", {"depth": 7, "top_k": 10, "total_tokens": 60, "vocab_size": 64}),
    ("eagle3", {"depth": 5, "top_k": 2, "total_tokens": 8}),
    ("eagle3", {"depth": 1, "top_k": 1, "total_tokens": 2}),
    ("eagle3", {"depth": 3, "top_k": 4, "total_tokens": 12}),
    ("eagle3", {"depth": 8, "top_k": 10, "total_tokens": 60}),
    # a half-precision head drafts for the fp32 target: features and logits cross dtypes (the default, auto, is
    # bf16 on CPUs with bf16 units and fp32 elsewhere, so both precisions are also named)
    ("eagle", {"choices": "cpu8", "vocab_size": 64, "dtype": "bfloat16"}),
    ("eagle3", {"depth": 4, "top_k": 2, "total_tokens": 6, "dtype": "bfloat16"}),
    ("eagle2", {"depth": 4, "top_k": 3, "total_tokens": 8, "vocab_size": 64, "dtype": "float32"}),
    ("eagle3", {"depth": 4, "top_k": 3, "total_tokens": 8, "dtype": "float32"}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_head_and_its_draft_rows_take_method_dtype(tiny_target, eagle_heads, dtype):
    name = str(dtype).removeprefix("torch.")
    gen = build(tiny_target, eagle_heads, "eagle2", dtype=name, vocab_size=64)
    head = gen.drafter.head
    assert gen.drafter.draft_dtype == name and gen.drafter.draft_vocab_size == 64
    assert head.fc.weight.dtype == dtype
    assert next(head._shared["head"].parameters()).dtype == dtype  # the target's head rows, cast once
    assert head._shared["embed"].weight.dtype == torch.float32  # the target's own embedding is untouched


@pytest.mark.parametrize("variant", ["eagle", "eagle3"])
def test_a_bf16_head_keeps_fp32_rope(tiny_target, eagle_heads, parallel_heads, variant):
    """Casting a head to bf16 keeps its RoPE frequencies fp32: bf16 ones put a position-1000 rotation up to 0.18 rad
    off. The head's cos/sin then equal the fp32 head's to bf16's own precision (the tables are cast last)."""
    from harness.drafting.heads.medusa_checkpoints import load_parallel_heads

    fp32, _ = load_head(str(eagle_heads[variant]["folder"]), tiny_target, torch.float32)
    bf16, _ = load_head(str(eagle_heads[variant]["folder"]), tiny_target, torch.bfloat16)
    hydra = load_parallel_heads(str(parallel_heads["hydra"]["folder"]), "hydra", tiny_target, torch.bfloat16)
    for head in (bf16, hydra.prefix_embeding_layer):
        assert head.rotary.inv_freq.dtype == torch.float32 and head.rotary.original_inv_freq.dtype == torch.float32
    positions = torch.arange(990, 1010)[None]
    x = torch.zeros(1, 1, dtype=torch.bfloat16)
    for got, want in zip(bf16.rotary(x, positions), fp32.rotary(x.float(), positions)):
        assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max() < 1e-2


@pytest.mark.parametrize("method,overrides", GREEDY_CASES, ids=lambda x: x if isinstance(x, str) else
                         "-".join(f"{k}={v}" for k, v in x.items() if k != "choices" or isinstance(v, str)))
def test_greedy_output_is_plain_greedy(tiny_target, tiny_prompts, references, eagle_heads, method, overrides):
    gen = build(tiny_target, eagle_heads, method, **overrides)
    accepted = drafted = longest = 0
    for prompt, ref in zip(tiny_prompts, references):
        res = gen.generate(prompt, MAX_NEW, None)
        assert res.token_ids == ref
        assert res.steps == 1 + len(res.drafted) and sum(res.emitted) + 1 == len(ref)
        if "total_tokens" in overrides:
            assert max(res.drafted) <= overrides["total_tokens"] - 1
        accepted += sum(res.accepted)
        drafted += sum(res.drafted)
        longest = max(longest, *res.accepted)
    # the trained heads know these continuations: a good share of the tokens come from accepted drafts
    assert accepted >= 20, f"accepted {accepted} of {drafted} drafted"
    if overrides.get("total_tokens", 3) > 2:
        assert longest >= 2  # paths, not only first tokens


@pytest.mark.parametrize("method", ["eagle", "eagle2", "eagle3"])
def test_budget_and_eos_are_respected(tiny_target, tiny_prompts, references, eagle_heads, method):
    gen = build(tiny_target, eagle_heads, method)
    prompt, ref = tiny_prompts[1], references[1]
    for max_new in (1, 2, 7):
        res = gen.generate(prompt, max_new, None)
        assert res.token_ids == ref[:max_new] and res.stop_reason == "max_new_tokens"
    for at in (3, 10, 20):  # stop tokens inside an accepted path must cut it there
        eos = ref[at]
        res = Decoder(tiny_target, make_verifier(Sampling()), stop_ids={eos}).generate(prompt, gen.drafter, MAX_NEW)
        assert res.token_ids == ref[: ref.index(eos) + 1] and res.stop_reason == "eos"


# -- tree mechanics --------------------------------------------------------------------------------------------

class Recorder(HeadDrafter):
    """A HeadDrafter that keeps every committed (feature, token) pair and the tree of its last proposal, and after
    each proposal compares its head outputs with the head run sequentially from scratch (``check``)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.stats = {"proposals": 0, "nodes": 0, "deepest": 0, "siblings_fed": 0}

    def begin(self, state, prefill):
        super().begin(state, prefill)
        self.hidden, self.tokens = [self.pending[0]], list(self.pending[1])

    def observe(self, state, proposal, result, out):
        super().observe(state, proposal, result, out)
        self.hidden.append(self.pending[0])
        self.tokens += self.pending[1]

    def _catch_up(self):
        self.root = super()._catch_up()
        return self.root

    def _feed(self, tree, nodes, stable):
        self.tree = tree
        parents = {tree.parents[n] for n in nodes}
        self.stats["siblings_fed"] += len(nodes) - len(parents)
        return super()._feed(tree, nodes, stable)

    def propose(self, state, max_depth):
        self.tree = None
        proposal = super().propose(state, max_depth)
        # the tree never stays in the head's cache: only the committed pairs, one per token after the first
        assert self.cache.length == len(self.tokens) == len(state.ids) - 1
        self.check(proposal, max_depth)
        return proposal

    @torch.no_grad()
    def check(self, proposal, max_depth) -> None:
        head, n = self.head, len(self.tokens)
        hidden = {k: torch.cat([h[k] for h in self.hidden]) for k in self.hidden[0]}
        cache = head.new_cache(n + 16)
        ref = head(torch.tensor([self.tokens]), head.features(hidden)[None], torch.arange(n)[None], cache, None)[0]
        torch.testing.assert_close(self.root, ref[-1], rtol=1e-4, atol=1e-4)
        self.stats["proposals"] += 1
        if self.tree is None:
            return
        tree = self.tree
        for node, out in tree.out.items():
            if node < 0:
                continue
            path = tree.ancestors(node)[::-1]
            h = ref[-1]
            for depth, m in enumerate(path, start=1):  # the root-to-node path as a chain, one token at a time
                h = head(torch.tensor([[tree.tokens[m]]]), h[None, None], torch.tensor([[n - 1 + depth]]), cache,
                         causal_mask(cache.length, 1, h.dtype))[0, 0]
            torch.testing.assert_close(out, h, rtol=1e-4, atol=1e-4)
            cache.truncate(n)
            self.stats["nodes"] += 1
            self.stats["deepest"] = max(self.stats["deepest"], len(path))
        assert all(d <= max_depth for d in tree.depth)


@pytest.mark.parametrize("variant,shape,sampling", [
    ("eagle", TreeShape("static", choices=resolve_choices("eagle_mc_sim_7b_63")), Sampling()),
    ("eagle", TreeShape("static", choices=resolve_choices(BRANCHY)), Sampling(1.0)),
    ("eagle", TreeShape("dynamic", depth=5, top_k=3, total_tokens=10), Sampling()),
    ("eagle3", TreeShape("dynamic", depth=5, top_k=3, total_tokens=10), Sampling()),
    ("eagle3", TreeShape("static", choices=resolve_choices(BRANCHY)), Sampling(0.8)),
], ids=["eagle-mc_sim-greedy", "eagle-branchy-t1", "eagle-dynamic", "eagle3-dynamic", "eagle3-branchy-t08"])
def test_tree_nodes_equal_their_path_fed_as_a_chain(tiny_target, tiny_prompts, eagle_heads, variant, shape, sampling):
    head, _ = load_head(str(eagle_heads[variant]["folder"]), tiny_target)
    drafter = Recorder(head, shape, sampling)
    decoder = Decoder(tiny_target, make_verifier(sampling))
    accepted = 0
    for i, prompt in enumerate(tiny_prompts[:2]):
        res = decoder.generate(prompt, drafter, 24, torch.Generator().manual_seed(i))
        accepted += sum(res.accepted)
    stats = drafter.stats
    assert stats["proposals"] >= 5 and stats["nodes"] >= 10, stats
    assert stats["deepest"] >= 3 and stats["siblings_fed"] > 0, stats  # masks with several ancestors and siblings
    assert accepted > 0  # catch-up after accepted paths is part of what the root comparison checks


# -- training-time test ------------------------------------------------------------------------------------------

def test_training_time_test_equals_inference(tiny_target, eagle_heads):
    """EagleLoss's step-k output at position t is what inference computes for the depth-k chain node rooted at
    committed pair t with the ground-truth tokens (KV cache: pairs 0..t, then the chain at positions t+1..t+k),
    and its label is the target's distribution for the token that node predicts."""
    samples = [s for shard in sorted(eagle_heads["eagle3"]["work"].rglob("gen_*.pt")) for s in torch.load(shard)]
    head, _ = load_head(str(eagle_heads["eagle3"]["folder"]), tiny_target)
    loss = EagleLoss(head, tiny_target.lm_head.weight, head.vocab, steps=4)
    picked = [samples[0], samples[-1], samples[len(samples) // 2]]
    batch = next(batches(picked, 3, seed=0, max_len=90))  # the cut and the padding both take part
    assert len(set(batch.lengths)) > 1 or min(batch.lengths) == 90
    w_full = tiny_target.lm_head.weight.detach().float()
    with torch.no_grad():
        unrolled = loss.unroll(batch)
        losses = loss(batch)
    assert [u.step for u in unrolled] == [0, 1, 2, 3]
    final = batch.hidden["final"]
    compared = agree = 0
    with torch.no_grad():
        for u in unrolled:
            k = u.step
            ce_rows = []
            for b in range(3):
                length, plen = batch.lengths[b], batch.prompt_lens[b]
                rows = {int(u.where[b, j]): j for j in range(u.where.shape[1]) if u.valid[b, j]}
                # a row carries a loss iff the token its node predicts, x_{t+2+k}, is an answer token
                assert sorted(rows) == [t for t in range(length - 1) if plen <= t + 2 + k <= length - 1]
                feats = head.features({key: v[b] for key, v in batch.hidden.items()})
                for t, j in rows.items():
                    cache = head.new_cache(t + k + 8)
                    pairs = batch.tokens[b : b + 1, 1 : t + 2]
                    out = head(pairs, feats[None, : t + 1], torch.arange(t + 1)[None], cache)
                    h = out[0, -1]
                    for d in range(1, k + 1):
                        h = head(batch.tokens[b : b + 1, t + 1 + d : t + 2 + d], h[None, None], torch.tensor([[t + d]]),
                                 cache, causal_mask(cache.length, 1, h.dtype))[0, 0]
                    torch.testing.assert_close(u.out[b, j], h, rtol=1e-4, atol=1e-4)
                    compared += 1
                    # the label: the target's distribution at position t+1+k, which predicts x_{t+2+k}
                    state = final[b, t + 1 + k]
                    agree += int((state @ w_full.T).argmax()) == int(batch.tokens[b, t + 2 + k])
                    label = torch.softmax(state @ w_full[head.vocab.ids].T, -1)
                    ce_rows.append(-(label * torch.log_softmax(head.logits(h), -1)).sum())
            torch.testing.assert_close(losses[f"ce{k}"], torch.stack(ce_rows).mean(), rtol=1e-4, atol=1e-4)
    assert compared > 100
    assert agree >= 0.95 * compared  # the answers are the target's greedy tokens, so its labels pick them


# -- tree builders ------------------------------------------------------------------------------------------------

def test_best_first_keeps_parents_and_the_best_scores():
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(1, 30)
        parents = [rng.randint(-1, i - 1) for i in range(n)]
        logp = [rng.choice([0.0, 0.0, -0.5, -1.0, -rng.random()]) for _ in range(n)]  # many exact ties
        scores = []
        for i, p in enumerate(parents):
            scores.append(logp[i] + (scores[p] if p >= 0 else 0.0))
        for budget in range(0, n + 2):
            keep = best_first(scores, parents, budget)
            assert keep == sorted(keep) and len(keep) == min(budget, n)
            assert all(parents[i] < 0 or parents[i] in keep for i in keep), (parents, scores, budget, keep)
            best = sorted(scores, reverse=True)[: len(keep)]
            assert sorted((scores[i] for i in keep), reverse=True) == best


def test_best_first_tie_between_parent_and_child():
    # node 1 is a child of node 0 with log-probability 0: same score, and only the parent may come first
    assert best_first([-1.0, -1.0, -2.0], [-1, 0, -1], 1) == [0]
    assert best_first([-1.0, -1.0, -1.0, -1.0], [-1, 0, 1, -1], 2) == [0, 3]


def test_choices_presets_and_parents():
    for name in CHOICES:
        paths = resolve_choices(name)
        assert paths == sorted(paths, key=lambda c: (len(c), c))
        parents = choices_parents(paths)
        assert all(p < i for i, p in enumerate(parents))
    mc = resolve_choices("eagle_mc_sim_7b_63")
    assert len(mc) == len(EAGLE_MC_SIM_7B_63) == 25 and max(len(c) for c in mc) == 5
    assert resolve_choices([[1], [0], [0, 0], [0]]) == [(0,), (1,), (0, 0)]  # sorted, duplicates merged
    assert choices_parents([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)]) == [-1, -1, 0, 1, 2]


@pytest.mark.parametrize("choices,message", [
    ([[0], [0, 0, 0]], "tree choice [0, 0, 0] has no parent [0, 0] in the list"),
    ([[0], [2]], "tree choice [2] needs its lower-ranked sibling [1]"),
    ([[0], [0, 1]], "tree choice [0, 1] needs its lower-ranked sibling [0, 0]"),
    ([], "tree choices are empty"),
    ("mc_sim_7b_63", "unknown tree choices 'mc_sim_7b_63'"),
    ([[0], []], "must be a non-empty list of ranks >= 0"),
    ([[0], [-1]], "must be a non-empty list of ranks >= 0"),
    ([0, 1], "a list of rank paths"),
    ([[0], ["a"]], "a list of rank paths"),
    (3, "a list of rank paths"),
])
def test_bad_choices_are_one_clear_line(choices, message):
    with pytest.raises(ValueError) as err:
        resolve_choices(choices)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_tree_sweep_script_takes_dynamic_tree_overrides(eagle_heads, tmp_path):
    from scripts.sweep_trees import main

    argv = eagle_heads["eagle"]["args"]
    prompts_file = argv[argv.index("--prompts-file") + 1]
    rows = main(["--methods", "eagle2", "--trees", "depth=2 top_k=1 total_tokens=3,depth=3 top_k=2 total_tokens=6",
                 "--model", "tiny-llama", "--prompts-file", prompts_file, "--holdout", "0.2", "--eval-prompts", "2",
                 "--eval-tokens", "8", "--set", f"head={eagle_heads['eagle']['folder']}", "--set", "vocab_size=64"])
    assert [r["nodes"] for r in rows] == [2, 5]
    assert all(1.0 <= r["tau"] <= 4.0 and r["prompts"] == 2 for r in rows)
