"""Sample quality on the digits testbed: a classifier trained on the real images, and what it says of samples.

Lossy acceptance rules change the output distribution, so every image run reports, on the same number of
samples for every method and for plain ``ar`` sampling:

- ``class_accuracy``: the share of images the classifier assigns to the class they were asked for;
- ``frechet``: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the held-out real images (FID's formula on a digits feature space);
- ``precision`` / ``recall``: Kynkäänniemi et al. (2019), k-nearest-neighbour manifolds (k = 3) in that space:
  the share of samples inside the real manifold, and of real images inside the samples';
- ``logp_per_image``: the unguided conditional model's log-likelihood of the samples given their class (``sample_logp``),
  the same yardstick for guided and unguided runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.loading.digits import CLASSES, LEVELS, PIXELS, SIDE, Split

CLASSIFIER = "classifier.safetensors"


class DigitClassifier(nn.Module):
    """64 grey levels -> 10 classes; ``features`` is the 64-wide penultimate layer."""

    def __init__(self, width: int = 128, feature_width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(PIXELS, width), nn.ReLU(), nn.Linear(width, feature_width), nn.ReLU())
        self.head = nn.Linear(feature_width, CLASSES)

    @staticmethod
    def inputs(images: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(images).reshape(-1, PIXELS), dtype=torch.float32) / (LEVELS - 1)

    def features(self, images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.body(self.inputs(images))

    def predict(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.head(self.body(self.inputs(images))).argmax(-1).numpy()


def train_classifier(train: Split, epochs: int = 200, seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    model = DigitClassifier()
    x, y = DigitClassifier.inputs(train.images), torch.as_tensor(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            loss = nn.functional.cross_entropy(model.head(model.body(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def load_classifier(folder: Path) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(folder / CLASSIFIER)))
    return model.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # [fake, real]
    precision = float((d <= _radii(real, k)[None]).any(1).mean())
    recall = float((d.T <= _radii(fake, k)[None]).any(1).mean())
    return precision, recall


def image_quality(images: np.ndarray, asked: np.ndarray, real: Split, classifier: DigitClassifier) -> dict[str, float]:
    """Quality of ``images`` ([n, 8, 8]; each asked for the class in ``asked``) against the real ``real`` images."""
    feats, real_feats = classifier.features(images).numpy(), classifier.features(real.images).numpy()
    precision, recall = precision_recall(real_feats, feats)
    return {"samples": len(images), "class_accuracy": float((classifier.predict(images) == asked).mean()),
            "frechet": frechet_distance(feats, real_feats), "precision": precision, "recall": recall}


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 10) -> None:
    """A picture of up to ``per_class`` samples of each class, one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(CLASSES, per_class, figsize=(per_class * 0.6, CLASSES * 0.6))
    for c in range(CLASSES):
        mine = images[labels == c][:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(mine):
                ax.imshow(mine[j].reshape(SIDE, SIDE), cmap="gray_r", vmin=0, vmax=LEVELS - 1)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def sample_logp(model, images: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """The target's log-likelihood of each image given its class (pixels and the end token)."""
    from harness.loading.digits import encode

    ids = torch.tensor([encode(im, int(c)) for im, c in zip(images, asked)])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[:, 1:-1].log_softmax(-1)
    return logp.gather(-1, ids[:, 2:, None])[..., 0].sum(-1).numpy()


def run_quality(run_dir: Path, model, classifier, real) -> pd.DataFrame:
    from harness.loading.digits import parse
    from harness.results.store import read_results

    texts = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
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
            "run": run_dir.name, "method": method, "rule": rule,
            "guidance": float(r.guidance.iloc[0]) if "guidance" in r.columns and len(r) else 1.0,
            "images": len(images), "valid": float(valid.mean()),
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


def image_report(runs: list[Path], out: Path | None = None) -> str:
    """The quality table of image runs (``image_quality.md`` / ``.csv`` in ``out``, default the first run), a
    grid picture per method in each run, and with more than two rows the speed-quality plot; returns the table."""
    from transformers import AutoModelForCausalLM

    from harness.loading.digits import digits_split, testbed_folder
    from harness.results.tables import to_markdown

    folder = testbed_folder()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    classifier = load_classifier(folder)
    _, real = digits_split()
    df = pd.concat([run_quality(Path(r), model, classifier, real) for r in runs], ignore_index=True)
    out = Path(out or runs[0])
    df.to_csv(out / "image_quality.csv", index=False)
    table = to_markdown(df, digits=3)
    (out / "image_quality.md").write_text(table + "\n")
    if len(df) > 2:
        speed_quality_plot(df, out / "speed_quality.png")
    return table


_CLASSIFIERS: dict[str, DigitClassifier] = {}


def judge(image: np.ndarray | None, asked: int) -> float:
    """1.0 when the committed classifier assigns ``image`` to the class it was asked for (0.0 for no image)."""
    from harness.loading.digits import testbed_folder

    if image is None:
        return 0.0
    folder = testbed_folder()
    if str(folder) not in _CLASSIFIERS:
        _CLASSIFIERS[str(folder)] = load_classifier(folder)
    return float(_CLASSIFIERS[str(folder)].predict(image[None])[0] == asked)
