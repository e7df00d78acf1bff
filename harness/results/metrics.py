"""Metrics: per-generation statistics, speedup joins and per-group aggregates with bootstrap intervals.

Definitions (README, "Definitions"): a step is one target forward, prefill included; tau = new_tokens /
steps; acceptance rate = accepted draft tokens / drafted tokens; per-position acceptance is conditional
(accepted at position i / steps whose draft was evaluated at i) or unconditional (accepted at i /
verification steps); speedup = method tokens/s over the paired baseline's; the speedup bound is the
same ratio with the method's least possible time (``min_time_s``, harness/engine/cost_curve.py) for its wall time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.engine.decoder import PromptResult


def repetition_4gram(ids: Sequence[int]) -> float:
    """Share of an output's 4-grams that already occurred earlier in it (0 = none repeated)."""
    grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


def position_counts(r: PromptResult) -> tuple[list[int], list[int]]:
    """(reached, accepted) per draft position 1..max: steps evaluated at i, steps that accepted i."""
    depth = max(r.reached, default=0)
    reached = [sum(1 for x in r.reached if x >= i) for i in range(1, depth + 1)]
    accepted = [sum(1 for x in r.accepted if x >= i) for i in range(1, depth + 1)]
    return reached, accepted


def generation_stats(r: PromptResult) -> dict[str, object]:
    drafted = sum(r.drafted)
    accepted = sum(r.accepted)
    reached, acc_pos = position_counts(r)
    wall = r.wall_time
    return {
        "prompt_tokens": r.prompt_len,
        "new_tokens": r.new_tokens,
        "steps": r.steps,
        "tau": r.new_tokens / r.steps if r.steps else None,
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "wall_time_s": wall,
        "prefill_time_s": r.prefill_time,
        "draft_time_s": r.draft_time,
        "verify_time_s": r.verify_time,
        "other_time_s": max(0.0, wall - r.prefill_time - r.draft_time - r.verify_time),
        "ms_per_step": 1e3 * (wall - r.prefill_time) / max(1, r.steps - 1),
        "tokens_per_s": r.new_tokens / wall if wall > 0 else None,
        "stop_reason": r.stop_reason,
        "accept_lengths": [a + 1 for a in r.accepted],
        "drafted_per_step": list(r.drafted),
        "pos_reached": reached,
        "pos_accepted": acc_pos,
        "repetition_4gram": repetition_4gram(r.token_ids),
    }


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """0-based index of the first differing token, counting a length difference; None if identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def geomean(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if x and x > 0], dtype=float)
    return float(np.exp(np.log(v).mean())) if v.size else math.nan


def bootstrap_ci(values: Sequence[float], stat=geomean, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = np.array([stat(v[rng.integers(0, v.size, v.size)]) for _ in range(n)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def per_prompt_speedups(m: pd.DataFrame, b: pd.DataFrame, time: str = "wall_time_s") -> pd.Series:
    """Speedup per prompt, pooling its turns and repeats: (sum tokens / sum time) over the baseline's.

    ``time="min_time_s"`` gives the speedup bound, pooled the same way.
    """
    keys = ["run_id", "prompt_id"]
    mt = m.groupby(keys)[["new_tokens", time]].sum().rename(columns={time: "wall_time_s"})
    bt = b.groupby(keys)[["new_tokens", "wall_time_s"]].sum()
    joined = mt.join(bt, lsuffix="_m", rsuffix="_b", how="inner")
    return (joined.new_tokens_m / joined.wall_time_s_m) / (joined.new_tokens_b / joined.wall_time_s_b)


def _mean_throughput(rows: pd.DataFrame) -> float:
    """Mean over prompts of tokens/s, each prompt pooling its turns and repeats (Spec-Bench's numerator)."""
    per = rows.groupby(["run_id", "prompt_id"])[["new_tokens", "wall_time_s"]].sum()
    return float((per.new_tokens / per.wall_time_s).mean())


def _pooled_curve(series: pd.Series) -> list[int]:
    width = max((len(x) for x in series if x is not None), default=0)
    total = np.zeros(width, dtype=np.int64)
    for x in series:
        if x is not None:
            total[: len(x)] += np.asarray(x, dtype=np.int64)
    return total.tolist()


def aggregate(method_rows: pd.DataFrame, baseline_rows: pd.DataFrame) -> dict[str, object]:
    """Summary of one method on one slice of prompts (a group, or all)."""
    m, b = method_rows, baseline_rows
    per_prompt = per_prompt_speedups(m, b) if len(b) else pd.Series(dtype=float)
    lo, hi = bootstrap_ci(per_prompt.tolist())
    mean_tps_m = _mean_throughput(m)
    mean_tps_b = _mean_throughput(b) if len(b) else math.nan
    drafted = m.drafted_tokens.sum()
    eq = m["equivalent"].dropna() if "equivalent" in m else pd.Series(dtype=bool)
    near = m["near_tie"].fillna(False).astype(bool) if "near_tie" in m else pd.Series(False, index=m.index)
    steps_verify = int(m.drafted_per_step.map(len).sum())
    reached = _pooled_curve(m.pos_reached)
    accepted = _pooled_curve(m.pos_accepted)
    # task scores (exact match, pass@1) and the target's NLL of the outputs beside the baseline's: what a lossy rule
    # (typical acceptance, SMC-SD) costs
    scores = {}
    quality = [c for c in m.columns if (c.startswith("score_") or c == "target_nll") and pd.api.types.is_numeric_dtype(m[c])]
    for col in sorted(quality):
        scores[col] = float(m[col].mean())
        scores[f"baseline_{col}"] = float(b[col].mean()) if col in b else math.nan
    return {
        "prompts": int(m[["run_id", "prompt_id"]].drop_duplicates().shape[0]),
        "rows": len(m),
        "lossless": bool(m.lossless.astype(bool).all()) if "lossless" in m else True,
        "speedup": float(mean_tps_m / mean_tps_b) if len(b) else math.nan,  # Spec-Bench: ratio of mean tokens/s
        "speedup_total": float((m.new_tokens.sum() / m.wall_time_s.sum()) / (b.new_tokens.sum() / b.wall_time_s.sum())) if len(b) else math.nan,
        "speedup_geomean": geomean(per_prompt.tolist()),
        "speedup_ci_low": lo,
        "speedup_ci_high": hi,
        "tau": float(m.new_tokens.sum() / m.steps.sum()),
        "acceptance_rate": float(m.accepted_tokens.sum() / drafted) if drafted else math.nan,
        "equivalence_rate": float(eq.astype(bool).mean()) if len(eq) else math.nan,
        "near_ties": int(near.sum()),
        # divergences at a clear top-1/top-2 margin: a bug in fp32 and in low precision alike
        "mismatches": int((~eq.astype(bool)).sum() - near[eq.index].sum()) if len(eq) else 0,
        "tokens_per_s": float(mean_tps_m),
        "baseline_tokens_per_s": float(mean_tps_b),
        "ms_per_step": float(m.ms_per_step.median()),
        "pos_acceptance_conditional": [a / r if r else math.nan for a, r in zip(accepted, reached)],
        "pos_acceptance_unconditional": [a / steps_verify if steps_verify else math.nan for a in accepted],
        "repetition_4gram": float(m.repetition_4gram.mean()),
        # aggregated exactly as speedup_geomean, so bound >= speedup_geomean whenever every row's bound holds
        "speedup_bound": speedup_bound(m, b),
        **scores,
        **_real_tau(m),
    }


def _real_tau(m: pd.DataFrame) -> dict[str, float]:
    """Synthetic runs (harness/bench/synthetic.py): the traced real run's tau, beside the row's own."""
    if "trace_steps" not in m or m.trace_steps.isna().all():
        return {}
    traced = m.dropna(subset=["trace_steps"])
    return {"real_tau": float(traced.trace_new_tokens.sum() / traced.trace_steps.sum())}


def speedup_bound(m: pd.DataFrame, b: pd.DataFrame) -> float:
    """Geometric mean over prompts of the per-prompt bounds; NaN unless every method row has its least time
    (peers and runs without a measured c(k) have none)."""
    if not len(b) or "min_time_s" not in m or m.min_time_s.isna().any():
        return math.nan
    return geomean(per_prompt_speedups(m, b, time="min_time_s").tolist())


COMPILED_PEER = "hf_compiled"  # the stock compiled baseline: a run that times it reports every speedup over it too


def summarize(df: pd.DataFrame, by: str = "group") -> pd.DataFrame:
    """One row per (method, group) plus an ``overall`` row per method; with ``hf_compiled`` in the run, also each
    method's geometric-mean speedup over it (``speedup_vs_hf_compiled``), paired by prompt as over ``ar``."""
    base = df[df.role == "baseline"]
    meth = df[df.role == "method"]
    compiled = meth[meth.method == COMPILED_PEER]
    out = []
    pair = ["run_id", "prompt_id"]
    for method, m in meth.groupby("method", sort=False):
        for group, mg in list(m.groupby(by, sort=False)) + [("overall", m)]:
            bg = base.merge(mg[pair].drop_duplicates(), on=pair)
            row = {"method": method, by: group, **aggregate(mg, bg)}
            if len(compiled):
                ref = compiled.merge(mg[pair].drop_duplicates(), on=pair)
                row[f"speedup_vs_{COMPILED_PEER}"] = geomean(per_prompt_speedups(mg, ref).tolist()) if len(ref) else math.nan
            out.append(row)
    return pd.DataFrame(out)


def head_to_head(df: pd.DataFrame, a: str, b: str, by: str = "group") -> pd.DataFrame:
    """Method ``a`` against method ``b`` timed in the same interleaved run: per prompt the ratio of their
    tokens/s (turns and repeats pooled), summarised per group and overall as a geometric mean with a
    bootstrap 95% interval."""
    keys = ["run_id", "prompt_id"]
    rows = df[df.role == "method"]

    def per_prompt(name: str) -> pd.DataFrame:
        g = rows[rows.method == name].groupby(keys).agg(new_tokens=("new_tokens", "sum"), wall=("wall_time_s", "sum"), group=(by, "first"))
        return g.assign(tps=g.new_tokens / g.wall)

    pa, pb = per_prompt(a), per_prompt(b)
    joined = pa[["tps", "group"]].join(pb[["tps"]], rsuffix="_b", how="inner")
    joined["ratio"] = joined.tps / joined.tps_b
    out = []
    for group, g in list(joined.groupby("group", sort=False)) + [("overall", joined)]:
        lo, hi = bootstrap_ci(g.ratio.tolist())
        out.append({"a": a, "b": b, by: group, "prompts": len(g), "ratio_geomean": geomean(g.ratio.tolist()),
                    "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)
