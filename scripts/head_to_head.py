#!/usr/bin/env python
"""Head-to-head tables for methods timed in one interleaved run (``run.py ... compare=[...]``).

    python scripts/head_to_head.py RUN_DIR pld:hf_pld sps:hf_assisted ar:hf_generate

Per pair a:b, per group and overall: geometric mean over prompts of (a tokens/s / b tokens/s) with a
bootstrap 95% interval, as markdown. Also prints every method's summary against the engine baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.results.metrics import head_to_head, summarize  # noqa: E402
from harness.results.store import read_results  # noqa: E402
from harness.results.tables import to_markdown  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("pairs", nargs="*", help="a:b method pairs")
    args = p.parse_args(argv)
    df = read_results(args.run_dir)
    cols = ["method", "group", "prompts", "speedup_geomean", "speedup_ci_low", "speedup_ci_high", "speedup", "speedup_bound",
            "tau", "acceptance_rate", "equivalence_rate", "tokens_per_s", "ms_per_step"]
    summary = summarize(df)
    print(to_markdown(summary[[c for c in cols if c in summary]]))
    for pair in args.pairs:
        a, b = pair.split(":")
        print(f"\n{a} vs {b} (tokens/s ratio, same run)\n")
        print(to_markdown(head_to_head(df, a, b)))


if __name__ == "__main__":
    main()
