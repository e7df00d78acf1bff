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
    from tasks.digits import parse

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
