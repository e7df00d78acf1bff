"""Batched decoding (issue 38): every row of a batch decodes exactly what it would alone (greedy), samples the target's
distribution (a chi-square test, with a deliberately wrong batch as the negative control), and the runner's batched
mode records each row's batch and checks it against the prompt's batch-1 output."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from harness.core.config import EngineConfig
from harness.core.errors import SpeclabError
from harness.core.presets import method_node
from harness.core.registry import METHODS
from harness.engine import batch_decoder
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling
from harness.model.batch_forward import forward_rows, new_batch_cache

from .conftest import TINY_TEXTS, build_with_head
from .test_sampling_lossless import ALPHA, TargetLaw
from .toy import chi_square

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_NEW = 24
MORE_TEXTS = ["zzz zzz zzz", "one two one two one two one", "x y z x y z", "Hello! Hello! Hello!"]


@pytest.fixture(scope="module")
def batch_prompts(tiny_target):
    return [tiny_target.encode_chat([{"role": "user", "content": t}]) for t in TINY_TEXTS + MORE_TEXTS]


def engine_method(target, spec: str, sampling: Sampling = Sampling()):
    return METHODS.build(method_node(spec), MethodContext(target, sampling, OmegaConf.structured(EngineConfig(kernel="torch"))))


def head_method(target, folder, family: str):
    from methods.eagle2 import Eagle2Config
    from methods.medusa import MedusaConfig

    schema = {"eagle2": Eagle2Config, "medusa": MedusaConfig}[family]
    return build_with_head(target, schema, folder, dtype="float32", vocab_size=64)


def assert_rows_equal_batch_one(gen, prompts, sizes=((2, "continuous"), (3, "drain"), (5, "continuous"))) -> int:
    alone = [gen.generate(p, MAX_NEW, None) for p in prompts]
    drafted = 0
    for size, mode in sizes:
        batch = gen.generate_batch(prompts, MAX_NEW, [None] * len(prompts), size, mode == "continuous")
        for got, want in zip(batch.results, alone):
            assert got.token_ids == want.token_ids and got.stop_reason == want.stop_reason, (gen.name, size, mode)
            assert got.steps == len(got.drafted) + 1 and got.new_tokens == 1 + sum(got.emitted)
        drafted += sum(sum(r.drafted) for r in batch.results)
        assert batch.wall_time > 0 and len(batch.latency) == len(prompts)
    return drafted


@pytest.mark.parametrize("spec", ["ar", "pld", "recycling", "sam", "lookahead", "adaptive", "sam_recycling"])
def test_training_free_rows_equal_their_batch_one_output(tiny_target, batch_prompts, spec):
    drafted = assert_rows_equal_batch_one(engine_method(tiny_target, spec), batch_prompts)
    assert (drafted > 0) == (spec != "ar")  # the rows did draft (tree methods: compacted per row)


def test_draft_model_rows_equal_their_batch_one_output(tiny_target, batch_prompts, layer_draft_folder):
    gen = engine_method(tiny_target, f"sps draft.path={layer_draft_folder} vocab_size=null k=3")
    assert assert_rows_equal_batch_one(gen, batch_prompts) > 0


@pytest.mark.parametrize("family", ["eagle2", "medusa"])
def test_head_rows_equal_their_batch_one_output(tiny_target, batch_prompts, eagle_heads, parallel_heads, family):
    folder = eagle_heads["eagle"]["folder"] if family == "eagle2" else parallel_heads["medusa"]["folder"]
    assert assert_rows_equal_batch_one(head_method(tiny_target, folder, family), batch_prompts) > 0


def test_a_batched_forward_equals_each_row_alone(tiny_target):
    """Ragged rows, one of them a tree: each row's logits equal its own batch-1 forward's."""
    from harness.engine import tree as T

    prompts = [list(range(3, 3 + n)) for n in (5, 11, 7)]
    cache = new_batch_cache(tiny_target, 3, 64)
    alone = []
    for r, p in enumerate(prompts):
        forward_rows(tiny_target, cache, range(r, r + 1), [p], [None])
        cache.keep(r, range(len(p)))
        own = tiny_target.new_cache(64)
        tiny_target.forward(own, p)
        alone.append(own)
    parents = [-1, -1, 0, 1]
    inputs = [[50, 51, 52], [60, 61, 62, 63, 64], [70]]
    trees = [None, ([0] + T.depths(parents), T.ancestor_mask(parents)), None]
    for _ in range(2):
        outs = forward_rows(tiny_target, cache, range(3), inputs, trees)
        for r, own in enumerate(alone):
            start = own.length
            if r == 1:
                ref = tiny_target.forward(own, inputs[r], positions=T.positions(parents, start), tree=T.ancestor_mask(parents))
                keep = [0, 2, 4]  # root, node 1, node 3: a path that is not a prefix (a gather)
            else:
                ref = tiny_target.forward(own, inputs[r])
                keep = list(range(len(inputs[r])))
            torch.testing.assert_close(outs[r].logits, ref.logits, rtol=1e-4, atol=1e-4)
            cache.keep(r, keep)
            own.keep(start, keep)


def test_what_cannot_batch_is_one_clear_line(tiny_target, batch_prompts):
    from harness.loading.sources import load_target

    with pytest.raises(SpeclabError, match="layerskip drafts on the target's own KV cache"):
        engine_method(tiny_target, "layerskip adapter=none exit_layer=1").generate_batch(batch_prompts, 8, None, 2)
    gemma = load_target("tiny-gemma3", "tiny", tiny=__import__("harness.core.config", fromlist=["TinySpec"]).TinySpec(family="gemma3"))
    with pytest.raises(SpeclabError, match="sliding-window layers"):
        engine_method(gemma, "ar").generate_batch(batch_prompts[:2], 8, None, 2)
    with pytest.raises(SpeclabError, match="does not decode in batches"):
        engine_method(tiny_target, "hf_generate").generate_batch(batch_prompts, 8, None, 2)


# -- sampling at B > 1 keeps the target's distribution -----------------------------------------------------------
LENGTH = 3
N = 1200


def batched_samples(gen, prefixes: list[list[int]], n: int, seed: int = 0) -> tuple[list[tuple[int, ...]], int]:
    """The first LENGTH tokens of ``n`` generations after ``prefixes[0]``, decoded in batches of 6 that interleave it
    with ``prefixes[1]``, each row with its own seeded generator; and how many draft tokens were accepted."""
    rows = [prefixes[i % 2] for i in range(6)]
    out, batch_index, accepted = [], 0, 0
    while len(out) < n:
        gens = [torch.Generator().manual_seed(seed + 6 * batch_index + i) for i in range(6)]
        batch = gen.generate_batch(rows, LENGTH, gens, 6, True)
        out += [tuple(r.token_ids[:LENGTH]) for r, p in zip(batch.results, rows) if p is prefixes[0]]
        accepted += sum(sum(r.accepted) for r in batch.results)
        batch_index += 1
    return out[:n], accepted


@pytest.fixture(scope="module")
def sampled_setup(tiny_target, tiny_prompts, layer_draft_folder):
    s = Sampling(1.0)
    gen = engine_method(tiny_target, f"sps draft.path={layer_draft_folder} vocab_size=null k=3", s)
    prefixes = [tiny_prompts[0], tiny_prompts[2]]
    law = TargetLaw(tiny_target, prefixes[0], s, LENGTH, 2.0 / N)
    return gen, prefixes, law


def counts_of(seqs, law) -> dict:
    counts: dict = {}
    for seq in seqs:
        counts[law.cell(seq)] = counts.get(law.cell(seq), 0) + 1
    return counts


def test_sampled_rows_keep_the_target_distribution(sampled_setup):
    gen, prefixes, law = sampled_setup
    seqs, accepted = batched_samples(gen, prefixes, N)
    pvalue, tv = chi_square(counts_of(seqs, law), law.cells)
    assert pvalue > ALPHA, f"p={pvalue:.2e}, TV={tv:.4f}"
    assert accepted > N // 2  # the tokens went through the rejection rule, not just the prefill


def test_rows_verified_with_their_neighbours_logits_are_caught(sampled_setup, monkeypatch):
    """Negative control: a batch that verifies each row's draft with the next row's logits (another prompt's)."""
    gen, prefixes, law = sampled_setup

    def shifted(target, cache, span, inputs, trees, hidden_layers=(), last_logits=False):
        outs = forward_rows(target, cache, span, inputs, trees, hidden_layers, last_logits)
        return outs if len(outs) == 1 else outs[1:] + outs[:1]  # prefills untouched, decoding steps shifted

    monkeypatch.setattr(batch_decoder, "forward_rows", shifted)
    seqs, _ = batched_samples(gen, prefixes, N // 2)
    pvalue, tv = chi_square(counts_of(seqs, law), law.cells)
    assert pvalue < 1e-8, f"p={pvalue:.2e}, TV={tv:.4f}"


# -- the runner's batched mode -------------------------------------------------------------------------------------
def test_a_batched_run_records_its_batches_and_checks_rows_against_batch_one(tmp_path, monkeypatch):
    from harness.api import run
    from harness.core.config import REPO

    from .test_runs import tiny_cfg

    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path / "cache"))
    fixture = REPO / "tests/fixtures/mt_bench_prompts.jsonl"
    cfg = tiny_cfg(tmp_path, "task=mtbench", f"task.path={fixture}", "method=pld", "compare=[recycling]",
                   "batch_size=3", "max_new_tokens=12", "engine.warmup=true")
    df = run(cfg)
    assert set(df.batch_size) == {3} and set(df.batch_mode) == {"continuous"}
    assert (df.batch_tokens_per_s > 0).all() and (df.latency_s > 0).all()
    assert set(df.turn) == {1, 2} and set(df[df.turn == 2].history_source) == {"reference"}
    assert df.equivalent.all()  # every row, the batched baseline's too, equals its batch-1 output
    m = df[df.role == "method"]
    assert m.speedup.notna().all() and m.groupby("method").drafted_tokens.sum().gt(0).all()
    assert len(list((tmp_path / "cache" / "references").glob("*.json"))) == df[df.role == "baseline"].shape[0]
    # a second run over the same folder finds every wave done
    again = run(cfg)
    assert len(again) == len(df)


# -- the batch-aware draft length ------------------------------------------------------------------------------------
def step_model(ms):
    from harness.drafting.depth_policy import BatchStepModel

    model = BatchStepModel(ms)
    for _ in range(3):  # calibrated: seconds = the surface's milliseconds / 1000
        model.record(4, 4, ms(4, 1) / 1e3)
        model.record(16, 16, ms(16, 1) / 1e3)
    return model


def test_the_batch_plan_drafts_where_verification_is_flat_and_not_where_it_is_not():
    from harness.drafting.depth_policy import plan_batch

    likely = [1.0] + [0.8 ** d for d in range(1, 9)]  # a row that copies: each depth 80% likely given the last
    unlikely = [1.0] + [0.1 ** d for d in range(1, 9)]
    no_draft_cost = lambda depth: 0.0  # noqa: E731
    flat = step_model(lambda b, k: 10.0 * (1 + 0.01 * b * (k - 1)))  # verifying a token costs 1% of a step
    steep = step_model(lambda b, k: 10.0 * b * k)  # past the flat part: a token costs what a step costs
    assert plan_batch([likely] * 4, [8] * 4, no_draft_cost, flat) == [8] * 4
    assert plan_batch([likely] * 16, [8] * 16, no_draft_cost, steep) == [0] * 16  # batched ar
    mixed = plan_batch([likely, unlikely, likely, unlikely], [8] * 4, no_draft_cost,
                       step_model(lambda b, k: 10.0 * (1 + 0.15 * b * (k - 1))))
    assert mixed[0] == mixed[2] > mixed[1] == mixed[3]  # the tokens go where they are likeliest accepted
    assert plan_batch([likely, likely], [2, 8], no_draft_cost, flat) == [2, 8]  # each row within its budget
    assert plan_batch([unlikely] * 16, [8] * 16, no_draft_cost, steep, floor=[1] + [0] * 15)[0] == 1  # exploration
    # drafting time counts: a drafter slower than the tokens it wins drafts nothing
    assert plan_batch([likely] * 4, [8] * 4, lambda depth: 1.0 * depth, flat) == [0] * 4


def test_adaptive_in_a_batch_plans_every_row_and_stays_lossless(tiny_target, batch_prompts, monkeypatch):
    from methods import adaptive

    planned = []
    plan = adaptive.plan_batch

    def spy(reach, caps, drafting, step, floor=None):
        depths = plan(reach, caps, drafting, step, floor)
        planned.append((len(reach), depths))
        return depths

    monkeypatch.setattr(adaptive, "plan_batch", spy)
    gen = engine_method(tiny_target, "adaptive")
    assert_rows_equal_batch_one(gen, batch_prompts, sizes=((4, "continuous"),))
    assert planned and max(n for n, _ in planned) == 4 and any(sum(d) for _, d in planned)
    assert gen.drafter.batch_step is not None and gen.drafter.batch_step.ratio  # calibrated on the run's own steps


def test_the_batch_sweep_table_finds_where_a_method_stops_paying():
    import pandas as pd

    from harness.results.batch_sweep import batch_table, crossovers, plot_speedup_vs_batch

    rows = []
    for size, speedup in ((1, 1.5), (2, 1.2), (4, 0.9), (8, 0.7)):
        for p in range(6):
            base = {"run_id": f"r{size}", "prompt_id": f"p{p}", "batch_size": size, "batch_id": "0:0", "repeat": 0,
                    "steps": 10, "equivalent": True}
            jitter = 1 + 0.01 * p
            rows.append({**base, "role": "baseline", "method": "ar", "new_tokens": 100, "wall_time_s": 1.0 * jitter,
                         "batch_wall_time_s": 10.0})
            rows.append({**base, "role": "method", "method": "pld", "new_tokens": 100,
                         "wall_time_s": jitter / speedup, "batch_wall_time_s": 10.0 / speedup})
    table = batch_table(pd.DataFrame(rows))
    assert table.set_index("batch_size").speedup_geomean.round(3).to_dict() == {1: 1.5, 2: 1.2, 4: 0.9, 8: 0.7}
    assert table.set_index("batch_size").throughput_ratio.round(3).to_dict() == {1: 1.5, 2: 1.2, 4: 0.9, 8: 0.7}
    (found,) = crossovers(table).to_dict("records")
    assert found["crossover_batch_size"] == 4 and found["significant"] and found["largest_batch_tried"] == 8
    assert plot_speedup_vs_batch(table).axes[0].get_xscale() == "log"
