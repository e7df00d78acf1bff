"""The verify cost curve and the least time it gives a method (the speedup bound's denominator)."""

import math

import pytest

from harness.engine import cost_curve


def test_curve_interpolates_and_extrapolates():
    c = cost_curve.Curve({1: 10.0, 2: 12.0, 4: 16.0})
    assert c(1) == 1.0 and c(2) == pytest.approx(1.2) and c(3) == pytest.approx(1.4)
    assert c(6) == pytest.approx(2.0)  # slope of the last segment, 2 ms per token


def test_min_time_prices_each_step_at_its_width():
    c = cost_curve.Curve({1: 10.0, 5: 15.0})
    # prefill, then 10 steps of 5 tokens at c(5) = 1.5 times the baseline's 20 ms forward
    assert c.min_time(0.1, [4] * 10, 0.02) == pytest.approx(0.1 + 10 * 1.5 * 0.02)
    # autoregressive steps cost exactly the baseline's forward: what is left of its time is its overhead
    assert c.min_time(0.1, [0] * 39, 0.02) == pytest.approx(0.1 + 39 * 0.02)
    assert c.min_time(0.1, [], 0.02) == pytest.approx(0.1)  # the prefill alone emitted the answer


def test_measure_and_cache_round_trip(tiny_target, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path))
    ms = cost_curve.measure(tiny_target, [1, 2, 4], cache_len=32, repeats=2, warmup=1)
    assert set(ms) == {1, 2, 4} and all(v > 0 and math.isfinite(v) for v in ms.values())
    key = cost_curve.curve_key(tiny_target, "torch", 1, 32)
    cost_curve.save(key, ms)
    assert cost_curve.load(key) == ms
    assert cost_curve.load({**key, "threads": 2}) is None


def test_bound_runs_fills_the_bound_of_a_run_timed_before_a_curve(tmp_path, monkeypatch):
    """`scripts/verify_cost.py --bound-runs`: a run timed without a curve gets the bound the runner would give."""
    from harness.api import run
    from harness.results.store import read_results
    from scripts.verify_cost import bound_run, measure_config

    from .test_runs import tiny_cfg

    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(tmp_path, "method=pld", "compare=[hf_generate]", "engine.verify_cost=off", "task.limit=2")
    run(cfg)
    out = tmp_path / "run"
    before = read_results(out)
    assert "speedup_bound" not in before.columns or before.speedup_bound.isna().all()
    measure_config(["model=tiny-llama"], cache_len=cost_curve.CACHE_LEN, repeats=2, ks=list(range(1, 13)))
    bound_run(out, cost_curve.CACHE_LEN)
    rows = read_results(out)
    methods = rows[rows.role == "method"]
    pld, peer = methods[methods.method == "pld"], methods[methods.method == "hf_generate"]
    assert pld.speedup_bound.notna().all() and (pld.speedup_bound > 0).all()
    assert peer.speedup_bound.isna().all()  # peers run other kernels: never priced by the engine's curve
    assert "speedup_bound" in (out / "summary.md").read_text()


class SimulatedClock:
    """A clock that moves only when the target computes (``a + b x tokens`` per forward) and by a fixed tick per
    reading, standing in for the engine's own overhead: speeds are then exact, so the bound can be checked
    without timing noise."""

    def __init__(self, per_forward: float = 0.02, per_token: float = 0.002, tick: float = 1e-4):
        self.now, self.per_forward, self.per_token, self.tick = 0.0, per_forward, per_token, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def time(self) -> float:
        return self.now

    def charge(self, tokens) -> None:
        self.now += self.per_forward + self.per_token * len(tokens)


def test_no_engine_method_beats_its_bound_on_a_simulated_clock(tmp_path, monkeypatch):
    """With every forward priced at a + b x width and each clock reading costing a tick, a method's time holds its
    prefill, c(width) x the baseline's forward per step, drafting and overhead: the bound sits above the measured
    speedup, and only the left-out overhead and drafting separate them."""
    from types import SimpleNamespace

    from harness.api import run
    from harness.engine import decoder
    from harness.model.target import TargetModel
    from harness.results.metrics import summarize

    from .test_runs import tiny_cfg

    clock = SimulatedClock()
    fake_time = SimpleNamespace(perf_counter=clock.perf_counter, time=clock.time)
    monkeypatch.setattr(decoder, "time", fake_time)
    monkeypatch.setattr(cost_curve, "time", fake_time)
    forward = TargetModel.forward

    def priced_forward(self, cache, tokens, *args, **kwargs):
        clock.charge(tokens)
        return forward(self, cache, tokens, *args, **kwargs)

    monkeypatch.setattr(TargetModel, "forward", priced_forward)
    monkeypatch.setattr(cost_curve, "cache_dir", lambda: tmp_path / "cache")
    cfg = tiny_cfg(tmp_path, "method=pld", "compare=[ar]", "task.limit=3", "max_new_tokens=24",
                   "engine.verify_cost=measure")
    df = run(cfg)
    m = df[df.role == "method"]
    assert m.equivalent.all() and (m.drafted_tokens > 0).any() and m.min_time_s.notna().all()
    assert (m.min_time_s < m.wall_time_s).all()  # per row, before any aggregation
    summary = summarize(df).set_index("group").loc["overall"].set_index("method")
    for method in ("pld", "ar"):  # ar: the baseline itself, so only the overhead separates it from its bound
        measured, bound = summary.loc[method, "speedup_geomean"], summary.loc[method, "speedup_bound"]
        assert measured < bound < 1.5 * measured, (method, measured, bound)
