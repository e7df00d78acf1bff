#!/usr/bin/env python
"""Sample quality of an image run on the digits-ar testbed, beside its speed (issue 17).

    python scripts/image_report.py results/runs/digits/digits-ar/<run>      # one run folder
    python scripts/image_report.py RUN_A RUN_B ...                          # several, one table

For every method of each run (the baseline ``ar`` included), from its samples in ``samples.jsonl``: class
accuracy, Fréchet distance and precision/recall against the held-out real images (``harness/results/image_quality.py``),
the target's mean log-likelihood per image of the samples, valid images, and from the rows the speedup
(geometric mean over prompts), target forwards per image and tau. Writes ``image_quality.md`` and ``.csv``, a
grid picture per method (``samples_<method>.png``) and, with several lossy settings, ``speed_quality.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    from harness.results.image_quality import image_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="where the combined table goes (default: the first run folder)")
    args = p.parse_args(argv)
    print(image_report([Path(r) for r in args.runs], Path(args.out) if args.out else None))


if __name__ == "__main__":
    main()
