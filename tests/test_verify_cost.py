"""The verify cost curve and the speedup bound it gives."""

import math

import pytest

from harness import verify_cost as vc


def test_curve_interpolates_and_extrapolates():
    c = vc.Curve({1: 10.0, 2: 12.0, 4: 16.0})
    assert c(1) == 1.0 and c(2) == pytest.approx(1.2) and c(3) == pytest.approx(1.4)
    assert c(6) == pytest.approx(2.0)  # slope of the last segment, 2 ms per token


def test_bound_is_tau_over_cost_when_drafting_is_free():
    c = vc.Curve({1: 10.0, 5: 10.0})
    # 40 tokens in 10 verification steps of 5 tokens (flat cost), no prefill or draft time: bound 40/10
    assert c.bound(40, [4] * 10, 0.0, 0.0) == pytest.approx((40 - 1) / 10)
    # drafting time counts in units of a 1-token step (10 ms): 0.1 s = 10 steps
    assert c.bound(40, [4] * 10, 0.0, 0.1) == pytest.approx(39 / 20)
    # autoregressive decoding has bound 1
    assert c.bound(40, [0] * 39, 0.05, 0.0) == pytest.approx(1.0)


def test_measure_and_cache_round_trip(tiny_target, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path))
    ms = vc.measure(tiny_target, [1, 2, 4], cache_len=32, repeats=2, warmup=1)
    assert set(ms) == {1, 2, 4} and all(v > 0 and math.isfinite(v) for v in ms.values())
    key = vc.curve_key(tiny_target, "torch", 1, 32)
    vc.save(key, ms)
    assert vc.load(key) == ms
    assert vc.load({**key, "threads": 2}) is None
