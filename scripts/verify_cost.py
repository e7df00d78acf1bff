#!/usr/bin/env python
"""Measure the verify cost curve c(k), k = 1..32, for a model on this machine and cache it for the runner.

    python scripts/verify_cost.py                                  # default model, engine settings from conf/
    python scripts/verify_cost.py engine.kernel=torch engine.threads=1
    python scripts/verify_cost.py --compare-kernels                # torch vs onednn, 1 and 2 threads
    python scripts/verify_cost.py --bound-runs results/runs/...    # add the bound to runs timed before a curve existed
    python scripts/verify_cost.py --moe-table model=smollm2-moe    # MoE c(k) beside the dense model's and the
                                                                   # distinct experts beside the uniform estimate
    python scripts/verify_cost.py --batch 1,2,4,8,16               # the surface c(B, k) of batched decoding

Overrides use the same Hydra syntax as run.py (model=, engine.kernel=, engine.threads=, model.dtype=).
Run it on an idle machine: under concurrent load multi-row kernels slow down far more than 1-row ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load_config_target(overrides: list[str]):
    """(config, target with the run's kernel applied, kernel) for run.py-style overrides."""
    import logging

    import torch

    from harness.api import compose
    from harness.loading.sources import load_configured
    from harness.model.kernel_choice import choose_kernel

    cfg = compose(*overrides)
    m = cfg.model
    torch.set_num_threads(int(cfg.engine.threads))
    target = load_configured(m, cfg.engine.device)
    kernel = choose_kernel(target, cfg.engine.kernel, logging.getLogger("speclab")).kernel  # as run.py chooses it
    return cfg, target, kernel


def moe_table(moe_overrides: list[str], dense_overrides: list[str], cache_len: int, repeats: int, ks: list[int]) -> str:
    """Markdown: the MoE target's c(k) beside the dense model's, and its distinct experts per layer beside the
    uniform-routing estimate E (1 - (1 - top_k/E)^k), both verifying real text (this repository's README)."""
    from harness.engine import cost_curve
    from harness.model.experts import uniform_distinct

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    curves, experts = {}, {}
    for label, overrides in (("dense", dense_overrides), ("moe", moe_overrides)):
        _, target, _ = load_config_target(overrides)
        ids = target.tokenizer(text)["input_ids"]
        seen: dict[int, float] = {}
        curves[label] = (target.info.name, cost_curve.measure(target, ks, cache_len, repeats, text=ids, experts=seen))
        if label == "moe":
            if target.experts is None:
                raise SystemExit(f"error: {target.info.name} is not a Mixture-of-Experts model; pass an MoE model=")
            experts = (target.experts.num_experts, target.experts.top_k, seen)
        del target
    (dname, dense), (mname, moe) = curves["dense"], curves["moe"]
    E, top_k, seen = experts
    lines = [f"verify cost on real text, cache {cache_len}, median of {repeats}; experts: distinct per MoE layer (of {E}, top-{top_k})",
             "", f"| k | {dname} ms | {dname} c(k) | {mname} ms | {mname} c(k) | MoE / dense c(k) | experts measured | uniform estimate |",
             "|---|---|---|---|---|---|---|---|"]
    for k in ks:
        cd, cm = dense[k] / dense[1], moe[k] / moe[1]
        lines.append(f"| {k} | {dense[k]:.1f} | {cd:.2f} | {moe[k]:.1f} | {cm:.2f} | {cm / cd:.2f} | {seen[k]:.2f} | "
                     f"{uniform_distinct(E, top_k, k):.2f} |")
    return "\n".join(lines)


def batch_table(overrides: list[str], batches: list[int], ks: list[int], cache_len: int, repeats: int) -> str:
    """Markdown: ms of B rows x k tokens, c(B, k) (over B rows of one token) and the step's cost over one row of one
    token; the surface is cached for the runner when measured at the runner's cache length."""
    from harness.engine import batch_cost
    from harness.engine.cost_curve import CACHE_LEN

    cfg, target, kernel = load_config_target(overrides)
    ms = batch_cost.measure(target, batches, ks, cache_len=cache_len, repeats=repeats)
    if cache_len == CACHE_LEN:
        batch_cost.save(batch_cost.surface_key(target, kernel, int(cfg.engine.threads)), ms)
    one = ms[(batches[0], 1)] if batches[0] == 1 else None
    lines = [f"{target.info.name} kernel={kernel} threads={cfg.engine.threads}, cache {cache_len} a row, median of "
             f"{repeats}: ms of a forward of B rows x k tokens; c(B, k) = that / B rows x 1 token"
             + ("; x1 = that / 1 row x 1 token" if one else ""), "",
             "| B | " + " | ".join(f"k={k} ms | c" for k in ks) + (" | tokens/s at k=1 |" if one else " |"),
             "|---|" + "---|---|" * len(ks) + ("---|" if one else "")]
    for b in batches:
        cells = " | ".join(f"{ms[(b, k)]:.1f} | {ms[(b, k)] / ms[(b, 1)]:.2f}" for k in ks)
        lines.append(f"| {b} | {cells} |" + (f" {1e3 * b / ms[(b, 1)]:.1f} |" if one else ""))
    return "\n".join(lines)


def measure_config(overrides: list[str], cache_len: int, repeats: int, ks: list[int], save: bool = True) -> tuple[dict, dict[int, float]]:
    from harness.engine import cost_curve

    cfg, target, kernel = load_config_target(overrides)
    key = cost_curve.curve_key(target, kernel, int(cfg.engine.threads), cache_len)
    ms = cost_curve.measure(target, ks, cache_len=cache_len, repeats=repeats)
    if save:
        cost_curve.save(key, ms)
    return key, ms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (model=..., engine.kernel=..., engine.threads=...)")
    p.add_argument("--cache-len", type=int, default=256, help="cache length (the runner reads curves measured at 256)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--ks", default="1-32", help="k values: a range 1-32 or a list 1,2,4,8")
    p.add_argument("--compare-kernels", action="store_true", help="measure kernel in {torch, onednn} x threads in {1, 2}")
    p.add_argument("--json", default=None, help="also write all curves to this file")
    p.add_argument("--background-load", type=int, default=0,
                   help="busy-loop processes to run meanwhile (to study contention; such curves are not saved)")
    p.add_argument("--bound-runs", nargs="+", default=None, metavar="RUN_DIR",
                   help="instead of measuring: fill the speedup-bound columns of finished runs from the cached curve "
                        "of their model and engine settings, and rewrite their reports")
    p.add_argument("--moe-table", action="store_true",
                   help="print the MoE model's c(k) (overrides; default model=smollm2-moe) beside the dense one's "
                        "(--dense) and its distinct experts beside the uniform-routing estimate, on real text")
    p.add_argument("--dense", default="model=smollm2-135m", help="the dense model for --moe-table (space-separated overrides)")
    p.add_argument("--batch", default=None, metavar="B,B,...",
                   help="measure the batch surface c(B, k): forwards of B rows x k tokens (k from --ks, default a few up "
                        "to 16), cached for the batch-aware draft length")
    args = p.parse_args(argv)
    if args.batch:
        ks = [int(k) for k in args.ks.split(",")] if "," in args.ks else [1, 2, 3, 4, 6, 8, 11, 16]
        table = batch_table(args.overrides, [int(b) for b in args.batch.split(",")], sorted({1, *ks}), args.cache_len,
                            args.repeats)
        print(table)
        if args.json:
            Path(args.json).write_text(table + "\n")
        return
    if args.moe_table:
        ks = [int(k) for k in args.ks.split(",")] if "," in args.ks else [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
        table = moe_table(args.overrides or ["model=smollm2-moe"], args.dense.split(), args.cache_len, args.repeats,
                          sorted({1, *ks}))
        print(table)
        if args.json:
            Path(args.json).write_text(table + "\n")
        return
    if args.bound_runs:
        for run_dir in args.bound_runs:
            bound_run(Path(run_dir), args.cache_len)
        return
    ks = list(range(int(args.ks.split("-")[0]), int(args.ks.split("-")[1]) + 1)) if "-" in args.ks else [int(k) for k in args.ks.split(",")]
    if 1 not in ks:
        ks = [1] + ks
    settings = [[]]
    if args.compare_kernels:
        settings = [[f"engine.kernel={k}", f"engine.threads={t}"] for k in ("torch", "onednn") for t in (1, 2)]
    curves = []
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)]
    try:
        for extra in settings:
            curves.append(report(measure_config(args.overrides + extra, args.cache_len, args.repeats, ks, save=not hogs), ks))
    finally:
        for h in hogs:
            h.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(curves, indent=1))


def bound_run(run_dir: Path, cache_len: int) -> None:
    """Recompute min_time_s / speedup_bound of a finished run's engine-method rows, then its reports."""
    import pandas as pd
    from omegaconf import OmegaConf

    from harness.bench.progress import print_summary
    from harness.engine import cost_curve
    from harness.results.report import write_reports
    from harness.results.store import RESULTS, read_results, write_parquet_atomic
    from methods.hf_peers import PEER_FAMILIES

    meta = json.loads((run_dir / "run_config.json").read_text())
    cfg = OmegaConf.create(meta["config"])
    df = read_results(run_dir)
    first = df.iloc[0]
    key = cost_curve.curve_key_fields(first, cfg.model.attention, cache_len)
    ms = cost_curve.load(key)
    if ms is None:
        raise SystemExit(f"error: no cached c(k) for {key}; measure it first: python scripts/verify_cost.py "
                         f"model={cfg.model.name if 'name' in cfg.model else '...'} engine.kernel={first['kernel']} "
                         f"engine.threads={first['threads']}")
    curve = cost_curve.Curve(ms)
    base = df[df.role == "baseline"].set_index(["prompt_id", "turn", "repeat"])
    out = []
    for _, row in df.iterrows():
        row = row.copy()
        if row["role"] == "method" and row["method_family"] not in PEER_FAMILIES:
            b = base.loc[(row["prompt_id"], row["turn"], row["repeat"])]  # row.repeat is Series.repeat
            b = b.iloc[0] if isinstance(b, pd.DataFrame) else b
            bound = cost_curve.speedup_bound(curve, row["prefill_time_s"], list(row["drafted_per_step"]), int(row["new_tokens"]),
                                     int(b["steps"]), float(b["verify_time_s"]), b["tokens_per_s"])
            for k, v in bound.items():  # new columns when the run had no curve: Series.update would skip them
                row[k] = v
        out.append(row)
    df = pd.DataFrame(out)
    write_parquet_atomic(df, run_dir / RESULTS)
    summary = print_summary(df, run_dir)
    write_reports(df, summary, run_dir, cfg)
    print(f"bounds added to {run_dir} from c(k) of {key['model']} kernel={key['kernel']} threads={key['threads']}")


def report(measured: tuple[dict, dict[int, float]], ks: list[int]) -> dict:
    key, ms = measured
    label = f"{key['model']} {key['dtype']} kernel={key['kernel']} threads={key['threads']} cache={key['cache_len']}"
    print(label + f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}")
    print("  k   ms     c(k)")
    for k in ks:
        print(f"  {k:<3d} {ms[k]:6.1f} {ms[k] / ms[1]:5.2f}", flush=True)
    return {"key": key, "ms": ms}


if __name__ == "__main__":
    main()
