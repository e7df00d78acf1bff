#!/usr/bin/env python
"""Sample quality of an image run on the digits-ar testbed, beside its speed (issue 17).

    python scripts/image_report.py results/runs/digits/digits-ar/<run>      # one run folder
    python scripts/image_report.py RUN_A RUN_B ...                          # several, one table

For every method of each run (the baseline ``ar`` included), from its samples in ``samples.jsonl``: class
accuracy, Fréchet distance and precision/recall against the held-out real images (``harness/image_quality.py``),
the target's mean log-likelihood per image of the samples, valid images, and from the rows the speedup
(geometric mean over prompts), target forwards per image and tau. Writes ``image_quality.md`` and ``.csv``, a
grid picture per method (``samples_<method>.png``) and, with several lossy settings, ``speed_quality.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
import torch


def sample_logp(model, images: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """The target's log-likelihood of each image given its class (pixels and the end token)."""
    from harness.digits import encode

    ids = torch.tensor([encode(im, int(c)) for im, c in zip(images, asked)])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[:, 1:-1].log_softmax(-1)
    return logp.gather(-1, ids[:, 2:, None])[..., 0].sum(-1).numpy()


def run_quality(run_dir: Path, model, classifier, real) -> pd.DataFrame:
    from harness.image_quality import image_quality, save_grid
    from harness.results import read_results
    from tasks.digits import parse

    texts = [json.loads(line) for line in open(run_dir / "samples.jsonl")]
    rows = read_results(run_dir)
    out = []
    for method, group in pd.DataFrame(texts).groupby("method"):
        asked = np.array([int(p.split("-")[0][1:]) for p in group.prompt_id])
        images = [parse(t) for t in group.text]
        valid = np.array([im is not None for im in images])
        imgs = np.stack([im for im in images if im is not None]) if valid.any() else np.zeros((0, 8, 8), int)
        q = image_quality(imgs, asked[valid], real, classifier) if valid.sum() > 2 else {}
        q["class_accuracy_all"] = float((classifier.predict(imgs) == asked[valid]).sum() / len(images)) if valid.any() else 0.0
        r = rows[rows.method == method]
        speed = r.speedup.dropna()
        rule = r.acceptance_rule.iloc[0] if "acceptance_rule" in r.columns and len(r) else ""
        out.append({
            "run": run_dir.name, "method": method, "rule": rule, "images": len(images), "valid": float(valid.mean()),
            **q, "logp_per_image": float(sample_logp(model, imgs, asked[valid]).mean()) if valid.any() else None,
            "speedup": float(np.exp(np.log(speed).mean())) if len(speed) else 1.0,
            "forwards_per_image": float(r.steps.mean()), "tau": float(r.tau.mean()) if "tau" in r.columns else None,
        })
        save_grid(imgs, asked[valid], run_dir / f"samples_{method}.png")
    return pd.DataFrame(out)


def speed_quality_plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ["frechet", "class_accuracy"]):
        for _, r in df.iterrows():
            ax.scatter(r[metric], r["speedup"], color="black" if r["method"] == "ar" else None)
            ax.annotate(r["method"], (r[metric], r["speedup"]), fontsize=7)
        ax.set_xlabel(metric + (" (lower is better)" if metric == "frechet" else ""))
        ax.set_ylabel("speedup over ar")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM

    from harness.digits import digits_split, testbed_folder
    from harness.image_quality import load_classifier
    from harness.report import to_markdown

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="where the combined table goes (default: the first run folder)")
    args = p.parse_args(argv)
    folder = testbed_folder()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    classifier = load_classifier(folder)
    _, real = digits_split()
    df = pd.concat([run_quality(Path(r), model, classifier, real) for r in args.runs], ignore_index=True)
    out = Path(args.out or args.runs[0])
    df.to_csv(out / "image_quality.csv", index=False)
    table = to_markdown(df, digits=3)
    (out / "image_quality.md").write_text(table + "\n")
    if len(df) > 2:
        speed_quality_plot(df, out / "speed_quality.png")
    print(table)


if __name__ == "__main__":
    main()
