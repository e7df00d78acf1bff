"""The digits-ar image testbed (issue 17): tokens, split, quality measures, the task, and Jacobi decoding on it."""

from __future__ import annotations

import numpy as np
import pytest

from harness.digits import BOS, EOS, NULL, PIXEL0, decode, digits_split, encode, tokenizer
from harness.image_quality import frechet_distance, precision_recall


def test_split_holds_out_a_fifth_of_each_class():
    train, held = digits_split()
    assert len(train.labels) + len(held.labels) == 1797
    for c in range(10):
        n = (train.labels == c).sum() + (held.labels == c).sum()
        assert (held.labels == c).sum() == n // 5
    assert train.images.min() >= 0 and train.images.max() == 16


def test_images_round_trip_through_tokens_and_text():
    train, _ = digits_split()
    ids = encode(train.images[0], int(train.labels[0]))
    assert ids[0] == BOS and ids[-1] == EOS and len(ids) == 67
    assert (decode(ids[2:]) == train.images[0].reshape(8, 8)).all()
    assert decode(ids[2:-10]) is None and decode(ids[1:]) is None  # too short; a class token is not a pixel
    assert encode(train.images[0], None)[1] == NULL
    tok = tokenizer()
    assert tok("c3")["input_ids"] == [BOS, ids[1] - int(train.labels[0]) + 3]
    text = tok.decode(ids[2:], skip_special_tokens=True)
    from harness.digits import parse

    assert (parse(text) == train.images[0].reshape(8, 8)).all() and parse("p1 p2") is None
    assert tok(text)["input_ids"][1:] == ids[2:-1] and ids[2] >= PIXEL0


def test_frechet_and_precision_recall_separate_same_from_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert frechet_distance(a, b) < 0.3 < frechet_distance(a, b + 1.0)
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(a, b[:, :] * 0.1)  # collapsed samples: precise, no recall
    assert p > 0.8 and r < 0.3


@pytest.fixture(scope="module")
def digits_target():
    from harness.loading import load_target

    return load_target("digits-ar", "digits_ar")


def test_jacobi_samples_match_plain_sampling_on_the_testbed(digits_target):
    """sjd and sjd_coupled are lossless: the target's log-likelihood of their images is distributed as that of
    plain ``ar`` samples (two-sample Kolmogorov-Smirnov over 150 independent images each)."""
    import torch
    from scipy.stats import ks_2samp

    from harness.decoder import Decoder
    from harness.drafter import NoDraft
    from harness.image_quality import sample_logp
    from harness.sampling import Sampling
    from harness.verify import make_verifier
    from methods.sjd import JacobiWindow, SJDConfig

    s = Sampling(1.0)
    decoder = Decoder(digits_target, make_verifier(s))
    prompts = [digits_target.tokenizer(f"c{i % 10}")["input_ids"] for i in range(150)]

    def logps(make, seed):
        g = torch.Generator().manual_seed(seed)
        images, asked = [], []
        for i, prompt in enumerate(prompts):
            image = decode(decoder.generate(prompt, make(), 65, g).token_ids)
            if image is not None:
                images.append(image)
                asked.append(i % 10)
        return sample_logp(digits_target.model, np.stack(images), np.array(asked))

    plain = logps(NoDraft, 0)
    for coupled in (False, True):
        jacobi = logps(lambda: JacobiWindow(SJDConfig(window=8, coupled=coupled), s), 1)
        assert ks_2samp(plain, jacobi).pvalue > 1e-3, f"coupled={coupled}"


def test_image_run_reports_quality_and_labels_lossy_rules(tmp_path):
    from harness.runner import run

    from .conftest import compose

    cfg = compose("experiment=digits", "task.limit=2", "method=sjd", "compare=[sjd_coupled,'sjd name=lantern rule=lantern:2:0.3']",
                  "engine.warmup=false", "progress=false")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    m = df[df.role == "method"]
    lossless = m.groupby("method").lossless.first().to_dict()
    assert lossless == {"sjd": True, "sjd_coupled": True, "lantern": False}
    assert set(m[m.method == "lantern"].acceptance_rule) == {"lantern:2:0.3"}
    assert m.score_valid.notna().all() and m.score_class_correct.between(0, 1).all()
    from harness.image_quality import image_report

    table = image_report([tmp_path])
    assert "frechet" in table and (tmp_path / "samples_sjd.png").is_file() and (tmp_path / "speed_quality.png").is_file()
