"""scripts/replay_pld.py: a greedy replay's accepted lengths are the common prefix of each draft and the answer,
and the oracle over draft lengths is the cheapest path through the answer."""

import json
import random

import pandas as pd
import pytest

from methods.pld import PLDConfig
from scripts.replay_pld import (
    Replayed,
    ceiling_table,
    cost_curve,
    fit_costs,
    fixed_cost,
    lookahead,
    oracle_cost,
    replay,
    widths,
)


def test_replay_accepts_the_common_prefix_and_commits_a_bonus_token():
    prompt = [5, 6, 7, 8, 9]
    answer = [5, 6, 7, 1, 2]
    steps = replay(lookahead(prompt, answer, PLDConfig(), cap=4), draft=2)
    # the prompt's forward commits 5; then suffix [9, 5]? no; [5] matched (1 token) -> draft 6 7 8 9: 6, 7
    # accepted (8 is not 1), +bonus 1; then suffix [7, 1]/[1] unseen: no draft; commits 2
    assert steps == [(1, 2), (0, 0)]


def test_lookahead_gives_every_position_its_draft_and_how_far_the_answer_confirms_it():
    # the prompt's forward gives 5; t=1: [5] matched -> 6 7 8 9, answer 6 7 1: 2; t=2: [5, 6] -> 7 8 9 5: 1;
    # t=3: [5, 6, 7] -> 8 ...: 0; t=4: [1] unseen
    assert lookahead([5, 6, 7, 8, 9], [5, 6, 7, 1, 2], PLDConfig(), cap=4) == [(1, 4, 2), (2, 4, 1), (3, 4, 0), (0, 0, 0)]
    # a stop token ends the draft; the budget leaves the target its own token
    assert lookahead([5, 6, 7, 8, 9], [5, 6, 7, 1, 2], PLDConfig(), cap=4, stops=frozenset({8}))[1] == (2, 1, 1)
    assert lookahead([5, 6, 7, 8, 9], [5, 6, 7, 1, 2], PLDConfig(), cap=4, budget=4)[1] == (2, 1, 1)


def test_oracle_takes_the_cheapest_path_through_the_answer():
    cost = cost_curve("1:1,2:2,3:2.5,4:3")
    steps = [(1, 3, 0), (3, 3, 3), (1, 3, 0), (1, 3, 0), (1, 3, 0)]
    assert fixed_cost(steps, 0, cost) == 5  # plain decoding
    assert fixed_cost(steps, 3, cost) == 6  # 3 wasted at t=0, then 3 accepted
    assert fixed_cost(steps, 1, cost) == 8
    assert oracle_cost(steps, 3, cost) == 4  # a plain step at t=0, then all 3 at t=1
    assert fixed_cost(steps, {1: 0, 3: 3}, cost) == 4  # here the matched suffix's length tells it all


def test_oracle_never_costs_more_than_any_fixed_length():
    rng = random.Random(0)
    cost = cost_curve("1:108.9,2:171.7,4:234.1,8:293.9")
    for _ in range(20):
        prompt = [rng.randrange(5) for _ in range(30)]
        answer = [rng.randrange(5) for _ in range(40)]
        steps = lookahead(prompt, answer, PLDConfig(), cap=6)
        best = oracle_cost(steps, 6, cost)
        assert all(best <= fixed_cost(steps, d, cost) + 1e-9 for d in range(7))


def test_cost_curve_interpolates_and_rejects_bad_input():
    c = cost_curve("1:100,3:200")
    assert c(2) == 150
    with pytest.raises(SystemExit, match="width 1"):
        cost_curve("2:100,3:200")
    with pytest.raises(SystemExit, match="k:ms pairs"):
        cost_curve("1=100")
    with pytest.raises(SystemExit, match="add 4:<ms>"):
        c(4)


def test_ceiling_table_orders_oracle_over_graded_rules_over_fixed_lengths():
    rng = random.Random(1)
    answers = []
    for group in ("copying", "chatting"):
        for i in range(3):
            prompt = [rng.randrange(4 if group == "copying" else 40) for _ in range(40)]
            for turn in range(2):  # a prompt's turns pool into one speedup
                answer = [rng.randrange(4 if group == "copying" else 40) for _ in range(30)]
                answers.append(Replayed(group, f"{group}{i}", lookahead(prompt, answer, PLDConfig(), cap=3), prefill_ms=50.0))
    curve = cost_curve("1:100,2:160,3:200,4:230")
    table = ceiling_table(answers, lambda group: curve, fixed=[1, 2, 3], cap=3, step_ms=5.0)
    assert set(table) == {"copying", "chatting", "overall"}
    for row in table.values():
        assert row["oracle"] >= row["best graded"] - 1e-9
        # every fixed length is a graded rule (the same depth at every grade)
        assert row["best graded"] >= max(row["pld_1"], row["pld_2"], row["pld_3"]) - 1e-9
        assert row["oracle / best fixed"] >= row["best graded / best fixed"] >= 1 - 1e-9


def test_fit_costs_recovers_the_step_time_of_a_run():
    """Decode times made from a known step price a + b [drafted] + c (drafted tokens) give that price back."""
    rng = random.Random(2)
    a, b, c = 100.0, 60.0, 9.0
    lookaheads, rows = {}, []
    for i in range(4):
        prompt = [rng.randrange(5) for _ in range(40)]
        answer = [rng.randrange(5) for _ in range(50)]
        key = (f"p{i}", 1)
        lookaheads[key] = ("copying", lookahead(prompt, answer, PLDConfig(), cap=10))
        for family, draft in (("ar", 0), ("pld", 2), ("pld", 10)):
            ws = widths(lookaheads[key][1], draft)
            ms = sum(a + (b if k > 1 else 0) + c * (k - 1) for k in ws)
            rows.append({"prompt_id": key[0], "turn": 1, "repeat": 0, "method_family": family, "draft_time_s": 0.0,
                             "verify_time_s": ms / 1000, "other_time_s": 0.0,
                             "method_config": json.dumps({"num_draft": draft} if family == "pld" else {})})
    fit = fit_costs(pd.DataFrame(rows), lookaheads)["copying"]
    assert fit == pytest.approx((a, b, c), rel=1e-6)
    # one fixed length is not enough to tell the three terms apart
    with pytest.raises(SystemExit, match="two fixed-length pld methods"):
        fit_costs(pd.DataFrame([r for r in rows if "10" not in r["method_config"]]), lookaheads)
