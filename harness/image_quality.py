"""Sample quality on the digits testbed: a classifier trained on the real images, and what it says of samples.

Lossy acceptance rules change the output distribution, so every image run reports, on the same number of
samples for every method and for plain ``ar`` sampling:

- ``class_accuracy``: the share of images the classifier assigns to the class they were asked for;
- ``frechet``: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the held-out real images (FID's formula on a digits feature space);
- ``precision`` / ``recall``: Kynkäänniemi et al. (2019), k-nearest-neighbour manifolds (k = 3) in that space:
  the share of samples inside the real manifold, and of real images inside the samples';
- the target's log-likelihood of the samples, from the results rows (``sample_logp``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .digits import CLASSES, LEVELS, PIXELS, SIDE, Split

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


_CLASSIFIERS: dict[str, DigitClassifier] = {}


def judge(image: np.ndarray | None, asked: int) -> float:
    """1.0 when the committed classifier assigns ``image`` to the class it was asked for (0.0 for no image)."""
    from .digits import testbed_folder

    if image is None:
        return 0.0
    folder = testbed_folder()
    if str(folder) not in _CLASSIFIERS:
        _CLASSIFIERS[str(folder)] = load_classifier(folder)
    return float(_CLASSIFIERS[str(folder)].predict(image[None])[0] == asked)
