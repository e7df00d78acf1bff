#!/usr/bin/env python
"""Replay greedy prompt lookup over a finished run's baseline answers: how far its drafts are accepted, by the
length of the suffix they matched.

Under greedy decoding the committed text is the baseline's whatever is drafted, so a draft's accepted length is
the common prefix of the draft and the answer's continuation: the replay is exact, with no model. It drafts
--draft tokens a step (as `pld num_draft=<draft>` would) and reports, for each matched-suffix length, the share
of steps whose draft is accepted to depth d (BENCHMARKS.md section 9, "Drafts sized by their own grade").

With a price for each step it also prices every fixed draft length, the best rule that sizes drafts by their
matched suffix's length alone (chosen in hindsight), and the ceiling of any rule that chooses the length per step:
an oracle that knows how far each draft will be accepted and takes the cheapest way through the answer (dynamic
programming over answer positions). That is what no draft-length rule around prompt lookup can beat, per group
(BENCHMARKS.md section 9, "The ceiling of any draft-length rule"). The price is either --cost, the verify ms at
widths k (`scripts/verify_cost.py`), or --fit-costs, each group's step time fitted to the run's own baseline and
fixed-length `pld` generations (the run must hold at least two such lengths).

    python scripts/replay_pld.py results/benchmarks/spec_bench_moe_graded_cpu --draft 2
    python scripts/replay_pld.py <run folder> --cost 1:108.9,2:171.7,3:205.8,4:234.1,6:258.5,8:293.9,12:352.6
    python scripts/replay_pld.py results/benchmarks/spec_bench_moe_all_fixed --fit-costs
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.api import load_plugins
from harness.core.registry import TASKS
from harness.model.target import stop_token_ids
from methods.pld import PLDConfig, match_suffix


def replay(steps: list[tuple[int, int, int]], draft: int) -> list[tuple[int, int]]:
    """(matched suffix length, accepted length) for each step of a greedy replay drafting ``draft`` tokens a step,
    over an answer's ``lookahead`` (the accepted length as far as the lookahead's cap, past ``draft``)."""
    return [(steps[t][0], steps[t][2]) for t, _ in walk(steps, draft)]


def lookahead(prompt: list[int], answer: list[int], cfg: PLDConfig, cap: int, stops: frozenset[int] = frozenset(),
              budget: int | None = None) -> list[tuple[int, int, int]]:
    """For every answer position t >= 1 (the prompt's forward gives the first token): (the matched suffix's length,
    the tokens prompt lookup drafts after prompt + answer[:t], and how many of them the answer confirms). A draft
    holds at most ``cap`` tokens, stops before a stop token (``stops``, as ``stop_at_eos``) and leaves the target its
    own token within ``budget`` new tokens, as the engine asks. Entry i is position i + 1: a policy walks them from 0."""
    out = []
    for t in range(1, len(answer)):
        seq = np.asarray(prompt + answer[:t], dtype=np.int64)
        n, start = match_suffix(seq, cfg.max_ngram, cfg.min_ngram, cfg.match)
        room = cap if budget is None else max(0, min(cap, budget - t - 1))
        cont = seq[start : start + room].tolist()
        cut = next((i for i, x in enumerate(cont) if x in stops), len(cont))
        cont = cont[:cut]
        accepted = 0
        while accepted < len(cont) and t + accepted < len(answer) and cont[accepted] == answer[t + accepted]:
            accepted += 1
        out.append((n, len(cont), accepted))
    return out


def cost_curve(spec: str) -> Callable[[int], float]:
    """``"1:108.9,2:171.7,4:234.1"`` (ms at verify width k) -> c(k), linear between the given widths."""
    try:
        points = sorted((int(k), float(ms)) for k, ms in (item.split(":") for item in spec.split(",")))
    except ValueError:
        raise SystemExit(f"error: --cost wants k:ms pairs like 1:108.9,2:171.7, got {spec!r}") from None
    ks, ms = [k for k, _ in points], [m for _, m in points]
    if ks[0] != 1:
        raise SystemExit(f"error: --cost must include width 1 (a plain step), got widths {ks}")

    def cost(k: int) -> float:
        if k > ks[-1]:
            raise SystemExit(f"error: --cost covers widths up to {ks[-1]}; a {k - 1}-token draft verifies {k}: add {k}:<ms> "
                             "or lower --cap/--fixed")
        return float(np.interp(k, ks, ms))

    return cost


def walk(steps: list[tuple[int, int, int]], draft: int | dict[int, int]) -> list[tuple[int, int]]:
    """(position, tokens drafted) for each step of drafting ``draft`` tokens every step (as far as prompt lookup has
    them) through an answer's ``lookahead``; ``draft`` may depend on the matched suffix's length (a dict from it to
    the draft length)."""
    t, out = 0, []
    while t < len(steps):
        grade, available, accepted = steps[t]
        k = min(draft if isinstance(draft, int) else draft.get(grade, 0), available)
        out.append((t, k))
        t += min(accepted, k) + 1
    return out


def widths(steps: list[tuple[int, int, int]], draft: int | dict[int, int]) -> list[int]:
    """The verification widths of ``walk``."""
    return [k + 1 for _, k in walk(steps, draft)]


def fixed_cost(steps: list[tuple[int, int, int]], draft: int | dict[int, int], cost: Callable[[int], float]) -> float:
    """Verify time of a fixed (or graded) draft length through the answer."""
    return sum(cost(k) for k in widths(steps, draft))


def fit_costs(results: pd.DataFrame, lookaheads: dict[tuple[str, int], tuple[str, list]]) -> dict[str, tuple[float, float, float]]:
    """Per group, the step time of the run itself, ms = a + b [a draft is verified] + c (its tokens), fitted by least
    squares to the decode time of every baseline and fixed-length prompt lookup generation of the run, whose widths
    the replay knows exactly. Wide verifications of copied text read few new experts, so a curve timed on other
    text misprices them; this one is the run's own."""
    rows: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    lengths: dict[str, set[int]] = defaultdict(set)
    replayable = ("max_ngram", "min_ngram", "match", "stop_at_eos")  # the replay drafts as PLDConfig's defaults
    for r in results.itertuples():
        key = (r.prompt_id, int(r.turn))
        if key not in lookaheads or r.method_family not in ("ar", "pld") or r.repeat != 0:
            continue
        cfg = json.loads(r.method_config)
        if r.method_family == "pld" and any(cfg.get(k, getattr(PLDConfig, k)) != getattr(PLDConfig, k) for k in replayable):
            continue
        group, steps = lookaheads[key]
        draft = 0 if r.method_family == "ar" else int(cfg["num_draft"])
        ws = np.array(widths(steps, draft))
        ms = 1000 * (r.draft_time_s + r.verify_time_s + r.other_time_s)
        rows[group].append(([len(ws), float((ws > 1).sum()), float((ws - 1).sum())], ms))
        lengths[group].add(draft)
    fits = {}
    for group, obs in rows.items():
        if len(lengths[group]) < 3:
            raise SystemExit(f"error: --fit-costs needs the baseline and two fixed-length pld methods in every group; "
                             f"{group} has draft lengths {sorted(lengths[group])}. Run with "
                             "compare=['pld name=pld_2 num_draft=2',pld] or pass --cost")
        x, y = np.array([o[0] for o in obs]), np.array([o[1] for o in obs])
        fits[group] = tuple(float(v) for v in np.linalg.lstsq(x, y, rcond=None)[0])
    return fits


def oracle_cost(steps: list[tuple[int, int, int]], cap: int, cost: Callable[[int], float]) -> float:
    """The least verify time of any per-step choice of draft length <= ``cap``, knowing each draft's fate: with a cost
    that does not fall with width, drafting past the accepted tokens only costs, so at position t the choice is
    d <= accepted, then t + d + 1."""
    best = [0.0] * (len(steps) + 1)
    for t in range(len(steps) - 1, -1, -1):
        accepted = min(steps[t][2], cap)
        best[t] = min(cost(d + 1) + best[min(len(steps), t + d + 1)] for d in range(accepted + 1))
    return best[0]


@dataclass
class Replayed:
    """One answer of the run, ready to price: its group, its prompt (whose turns pool, as the report's per-prompt
    speedups do), its ``lookahead`` and the prompt's forward's ms (the same for every policy)."""

    group: str
    prompt_id: str
    steps: list[tuple[int, int, int]]
    prefill_ms: float = 0.0


def ceiling_table(answers: list[Replayed], cost: Callable[[str], Callable[[int], float]], fixed: list[int], cap: int,
                  step_ms: float = 0.0, max_grade: int = PLDConfig.max_ngram) -> dict[str, dict[str, float | str]]:
    """Per group (and overall), the speedup over plain decoding of each fixed draft length; of the best rule that
    sizes a draft by its matched suffix's length alone, chosen per group in hindsight (what a graded rule could
    learn at best); and of the oracle. Then the last two over the best fixed length. As in the report, a prompt's
    speedup pools its turns (tokens over time, the prompt's forward included) and a group's is the geometric mean
    over its prompts. ``cost(group)`` is the time of a step of each width for that group's answers."""
    def priced(c: Callable[[int], float]) -> Callable[[int], float]:
        return lambda k: c(k) + step_ms

    prices = {a.group: priced(cost(a.group)) for a in answers}
    groups: dict[str, dict[str, list[Replayed]]] = defaultdict(lambda: defaultdict(list))
    for a in answers:
        for g in (a.group, "overall"):
            groups[g][a.prompt_id].append(a)

    def speedup(prompts: dict[str, list[Replayed]], policy: Callable[[list, Callable[[int], float]], float]) -> float:
        ratios = []
        for turns in prompts.values():
            plain = sum(a.prefill_ms + len(a.steps) * prices[a.group](1) for a in turns)
            ratios.append(plain / sum(a.prefill_ms + policy(a.steps, prices[a.group]) for a in turns))
        return float(np.exp(np.mean(np.log(ratios))))

    rules = [dict(zip(range(1, max_grade + 1), depths))
             for depths in itertools.product(range(cap + 1), repeat=max_grade)]
    table = {}
    for group, prompts in sorted(groups.items(), key=lambda kv: kv[0] == "overall"):
        row: dict[str, float | str] = {
            f"pld_{d}": speedup(prompts, lambda steps, price, d=d: fixed_cost(steps, d, price)) for d in fixed}
        graded = {i: speedup(prompts, lambda steps, price, r=r: fixed_cost(steps, r, price)) for i, r in enumerate(rules)}
        best_rule = max(graded, key=graded.get)
        row["best graded"] = graded[best_rule]
        row["graded depths"] = "/".join(str(rules[best_rule][g]) for g in range(1, max_grade + 1))
        row["oracle"] = speedup(prompts, lambda steps, price: oracle_cost(steps, cap, price))
        best_fixed = max(row[f"pld_{d}"] for d in fixed)
        row["best graded / best fixed"] = row["best graded"] / best_fixed
        row["oracle / best fixed"] = row["oracle"] / best_fixed
        table[group] = row
    return table


def stop_ids(tok, model_path: str) -> frozenset[int]:
    """The target's stop tokens, as the engine reads them, without loading the model."""
    from transformers import GenerationConfig

    try:
        generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation_config = None
    return frozenset(stop_token_ids(generation_config, tok))


def main(argv: list[str] | None = None) -> dict[int, list[float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (results.parquet's folder, with samples.jsonl and run_config.json)")
    p.add_argument("--draft", type=int, default=2, help="tokens drafted a step along the replay")
    p.add_argument("--depths", type=int, default=6, help="report acceptance to depths 1..this")
    p.add_argument("--cost", default=None, help="verify ms at widths k, 'k:ms,...' (width 1 required): adds the "
                   "fixed lengths' and the oracle's speedups per group")
    p.add_argument("--fit-costs", action="store_true", help="as --cost, with each group's step time fitted to the run's "
                   "own baseline and fixed-length pld generations (see fit_costs)")
    p.add_argument("--fixed", default="1,2,3,4,6,10", help="fixed draft lengths to price with --cost")
    p.add_argument("--cap", type=int, default=10, help="the oracle's longest draft")
    p.add_argument("--step-ms", type=float, default=0.0, help="time a step costs beside the verification (every policy, plain decoding too)")
    args = p.parse_args(argv)
    run = Path(args.run)
    config = json.loads((run / "run_config.json").read_text())["config"]
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    answers = {(r["prompt_id"], r["turn"]): r["token_ids"] for r in rows if r["role"] == "baseline" and r["repeat"] == 0}
    load_plugins()
    task = TASKS.build(OmegaConf.create(config["task"]))
    # the tokenizer of the model the run resolved; a run still going (or interrupted) has only its parts
    results = run / "results.parquet"
    if not results.is_file():
        results = min(run.glob("parts/*.parquet"), default=None)
        if results is None:
            raise SystemExit(f"error: {run} has no results.parquet or parts/; pass a run folder")
    model_path = pd.read_parquet(results).model_path.iloc[0]
    tok = AutoTokenizer.from_pretrained(model_path)
    fixed = [int(d) for d in args.fixed.split(",")]
    stops = stop_ids(tok, model_path)
    lookaheads = {}  # (prompt id, turn) -> (group, lookahead) of every baseline answer
    for sample in task.samples():
        history: list[str] = []
        for turn in range(len(sample.turns)):
            answer = answers.get((sample.id, turn + 1))
            if answer is None:
                break
            prompt = task.render(sample, turn, history, tok)
            lookaheads[(sample.id, turn + 1)] = (sample.group, lookahead(
                prompt, answer, PLDConfig(), max(args.depths, args.cap, *fixed), stops, config["max_new_tokens"]))
            history.append(tok.decode(answer, skip_special_tokens=True))
    counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(args.depths + 1))
    for _, steps in lookaheads.values():
        for n, accepted in replay(steps, args.draft):
            counts[n][: accepted + 1] += 1
    print("| matched suffix | steps | " + " | ".join(f"depth {d}" for d in range(1, args.depths + 1)) + " |")
    print("|---" * (args.depths + 2) + "|")
    shares = {}
    for n in sorted(counts):
        c = counts[n]
        shares[n] = [float(x / c[0]) for x in c[1:]]
        print(f"| {n} | {int(c[0])} | " + " | ".join(f"{x:.2f}" for x in shares[n]) + " |")
    if not (args.cost or args.fit_costs):
        return shares
    # the baseline's prompt forwards: the same for every policy, and part of the report's per-prompt speedups
    measured = pd.read_parquet(results)
    base = measured[(measured.role == "baseline") & (measured.repeat == 0)]
    prefill = {(r.prompt_id, int(r.turn)): 1000 * r.prefill_time_s for r in base.itertuples()}
    if args.fit_costs:
        fits = fit_costs(measured, lookaheads)
        print("\nstep ms fitted to the run: a + b [a draft is verified] + c (tokens drafted)\n")
        print("| group | a | b | c |\n|---|---|---|---|")
        for group, (a, b, c) in fits.items():
            print(f"| {group} | {a:.1f} | {b:.1f} | {c:.1f} |")

        def cost(group: str) -> Callable[[int], float]:
            a, b, c = fits[group]
            return lambda k: a + (b if k > 1 else 0.0) + c * (k - 1)
    else:
        curve = cost_curve(args.cost)

        def cost(group: str) -> Callable[[int], float]:
            return curve
    replayed = [Replayed(group, key[0], steps, prefill.get(key, 0.0)) for key, (group, steps) in lookaheads.items()]
    ceiling = ceiling_table(replayed, cost, fixed, args.cap, args.step_ms)
    cols = [f"pld_{d}" for d in fixed] + ["best graded", "graded depths", "oracle", "best graded / best fixed",
                                          "oracle / best fixed"]
    print(f"\nspeedup over plain decoding at that price, prompt forwards included; best graded: the draft length for each matched-suffix "
          f"length 1..{PLDConfig.max_ngram} that is best for the group in hindsight; oracle: the best draft length "
          f"each step, at most {args.cap}\n")
    print("| group | " + " | ".join(f"`{c}`" if c.startswith("pld") else c for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for group, row in ceiling.items():
        print(f"| {group} | " + " | ".join(row[c] if isinstance(row[c], str) else f"{row[c]:.2f}" for c in cols) + " |")
    return shares


if __name__ == "__main__":
    main()
