"""Training-free drafters: the datastore, the suffix automaton, and greedy identity of rest, sam (alone and with
each auxiliary drafter), recycling and lookahead with plain decoding on the tiny target."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness.core.errors import SpeclabError
from harness.core.registry import METHODS
from harness.drafting import datastore as ds
from harness.drafting.suffix_automaton import Matcher, SuffixAutomaton
from harness.drafting.tree_shapes import best_first_order, cost_optimal_size, prefix_tree
from harness.engine.drafter import DecodeState
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling

from .conftest import compose
from .test_greedy_equivalence import MAX_NEW, decode, hf_greedy

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the datastore ---------------------------------------------------------------------------------------


def brute_occurrences(entries, query):
    text = []
    for e in entries:
        text += list(e) + [None]
    m = len(query)
    return sorted(i for i in range(len(text) - m + 1) if text[i : i + m] == list(query))


def test_suffix_array_search_finds_every_occurrence_and_never_crosses_entries():
    rng = random.Random(0)
    entries = [[rng.randrange(4) for _ in range(rng.randrange(1, 40))] for _ in range(30)]
    store = ds.Datastore.build(entries, vocab_size=4)
    for _ in range(200):
        q = [rng.randrange(4) for _ in range(rng.randrange(1, 5))]
        assert sorted(store.occurrences(q).tolist()) == brute_occurrences(entries, q)
    conts, matched = store.continuations([9, 9] + entries[3][:6], max_suffix=6, min_suffix=1, max_hits=1000, length=50)
    assert matched == 6 and conts
    assert all(store.separator not in c.tolist() for c in conts)  # cut at the end of the entry


def test_datastore_keeps_ids_past_16_bits_and_round_trips(tmp_path):
    vocab = 150_000  # Qwen-sized: REST's 16-bit format would fold these ids
    entries = [[70_000, 140_000, 5, 70_000, 140_000, 149_999]]
    store = ds.Datastore.build(entries, vocab, {"tokenizer": "x"})
    conts, matched = store.continuations([1, 70_000, 140_000], 4, 1, 10, 4)
    assert matched == 2 and sorted(c.tolist() for c in conts) == [[5, 70_000, 140_000, 149_999], [149_999]]
    path = store.save(tmp_path / "d.npz")
    again = ds.load(path)
    assert again.tokens.tolist() == store.tokens.tolist() and again.sa.tolist() == store.sa.tolist()
    assert again.meta["entries"] == 1 and again.meta["tokens"] == 6
    with pytest.raises(SpeclabError, match="outside"):
        ds.Datastore.build([[vocab]], vocab)


def test_datastore_errors_name_the_fix(tmp_path, tiny_target):
    with pytest.raises(SpeclabError, match="build_datastore.py"):
        ds.load(tmp_path / "missing.npz")
    store = ds.Datastore.build([[1, 2, 3]], tiny_target.vocab_size, {"tokenizer": "0123456789abcdef", "model": "other"})
    path = store.save(tmp_path / "other.npz")
    with pytest.raises(SpeclabError, match="another tokenizer"):
        ds.load(path, tiny_target.tokenizer)


# -- the suffix automaton --------------------------------------------------------------------------------


def test_matcher_follows_the_longest_earlier_match_of_a_growing_text():
    rng = random.Random(1)
    for _ in range(150):
        text = [rng.randrange(3) for _ in range(rng.randrange(1, 50))]
        sam = SuffixAutomaton()
        m = Matcher(sam)
        for i, t in enumerate(text):
            m.feed(t)
            sam.extend(t)
            best = 0
            for n in range(1, i + 1):
                if any(text[j : j + n] == text[i + 1 - n : i + 1] for j in range(i - n + 1)):
                    best = n
                else:
                    break
            assert m.length == best
            if best:
                first = min(j for j in range(i - best + 1) if text[j : j + best] == text[i + 1 - best : i + 1])
                after = text[first + best : i + 1]
                draft = m.draft(4)
                assert draft[: len(after)] == after[:4] if len(after) >= 4 else len(draft) >= len(after) > 0


def test_static_automaton_matches_a_stream_against_a_corpus():
    corpus = [5, 6, 7, 8, 9, 1, 2, 3]
    m = Matcher(SuffixAutomaton(corpus))
    m.feed_all([0, 6, 7])
    assert m.length == 2 and m.draft(3) == [8, 9, 1]
    m.feed(4)
    assert m.length == 0 and m.draft(3) == []


# -- trees from counts, and the cost cut -----------------------------------------------------------------


def test_cost_cut_stops_where_another_node_costs_more_than_it_brings():
    cost = lambda k: 1.0 if k <= 8 else 2.0 + k  # noqa: E731  free up to 8 tokens, then steep
    assert cost_optimal_size([0.9] * 20, cost, 20) == 7
    assert cost_optimal_size([0.0] * 5, cost, 5) == 0  # worthless nodes: verify none
    assert cost_optimal_size([0.9] * 20, lambda k: 1.0, 5) == 5  # the cap
    tree = prefix_tree([[1, 2], [1, 3], [1, 2], [4]])
    order = best_first_order([np.log(c / 4) for c in tree.counts], tree.parents)
    assert [tree.tokens[i] for i in order] == [1, 2, 4, 3]  # 3/4, 2/4, 1/4 (shallower first), 1/4


# -- greedy identity on the tiny target ------------------------------------------------------------------


@pytest.fixture(scope="module")
def references(tiny_target, tiny_prompts):
    return [hf_greedy(tiny_target, p, MAX_NEW) for p in tiny_prompts]


@pytest.fixture(scope="module")
def tiny_datastore(tmp_path_factory, tiny_target, tiny_prompts, references):
    """The tiny target's own answers (so drafts get accepted) and noise entries (so some are rejected)."""
    rng = random.Random(2)
    noise = [[rng.randrange(tiny_target.vocab_size) for _ in range(30)] for _ in range(20)]
    answers = [ref[: len(ref) // 2 + 3 * i] for i, ref in enumerate(references)]  # partly covered answers
    store = ds.Datastore.build(answers + noise, tiny_target.vocab_size,
                               {"tokenizer": ds.tokenizer_fingerprint(tiny_target.tokenizer), "model": "tiny-llama"})
    return store.save(tmp_path_factory.mktemp("datastore") / "tiny.npz")


def build_method(target, *overrides: str):
    from harness.core.config import EngineConfig

    cfg = compose("model=tiny-llama", *overrides).method
    return METHODS.build(cfg, MethodContext(target, Sampling(), EngineConfig(kernel="torch")))


CASES = {
    "rest": ["method=rest", "method.total_tokens=12"],
    "rest_auto": ["method=rest"],
    "recycling": ["method=recycling", "method.total_tokens=10"],
    "recycling_per_prompt": ["method=recycling", "method.total_tokens=6", "method.persist=false"],
    "recycling_context": ["method=recycling", "method.total_tokens=10", "method.context=2"],
    "recycling_context3_auto": ["method=recycling", "method.context=3"],
    "recycling_prompt": ["method=recycling", "method.total_tokens=8", "method.recycle_prompt=true", "method.context=2"],
    "sam": ["method=sam", "method.threshold=1", "method.max_tokens=8"],
    "sam_pld": ["method=sam", "method.aux=pld"],
    "sam_recycling": ["method=sam_recycling", "method.aux='recycling total_tokens=8'"],
    "sam_static": ["method=sam", "method.static=true", "method.len_bias=0", "method.threshold=2", "method.aux=pld"],
    "sam_eagle2": ["method=sam", "method.aux='eagle2 head={eagle_head}'"],
    "lookahead": ["method=lookahead"],
    "lookahead_wide": ["method=lookahead", "method.ngram=5", "method.window=7", "method.guesses=7"],
    "lookahead_bigram": ["method=lookahead", "method.ngram=2", "method.window=1", "method.guesses=0"],
    "lookahead_pool_from_prompt": ["method=lookahead", "method.pool_from_prompt=true", "method.window=2"],
    "layerskip": ["method=layerskip", "method.adapter=none", "method.exit_layer=1", "method.k=3"],
    "layerskip_adapter": ["method=layerskip", "method.adapter={adapter}", "method.exit_layer=1"],
    "sjd": ["method=sjd", "method.window=4"],
    "sjd_coupled": ["method=sjd_coupled"],
    "adaptive": ["method=adaptive"],
    "adaptive_recycling": ["method=adaptive", "method.inner='recycling total_tokens=8'", "method.max_depth=3"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_output_equals_plain_decoding(case, tiny_target, tiny_prompts, references, tiny_datastore,
                                             tmp_path_factory, monkeypatch, request):
    from harness.engine import cost_curve

    monkeypatch.setattr(cost_curve, "cache_dir", lambda: tmp_path_factory.getbasetemp() / "curves")  # auto: a curve of its own
    overrides = CASES[case]
    if case == "sam_eagle2":  # the tiny EAGLE head trained for tests/test_eagle.py
        head = request.getfixturevalue("eagle_heads")["eagle"]["folder"]
        overrides = [o.replace("{eagle_head}", str(head)) for o in overrides]
    if case == "layerskip_adapter":
        folder, _ = request.getfixturevalue("early_exit_adapter")
        overrides = [o.replace("{adapter}", str(folder)) for o in overrides]
    if case.startswith("rest") or case == "sam_static":
        overrides.append(f"method.datastore={tiny_datastore}")
    gen = build_method(tiny_target, *overrides)
    drafted = accepted = 0
    for prompt, ref in zip(tiny_prompts, references):
        res = decode(tiny_target, gen.drafter, prompt)
        assert res.token_ids == ref, case
        drafted += sum(res.drafted)
        accepted += sum(res.accepted)
    assert drafted > 0, f"{case} never drafted: the test would prove nothing"
    if case.startswith(("rest", "sam")):
        assert accepted > 0, f"{case}: nothing accepted (its drafts come from text the target repeats)"


@pytest.fixture(scope="module")
def early_exit_adapter(eagle_heads, tmp_path_factory):
    """scripts/train_early_exit.py on the tiny target, reading the answers cached for the EAGLE heads."""
    from scripts.train_early_exit import main

    args = eagle_heads["eagle"]["args"]

    def arg(name: str) -> str:
        return args[args.index(name) + 1]

    out = tmp_path_factory.mktemp("early_exit")
    stats = main(["--model", "tiny-llama", "--exit-layer", "1", "--prompts-file", arg("--prompts-file"),
                  "--prompts", arg("--prompts"), "--gen-tokens", arg("--gen-tokens"), "--gen-batch", arg("--gen-batch"),
                  "--holdout", "0.2", "--batch", "64", "--lr", "1e-2", "--train-minutes", "1", "--max-steps", "80",
                  "--eval-every", "40", "--eval-prompts", "2", "--eval-tokens", "8", "--threads", "1",
                  "--work", arg("--work"), "--out", str(out)])
    return out, stats


def test_early_exit_adapter_learns_and_is_written_with_its_curve(early_exit_adapter, tiny_target):
    from harness.drafting.early_exit import load_adapter

    folder, stats = early_exit_adapter
    curve = stats["curve"]
    assert [c["step"] for c in curve] == [0, 40, 80]
    assert curve[-1]["heldout_agreement"] > curve[0]["heldout_agreement"], curve  # better than the plain early exit
    adapter = load_adapter(folder, tiny_target)
    assert adapter.exit_layer == 1 and float(adapter.proj.weight.detach().abs().sum()) > 0
    assert "Learning curve" in (folder / "README.md").read_text()
    with pytest.raises(SpeclabError, match="train_early_exit.py"):
        build_method(tiny_target, "method=layerskip", "method.exit_layer=1")  # no committed adapter for tiny-llama


def test_sam_hands_over_to_its_auxiliary_drafter_and_says_so(tiny_target, tiny_prompts):
    """A random tiny model seldom repeats itself: with threshold=1 the automaton drafts after a token seen before
    and hands over otherwise."""
    gen = build_method(tiny_target, "method=sam_recycling", "method.aux='recycling total_tokens=4'", "method.max_tokens=6",
                       "method.threshold=1")
    steps = {"aux": 0, "dynamic": 0}
    for prompt in tiny_prompts:
        res = decode(tiny_target, gen.drafter, prompt)
        for source in steps:
            steps[source] += res.extra.get(f"steps_{source}", 0)
    assert steps["aux"] > 0 and steps["dynamic"] > 0, steps


def test_recycling_keeps_its_matrix_across_prompts_only_when_asked(tiny_target, tiny_prompts):
    kept = build_method(tiny_target, "method=recycling", "method.total_tokens=4").drafter
    fresh = build_method(tiny_target, "method=recycling", "method.total_tokens=4", "method.persist=false").drafter
    for d in (kept, fresh):
        decode(tiny_target, d, tiny_prompts[0], max_new=8)
        known = int((d.successors[:, 0] >= 0).sum())
        decode(tiny_target, d, tiny_prompts[1], max_new=8)
        d.known_after = (known, int((d.successors[:, 0] >= 0).sum()))
    assert kept.known_after[1] > kept.known_after[0]  # grew on the second prompt
    assert fresh.known_after[1] < kept.known_after[1]  # started over


def test_recycling_context_prefers_the_successors_of_the_last_two_tokens(tiny_target):
    """With context=2 a token's successors after a given previous token win over its last-seen successors."""
    d = build_method(tiny_target, "method=recycling", "method.total_tokens=2", "method.context=2", "method.top_k=2",
                     "method.template=[[0],[1]]").drafter
    d.successors[7] = torch.tensor([1, 2])  # what followed 7 most recently, in some other context
    d.keyed[(5, 7)] = [3, 4]  # what followed "5 7"
    assert d.successor((5, 7), 0) == 3 and d.successor((6, 7), 0) == 1 and d.successor((7,), 1) == 2
    state = DecodeState(ids=[9, 5, 7], prompt_len=2, max_new_tokens=4, target=tiny_target, sampling=Sampling(), generator=None)
    assert d.propose(state, 3).tokens == [3]
    state.ids[1] = 6  # an unseen pair falls back to the matrix
    assert d.propose(state, 3).tokens == [1]


def test_recycle_prompt_records_the_targets_top_k_at_every_prompt_position(tiny_target, tiny_prompts):
    prompt = tiny_prompts[0]
    full = tiny_target.forward(tiny_target.new_cache(len(prompt) + 8), prompt).logits  # every position's logits
    # a repeated token keeps its last position's list; the prompt's last token gets the prefill's own last row
    last = {tok: pos for pos, tok in enumerate(prompt[:-1]) if tok != prompt[-1]}
    for flag in (True, False):
        d = build_method(tiny_target, "method=recycling", "method.total_tokens=4", f"method.recycle_prompt={flag}").drafter
        decode(tiny_target, d, prompt, max_new=1)  # the prefill, then begin
        recorded = [d.successors[tok, :4].tolist() == full[pos].topk(4).indices.tolist() for tok, pos in last.items()]
        assert len(recorded) > 3 and (all(recorded) if flag else not any(recorded))


def test_lookahead_pools_the_text_only_when_asked(tiny_target):
    from harness.model.target import ForwardOutput

    ids = [3, 4, 5, 3, 4, 6]
    prefill = ForwardOutput(logits=torch.zeros(1, tiny_target.vocab_size), hidden={})
    for flag, expected in ((True, {4: [(5,), (6,)], 5: [(3,)], 3: [(4,)]}), (False, {})):
        d = build_method(tiny_target, "method=lookahead", "method.ngram=2", f"method.pool_from_prompt={flag}").drafter
        d.begin(DecodeState(ids=list(ids), prompt_len=5, max_new_tokens=4, target=tiny_target, sampling=Sampling(),
                            generator=None), prefill)
        assert {k: list(v) for k, v in d.pool.items()} == expected


@pytest.mark.parametrize("overrides, message", [
    (["method=rest", "method.datastore=/nonexistent/d.npz"], "build_datastore.py"),
    (["method=rest"], "no default datastore for model 'tiny-llama'"),
    (["method=rest", "method.total_tokens=0"], "total_tokens"),
    (["method=recycling", "method.top_k=2"], "top_k"),
    (["method=recycling", "method.context=0"], "method.context must be 1"),
    (["method=sam", "method.aux=sam"], "sam cannot wrap itself"),
    (["method=sam", "method.aux=hf_generate"], "not an engine method"),
    (["method=sam", "method.threshold=0"], "threshold"),
    (["method=lookahead", "method.ngram=1"], "ngram >= 2"),
    (["method=layerskip", "method.adapter=none", "method.exit_layer=9"], "exit_layer must be in"),
])
def test_bad_settings_get_one_clear_line(tiny_target, overrides, message):
    with pytest.raises(SpeclabError, match=message):
        build_method(tiny_target, *overrides)
