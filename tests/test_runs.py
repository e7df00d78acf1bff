"""Runs on the tiny model through the Python API: results columns, turn-2 history, cached baselines,
equivalence with tie margins, resume and the run folder (the kill-and-resume test is in test_resume.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from harness.api import run
from harness.bench.equivalence import equivalence
from harness.bench.runner import Runner
from harness.core.errors import SpeclabError
from harness.core.presets import as_config
from harness.results.metrics import aggregate, repetition_4gram, summarize

from .conftest import REPO, compose

FIX = REPO / "tests" / "fixtures"
MT_FIXTURE = f"task.path={FIX / 'mt_bench_prompts.jsonl'}"


def tiny_cfg(tmp_path, *overrides: str, name: str = "run"):
    cfg = compose("model=tiny-llama", "engine.warmup=false", "progress=false", "max_new_tokens=8", *overrides)
    cfg.out_dir = str(tmp_path / name)
    return cfg


def texts_of(folder) -> list[dict]:
    return [json.loads(line) for line in open(folder / "samples.jsonl")]


def pooled_geomean(rows: pd.DataFrame, reference: pd.DataFrame, time: str = "wall_time_s") -> tuple[float, int]:
    """(geometric mean over prompts of rows' tokens per ``time`` second over the reference rows' tokens/s, each
    prompt pooling its turns and repeats; prompts paired): README's per-task speedup, computed here from the rows
    alone, and the number of prompts it paired."""
    own = rows.groupby("prompt_id")[["new_tokens", time]].sum()
    ref = reference.groupby("prompt_id")[["new_tokens", "wall_time_s"]].sum()
    ratio = ((own.new_tokens / own[time]) / (ref.new_tokens / ref.wall_time_s)).dropna()
    return float(np.exp(np.log(ratio).mean())), len(ratio)


# -- the Python API, quality and honesty columns -------------------------------------------------------


def test_run_api_returns_the_results_frame_with_quality_columns(tmp_path):
    cfg = tiny_cfg(tmp_path, "task.limit=2", "engine.threads=1")
    df = run(cfg)
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert sorted(df.role) == ["baseline", "baseline", "method", "method"]
    on_disk = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert on_disk.timestamp.tolist() == df.timestamp.tolist()

    for col in ("repetition_4gram", "prefill_time_s", "ms_per_step", "peak_rss_mb", "threads", "foreign_load"):
        assert col in df.columns, col
    assert (df.threads == 1).all()
    assert (df.prefill_time_s > 0).all() and (df.prefill_time_s < df.wall_time_s).all()
    expected_ms = 1e3 * (df.wall_time_s - df.prefill_time_s) / (df.steps - 1).clip(lower=1)
    assert ((df.ms_per_step - expected_ms).abs() < 1e-9).all()
    assert (df.peak_rss_mb > 10).all()
    assert df.foreign_load.dropna().ge(0).all()
    ids = {(t["prompt_id"], t["role"]): t["token_ids"] for t in texts_of(tmp_path / "run")}
    for r in df.itertuples():
        assert r.repetition_4gram == repetition_4gram(ids[(r.prompt_id, r.role)])

    # a plain dict works too, and the same config resumes: nothing runs again
    again = run(OmegaConf.to_container(cfg))
    assert again.timestamp.tolist() == df.timestamp.tolist()


def test_repetition_4gram():
    assert repetition_4gram([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition_4gram([1, 2, 3, 4] * 3) == pytest.approx(5 / 9)  # 9 4-grams: the first four are new, the other five repeat
    assert repetition_4gram([1, 2]) == 0.0


# -- turn 2 follows the baseline's own turn-1 answer on both sides -------------------------------------


def test_turn_two_is_asked_after_the_baseline_answer(tmp_path):
    runner = Runner(as_config(tiny_cfg(tmp_path, "task=mtbench", MT_FIXTURE, "max_new_tokens=10")))
    tok = runner.target.tokenizer
    z = tok.convert_tokens_to_ids("Z")
    seen: dict[str, list[list[int]]] = {"method": [], "baseline": []}

    def spy(side, generate, replace):
        def wrapped(ids, n, rng):
            seen[side].append(list(ids))
            res = generate(ids, n, rng)
            if replace:  # the method answers differently, so history taken from the wrong side would show
                res.token_ids = [z] * len(res.token_ids)
            return res
        return wrapped

    method = runner.methods[0][1]
    method.generate = spy("method", method.generate, True)
    runner.baseline.generate = spy("baseline", runner.baseline.generate, False)
    df = runner.run()

    texts = {(t["prompt_id"], t["turn"], t["role"]): t["text"] for t in texts_of(tmp_path / "run")}
    for i, sample in enumerate(runner.samples):
        answer = texts[(sample.id, 1, "baseline")]
        assert answer != texts[(sample.id, 1, "method")]
        expected = runner.task.render(sample, 1, [answer], tok)
        assert seen["method"][2 * i + 1] == expected and seen["baseline"][2 * i + 1] == expected
        turn2 = df[(df.prompt_id == sample.id) & (df.turn == 2)]
        assert set(turn2.role) == {"method", "baseline"}
        assert (turn2.prompt_tokens == len(expected)).all() and (turn2.history_source == "baseline").all()
    assert df[df.turn == 1].history_source.isna().all()


def test_without_baseline_the_history_is_the_method_own(tmp_path):
    df = run(tiny_cfg(tmp_path, "task=mtbench", MT_FIXTURE, "baseline=none", "max_new_tokens=4"))
    assert set(df.role) == {"method"} and len(df) == 4
    assert (df[df.turn == 2].history_source == "method").all()


# -- baseline=cached -----------------------------------------------------------------------------------


def test_cached_baseline_is_shared_across_methods_and_never_across_weights(tmp_path):
    common = ("baseline=cached", f"baseline.cache_dir={tmp_path / 'cache'}", "task.limit=2", "engine.warmup=true")
    first = run(tiny_cfg(tmp_path, *common, "method=pld", name="pld"))
    assert (first[first.role == "baseline"].baseline_source == "run").all()
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2

    # another method, same model: the baseline generator is never called (warm-up included)
    runner = Runner(as_config(tiny_cfg(tmp_path, *common, "method=ar", name="ar")))
    runner.baseline.generate = lambda *a, **k: pytest.fail("the cached baseline ran again")
    second = runner.run()
    b1 = first[first.role == "baseline"].set_index("prompt_id")
    b2 = second[second.role == "baseline"].set_index("prompt_id")
    assert (b2.baseline_source == "cache").all() and len(b2) == 2
    assert (b2.output_hash == b1.output_hash).all() and (b2.wall_time_s == b1.wall_time_s).all()
    assert (b2.run_id != b1.run_id).all()  # the rows belong to the new run, the measurement to the old one
    m2 = second[second.role == "method"]
    assert m2.speedup.notna().all() and m2.equivalent.all()

    # other weights (tiny seed 1): a new weights hash, so the baseline runs
    runner = Runner(as_config(tiny_cfg(tmp_path, *common, "method=ar", "model.tiny.seed=1", name="seed1")))
    calls = []
    generate = runner.baseline.generate
    runner.baseline.generate = lambda *a: calls.append(1) or generate(*a)
    third = runner.run()
    b3 = third[third.role == "baseline"]
    assert (b3.baseline_source == "run").all() and len(calls) >= 2
    assert set(b3.weights_hash).isdisjoint(set(b1.weights_hash))
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4


def test_cached_baseline_keeps_its_provenance_and_is_keyed_on_the_engine(tmp_path, monkeypatch):
    from harness.core import hostinfo

    common = ("baseline=cached", f"baseline.cache_dir={tmp_path / 'cache'}", "task.limit=1")
    first = run(tiny_cfg(tmp_path, *common, "method=pld", name="pld"))
    measured = first[first.role == "baseline"].iloc[0]

    # later, at another commit: the cached row is this run's, but says when and with what it was measured
    monkeypatch.setattr(hostinfo, "git_sha", lambda: "0123456789ab")
    second = run(tiny_cfg(tmp_path, *common, "method=ar", name="ar"))
    cached = second[second.role == "baseline"].iloc[0]
    assert cached.baseline_source == "cache" and cached.run_id == second.run_id.iloc[0] != measured.run_id
    for col in ("git_sha", "code_hash", "versions", "timestamp", "host", "wall_time_s"):
        assert cached[col] == measured[col], col
    assert (second[second.role == "method"].git_sha == "0123456789ab").all()

    # what changes the baseline's timing is part of the key: engine code, engine settings, package versions
    versions = hostinfo.versions()
    for name, change, extra in (
        ("code", lambda: monkeypatch.setattr(hostinfo, "source_hash", lambda *paths: "another-engine"), ()),
        ("settings", lambda: None, ("engine.warmup_tokens=8",)),
        ("versions", lambda: monkeypatch.setattr(hostinfo, "versions", lambda: {**versions, "torch": "0.0"}), ()),
    ):
        change()
        df = run(tiny_cfg(tmp_path, *common, "method=ar", *extra, name=f"ar-{name}"))
        assert (df[df.role == "baseline"].baseline_source == "run").all(), name
        monkeypatch.undo()


# -- equivalence with tie margins ----------------------------------------------------------------------


def test_equivalence_margin_and_near_tie(tiny_target, tiny_prompts):
    from harness.loading.sources import load_target

    prompt = tiny_prompts[0]
    baseline = [70, 71, 72, 73, 74, 75]
    method = baseline[:3] + [99, 74, 75]
    # the margin computed independently: the same weights through transformers' own forward (sdpa)
    reference = load_target("tiny-llama", source="tiny", attention="sdpa").model
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([prompt + baseline[:3]])).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    margin = float(top[0] - top[1])
    assert margin > 0

    # without the baseline's own steps the margin is recomputed by a prefill
    recomputed = equivalence(tiny_target, prompt, method, baseline)
    assert recomputed["equivalent"] is False and recomputed["first_divergence"] == 3
    assert recomputed["divergence_margin"] == pytest.approx(margin, rel=1e-4, abs=1e-4)
    assert recomputed["near_tie"] is (margin <= 1e-3) and recomputed["near_tie_threshold"] == 1e-3  # fp32's floor

    # with them, the margin is the one at the baseline's step that chose the diverging token
    steps = [(5.0, 1.0)] * 3 + [(2.0, 2.0 - 5e-4)] + [(5.0, 1.0)] * 2
    tie = equivalence(tiny_target, prompt, method, baseline, steps)
    assert tie["divergence_margin"] == pytest.approx(5e-4) and tie["near_tie"] is True
    steps[3] = (2.0, 1.5)
    assert equivalence(tiny_target, prompt, method, baseline, steps)["near_tie"] is False

    same = equivalence(tiny_target, prompt, baseline, baseline)
    assert same == {"equivalent": True, "first_divergence": None, "divergence_margin": None, "near_tie_threshold": None,
                    "near_tie": False}
    longer = equivalence(tiny_target, prompt, baseline + [5], baseline)
    assert longer["equivalent"] is False and longer["first_divergence"] == len(baseline)


def test_greedy_steps_record_the_two_best_logits_of_each_emitted_token(tiny_target, tiny_prompts):
    """The top-1/top-2 logits a greedy generation records per emitted token are those of the step that chose it:
    the same as a fresh prefill's (fp32), and the same whether the token was verified alone or in a draft tree."""
    from harness.bench.equivalence import recomputed_top2
    from harness.engine.decoder import Decoder
    from harness.engine.drafter import NoDraft
    from harness.engine.sampling import Sampling
    from harness.engine.verifiers import make_verifier
    from methods.pld import PLDConfig, PromptLookup

    decoder = Decoder(tiny_target, make_verifier(Sampling()))
    prompt = tiny_prompts[1]
    plain = decoder.generate(prompt, NoDraft(), 12)
    drafted = decoder.generate(prompt, PromptLookup(PLDConfig(), tiny_target.stop_ids), 12)
    assert drafted.token_ids == plain.token_ids and sum(drafted.drafted) > 0
    assert len(plain.top2) == len(plain.token_ids) == len(drafted.top2)
    for i in range(len(plain.token_ids)):
        fresh = recomputed_top2(tiny_target, prompt, plain.token_ids, i)
        assert plain.top2[i] == pytest.approx(fresh, abs=1e-4) and drafted.top2[i] == pytest.approx(fresh, abs=1e-4)


def test_near_ties_are_never_counted_as_equal(tmp_path):
    df = run(tiny_cfg(tmp_path, "task.limit=2"))
    m, b = df[df.role == "method"].copy(), df[df.role == "baseline"]
    assert aggregate(m, b)["equivalence_rate"] == 1.0
    first = m.index[0]
    m.loc[first, ["equivalent", "near_tie", "divergence_margin"]] = [False, True, 1e-6]
    agg = aggregate(m, b)
    assert agg["equivalence_rate"] == 0.5 and agg["near_ties"] == 1


# -- run folder: derived from the config, resumed, refused on another config ---------------------------


def hydra_run_dir(*overrides: str) -> str:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.core.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return str(cfg.hydra.run.dir)


def test_run_folder_is_derived_from_the_config():
    from harness.core.run_identity import config_hash

    base = ("model=tiny-llama", "task=spec_bench", "method=pld")
    folder = hydra_run_dir(*base)
    assert folder == f"results/runs/spec_bench/tiny-llama/pld-{config_hash(compose(*base))}"
    assert hydra_run_dir(*base) == folder  # not a timestamp
    assert hydra_run_dir(*base, "progress=false") == folder  # does not change the results
    assert hydra_run_dir(*base, "max_new_tokens=64") != folder
    assert hydra_run_dir(*base, "task.groups=[qa]") != folder
    # which prompts and how many repeats are the run's identity too: its report covers exactly those
    assert hydra_run_dir(*base, "task.limit=3") != folder and hydra_run_dir(*base, "repeats=2") != folder


def test_resume_skips_finished_prompts_and_refuses_another_config(tmp_path):
    one = run(tiny_cfg(tmp_path, "task.limit=2"))
    again = run(tiny_cfg(tmp_path, "task.limit=2"))  # the same config resumes: nothing runs again
    assert again.timestamp.tolist() == one.timestamp.tolist()
    before = (tmp_path / "run" / "results.parquet").read_bytes()
    # a smaller or larger selection of prompts, more repeats or other settings are another run, never mixed in
    for other in ("task.limit=1", "task.limit=3", "repeats=2", "max_new_tokens=9"):
        with pytest.raises(SpeclabError, match="holds a run with another config.*choose another hydra.run.dir"):
            Runner(as_config(tiny_cfg(tmp_path, other)))
    assert (tmp_path / "run" / "results.parquet").read_bytes() == before
    fewer = run(tiny_cfg(tmp_path, "task.limit=1", name="limit1"))
    assert fewer.prompt_id.unique().tolist() == ["demo-1"] and len(fewer) == 2


def test_a_failure_mid_run_keeps_the_finished_prompts(tmp_path):
    long = "word " * 200
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(["Hi", long])))
    cfg = tiny_cfg(tmp_path, f"task.path={data}")
    runner = Runner(as_config(cfg))
    limit = runner.target.max_positions
    # as if the context were shorter than the second prompt (the up-front check has passed)
    runner.target.max_positions = len(runner.task.render(runner.samples[1], 0, [], runner.target.tokenizer)) + 4
    with pytest.raises(SpeclabError, match="turn 1 of prompt '1' has .* exceeds the context"):
        runner.run()
    kept = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert set(kept.prompt_id) == {"0"} and len(kept) == 2 and len(texts_of(tmp_path / "run")) == 2
    runner = Runner(as_config(cfg))
    assert runner.target.max_positions == limit
    done = runner.run()
    assert done[done.prompt_id == "0"].timestamp.tolist() == kept.timestamp.tolist() and len(done) == 4


def test_an_empty_prompt_is_refused_before_anything_runs(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"id": "fine", "prompt": "Hi"}\n{"id": "empty", "prompt": ""}\n')
    with pytest.raises(SpeclabError, match="prompt 'empty' of task 'demo' renders to no tokens"):
        Runner(as_config(tiny_cfg(tmp_path, f"task.path={data}", "task.chat=false")))


def test_results_files_are_replaced_atomically(tmp_path, monkeypatch):
    from harness.results.store import write_parquet_atomic

    path = tmp_path / "results.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), path)

    def crash(self, target, **kwargs):
        open(target, "wb").write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        write_parquet_atomic(pd.DataFrame({"a": [1, 2, 3]}), path)
    monkeypatch.undo()
    assert pd.read_parquet(path).a.tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]  # no temporary file left behind


def test_each_prompt_is_appended_and_a_killed_run_resumes(tmp_path, monkeypatch):
    from harness.results import store as results

    cfg = tiny_cfg(tmp_path, "task.limit=3")
    folder = tmp_path / "run"
    parquet, rewrites = [], []
    write_part = results.write_parquet_atomic

    def killed_on_second_prompt(df, path):
        parquet.append((path.relative_to(folder).as_posix(), len(df)))
        if len(parquet) == 2:  # killed while writing the second prompt's part: half a temporary file, no part
            (path.parent / f".{path.name}.999.tmp").write_bytes(b"PAR1 half a file")
            raise KeyboardInterrupt
        write_part(df, path)

    def whole_file_written(path, data):
        rewrites.append(path.name)
        path.write_bytes(data)

    monkeypatch.setattr(results, "write_parquet_atomic", killed_on_second_prompt)
    monkeypatch.setattr(results, "write_atomic", whole_file_written)
    monkeypatch.setattr(results.ResultsStore, "consolidate", lambda self: None)  # a SIGKILL skips it
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    # one small write per prompt (its own 2 rows, its texts appended), never the whole file again
    assert parquet == [("parts/00000001.parquet", 2), ("parts/00000002.parquet", 2)] and rewrites == ["run_config.json"]
    with open(folder / "samples.jsonl", "ab") as f:  # and a line the kill cut short
        f.write(b'{"prompt_id": "demo-3", "tu')
    partial = results.read_results(folder)  # what collect sees of the killed run: the finished prompt only
    assert partial.prompt_id.unique().tolist() == ["demo-1"] and not (folder / "results.parquet").exists()

    monkeypatch.undo()
    df = run(cfg)
    assert df.prompt_id.unique().tolist() == ["demo-1", "demo-2", "demo-3"] and len(df) == 6
    assert df[df.prompt_id == "demo-1"].timestamp.tolist() == partial.timestamp.tolist()  # kept, not re-run
    keys = [(t["prompt_id"], t["turn"], t["repeat"], t["role"]) for t in texts_of(folder)]
    assert sorted(keys) == sorted(map(tuple, df[["prompt_id", "turn", "repeat", "role"]].values.tolist()))
    # the end of the run merges the parts into results.parquet
    assert not (folder / "parts").exists()
    assert pd.read_parquet(folder / "results.parquet").timestamp.tolist() == df.timestamp.tolist()
    assert results.read_results(folder).timestamp.tolist() == df.timestamp.tolist()


# -- interleaving and scoring in a run -----------------------------------------------------------------


def test_interleaved_order_alternates_per_prompt_and_repeat(tmp_path):
    df = run(tiny_cfg(tmp_path, "task.limit=2", "repeats=2", "max_new_tokens=4"))
    assert len(df) == 8 and sorted(set(zip(df.prompt_id, df.repeat))) == [("demo-1", 0), ("demo-1", 1), ("demo-2", 0), ("demo-2", 1)]
    m = df[df.role == "method"]
    b = df[df.role == "baseline"].set_index(["prompt_id", "repeat"])
    for r in m.itertuples():
        index = int(r.prompt_id.split("-")[1]) - 1
        baseline_first = (index + r.repeat) % 2 == 0  # A B for one, B A for the next
        assert (r.order, b.loc[(r.prompt_id, r.repeat), "order"]) == ((1, 0) if baseline_first else (0, 1))


def test_scores_are_columns_when_asked_for(tmp_path):
    df = run(tiny_cfg(tmp_path, "task=gsm8k", f"task.path={FIX / 'gsm8k_test.jsonl'}", "task.score=true", "max_new_tokens=4"))
    assert len(df) == 6 and df.score_exact_match.isin([0.0, 1.0]).all()
    plain = run(tiny_cfg(tmp_path, "task=gsm8k", f"task.path={FIX / 'gsm8k_test.jsonl'}", "max_new_tokens=4", name="plain"))
    assert "score_exact_match" not in plain.columns


# -- precision, the speedup bound, the progress bar ----------------------------------------------------


def test_bfloat16_runs(tmp_path):
    from harness.model.kernels import onednn_problem

    df = run(tiny_cfg(tmp_path, "model.dtype=bfloat16", "compare=[hf_pld]", "task.limit=2"))
    assert (df.dtype == "bfloat16").all() and len(df) == 6
    # oneDNN packs bf16 only on CPUs that have the instructions; elsewhere ``auto`` takes torch's kernel
    assert set(df.kernel) == {"torch" if onednn_problem(torch.bfloat16) else "onednn"}
    m = df[df.role == "method"]
    assert (m.equivalent | m.near_tie).all()
    with pytest.raises(SpeclabError, match="kernel=onednn supports float32 and bfloat16 weights, not torch.float16"):
        Runner(as_config(tiny_cfg(tmp_path, "model.dtype=float16", "engine.kernel=onednn", name="fp16")))


def recording(generate, log: list):
    """``generate``, keeping each PromptResult in ``log``."""
    def wrapped(*args):
        log.append(generate(*args))
        return log[-1]
    return wrapped


def test_bound_prices_each_step_with_the_baseline_forward(tmp_path, monkeypatch):
    """A row's least time is its own prefill plus, per step, c(width) x the paired baseline's forward time per
    decode step; its bound is its speedup with that time. (Measured speedup <= bound on the real model is in
    test_e2e_real.py: on this tiny model timing noise is as large as the loop overhead the bound leaves out.)"""
    from harness.engine import cost_curve

    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path / "cache"))  # c(k) of the tiny model, measured here
    runner = Runner(as_config(tiny_cfg(tmp_path, "compare=[ar,hf_pld]", "task.limit=2", "repeats=2",
                                       "max_new_tokens=16", "engine.verify_cost=measure")))
    results: dict[str, list] = {}
    for _, gen in runner.methods:
        gen.generate = recording(gen.generate, results.setdefault(gen.name, []))
    df = runner.run()
    m, b = df[df.role == "method"], df[df.role == "baseline"].set_index(["prompt_id", "repeat"])
    assert m[m.method == "hf_pld"].min_time_s.isna().all()  # peers run other kernels: no bound
    curve = cost_curve.Curve(cost_curve.load(cost_curve.curve_key(runner.target, runner.kernel, 1, cost_curve.CACHE_LEN)))
    for name in ("pld", "ar"):
        rows = m[m.method == name]
        for row, result in zip(rows.itertuples(), results[name]):
            base = b.loc[(row.prompt_id, row.repeat)]
            forward = base.verify_time_s / (base.steps - 1)
            least = row.prefill_time_s + forward * sum(curve(1 + d) for d in result.drafted)
            assert row.min_time_s == pytest.approx(least)
            assert row.speedup_bound == pytest.approx(row.new_tokens / least / base.tokens_per_s)
    summary = summarize(df).set_index(["method", "group"])
    for name in ("pld", "ar"):  # the task's bound: per-prompt bounds (repeats pooled), geometric mean over prompts
        bound, prompts = pooled_geomean(m[m.method == name], df[df.role == "baseline"], time="min_time_s")
        assert prompts == 2 and summary.loc[(name, "overall"), "speedup_bound"] == pytest.approx(bound)
    assert np.isnan(summary.loc[("hf_pld", "overall"), "speedup_bound"])


@pytest.mark.parametrize("baseline,desc", [("interleaved", "pld vs ar: "), ("none", "pld: ")])
def test_progress_bar_names_the_baseline_only_when_there_is_one(tmp_path, capsys, baseline, desc):
    run(tiny_cfg(tmp_path, f"baseline={baseline}", "progress=true", "task.limit=1", "max_new_tokens=2"))
    err = capsys.readouterr().err
    assert desc in err and (baseline != "none" or "vs ar" not in err)
