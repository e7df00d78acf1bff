#!/usr/bin/env python
"""Held-out tau and wall time of a method under several draft trees: how a tree default is chosen.

    python scripts/sweep_trees.py --methods medusa,hydra \\
        --trees chain4,cpu6,cpu8_d4,medusa_mc_sim_7b_63:8,medusa_mc_sim_7b_63:12,medusa_mc_sim_7b_63:16,medusa_mc_sim_7b_63
    python scripts/sweep_trees.py --methods eagle2 --trees "depth=5 top_k=2 total_tokens=8,depth=6 top_k=4 total_tokens=16"

A tree is a choices preset (``choices=<tree>``) or, where it has ``=``, the method's own tree overrides (the dynamic
trees of ``eagle2``/``eagle3``: ``depth``, ``top_k``, ``total_tokens``).

The prompts are the trainers' held-out training prompts (the same hash split as ``--holdout``), never an
evaluation prompt, so choosing a default here does not tune on the benchmark. Each method is built from its
conf/method YAML with ``choices=<tree>``, exactly as ``run.py method=<m> method.choices=<tree>`` would, and
decodes greedily. Seconds come from one process running the trees one after another on the same prompts: a
guide to the cost of a shape, not a speedup (``run.py`` with ``compare`` measures those, interleaved).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.api import load_plugins  # noqa: E402
from harness.core.config import EngineConfig  # noqa: E402
from harness.core.errors import SpeclabError  # noqa: E402
from harness.core.presets import method_node  # noqa: E402
from harness.core.registry import METHODS  # noqa: E402
from harness.engine.method import MethodContext  # noqa: E402
from harness.engine.sampling import Sampling  # noqa: E402
from harness.loading.sources import load_named  # noqa: E402
from harness.model.kernel_choice import choose_kernel  # noqa: E402
from harness.training.data import prompts_path, split_holdout, training_prompts  # noqa: E402
from harness.training.loop import heldout_tau  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", required=True, help="comma-separated conf/method options with a 'choices' key or dynamic-tree keys")
    p.add_argument("--trees", required=True,
                   help="comma-separated presets, <preset>:<n> prefixes of them, or space-separated overrides "
                        "('depth=5 top_k=2 total_tokens=8')")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method override applied to every method, e.g. --set head=<folder> (repeatable)")
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--holdout", type=float, default=0.04, help="as the trainers' --holdout")
    p.add_argument("--seed", type=int, default=0, help="as the trainers' --seed")
    p.add_argument("--eval-prompts", type=int, default=24)
    p.add_argument("--eval-tokens", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the engine's default is 1)")
    p.add_argument("--out", default=None, help="also write the rows as JSON lines here")
    return p.parse_args(argv)


def tree_overrides(tree: str) -> str:
    """A preset name as ``choices=<tree>``; overrides (``depth=5 top_k=2``) as they are."""
    return tree if "=" in tree else f"choices={tree}"


def tree_nodes(drafter) -> int:
    """Draft nodes a step verifies at most (the root not counted)."""
    shape = getattr(drafter, "shape", None)
    if shape is not None and shape.kind == "dynamic":
        return shape.total_tokens - 1
    return len(getattr(drafter, "choices", None) or getattr(shape, "choices", None) or ())


def main(argv: list[str] | None = None) -> list[dict]:
    load_plugins()  # the method families it builds, the task families the overlap check composes
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    target = load_named(args.model)
    rows = training_prompts(prompts_path(args.prompts_file), 10**9, args.seed)
    held, _ = split_holdout(rows, args.holdout, args.seed)
    if not held:
        raise SpeclabError("no held-out training prompts; raise --holdout")
    prompts = [target.encode_chat([{"role": "user", "content": r["prompt"]}])[-args.max_prompt_tokens :]
               for r in held[: args.eval_prompts]]
    engine = EngineConfig(threads=args.threads)
    kernel = choose_kernel(target, engine.kernel, logging.getLogger("speclab")).kernel  # as run.py prepares the target
    ctx = MethodContext(target, Sampling(), engine, kernel)
    results = []
    for method in args.methods.split(","):
        for tree in args.trees.split(","):
            generator = METHODS.build(method_node(" ".join([method, tree_overrides(tree), *args.set])), ctx)
            start = time.perf_counter()
            tau = heldout_tau(target, lambda: generator.drafter, prompts, args.eval_tokens)
            row = {"method": method, "tree": tree, "nodes": tree_nodes(generator.drafter), "tau": round(tau, 3),
                   "seconds": round(time.perf_counter() - start, 1), "prompts": len(prompts)}
            print(json.dumps(row), flush=True)
            results.append(row)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except SpeclabError as e:
        raise SystemExit(f"error: {e}")
