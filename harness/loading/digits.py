"""The ``digits-ar`` image testbed (issue 17): scikit-learn's bundled 8x8 digits as sequences of grey levels.

An image is 64 tokens in raster order, one per pixel, its grey level 0..16 (the dataset's own 17 levels), so
the code of a token is its level and a token's neighbours are the levels next to it: the token similarity
relaxed acceptance rules (LANTERN, GSD) pool over. A sequence is ``<bos> c<class> p.. x64 <eos>``; training
replaces the class token by ``<null>`` 10% of the time so one model is both conditional and unconditional
(classifier-free guidance). The split is fixed: every fifth image of each class is held out, for the
classifier's test and the Fréchet distance's real reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.config import REPO
from harness.core.errors import SpeclabError

SIDE, LEVELS, CLASSES = 8, 17, 10
PIXELS = SIDE * SIDE
SPECIALS = ["<pad>", "<bos>", "<eos>", "<null>"]
VOCAB = SPECIALS + [f"c{d}" for d in range(CLASSES)] + [f"p{v}" for v in range(LEVELS)]
PAD, BOS, EOS, NULL = range(4)
CLASS0 = len(SPECIALS)
PIXEL0 = CLASS0 + CLASSES
TESTBED = REPO / "models" / "digits-ar"


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # [n, 64] int levels 0..16
    labels: np.ndarray  # [n] int 0..9


def digits_split() -> tuple[Split, Split]:
    """(train, held-out): every fifth image of each class held out, in the dataset's order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SpeclabError("the digits testbed needs scikit-learn; run: pip install scikit-learn") from None
    data = load_digits()
    images, labels = data.data.astype(np.int64), data.target.astype(np.int64)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in range(CLASSES):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    held = rank % 5 == 4
    return Split(images[~held], labels[~held]), Split(images[held], labels[held])


def class_token(label: int | None) -> int:
    return NULL if label is None else CLASS0 + int(label)


def encode(image: np.ndarray, label: int | None) -> list[int]:
    return [BOS, class_token(label)] + [PIXEL0 + int(v) for v in np.asarray(image).reshape(-1)] + [EOS]


def decode(token_ids: list[int]) -> np.ndarray | None:
    """The 8x8 levels of a generated continuation (pixel tokens up to ``<eos>``), None unless exactly 64 pixels."""
    pixels = []
    for t in token_ids:
        if t == EOS:
            break
        if not PIXEL0 <= t < PIXEL0 + LEVELS:
            return None
        pixels.append(t - PIXEL0)
    return np.array(pixels, dtype=np.int64).reshape(SIDE, SIDE) if len(pixels) == PIXELS else None


def parse(text: str) -> np.ndarray | None:
    """The 8x8 image of a decoded answer (``"p0 p3 ..."``), None unless it is exactly 64 pixels."""
    words = text.split()
    if len(words) != PIXELS or not all(w[:1] == "p" and w[1:].isdigit() and int(w[1:]) < LEVELS for w in words):
        return None
    return np.array([int(w[1:]) for w in words]).reshape(SIDE, SIDE)


def tokenizer():
    """A word-level fast tokenizer over :data:`VOCAB`; text is space-separated tokens (``"c3"`` asks for a 3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<pad>", clean_up_tokenization_spaces=False)


def model_config(hidden: int = 128, layers: int = 4, heads: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2 + PIXELS + 8,
                       bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def token_neighbours(tok) -> Callable[..., list[int]] | None:
    """For the testbed's tokenizer: ``neighbours(x, radius=None)``, the other pixel tokens by distance of grey
    level from x, nearest first (within ``radius`` levels if given); None for any other tokenizer."""
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    if vocab != {t: i for i, t in enumerate(VOCAB)}:
        return None
    ids = [vocab[f"p{v}"] for v in range(LEVELS)]
    level = {i: v for v, i in enumerate(ids)}

    def neighbours(x: int, radius: int | None = None) -> list[int]:
        if x not in level:
            return []
        v = level[x]
        near = sorted((abs(u - v), u) for u in range(LEVELS) if u != v and (radius is None or abs(u - v) <= radius))
        return [ids[u] for _, u in near]

    return neighbours


def testbed_folder() -> Path:
    if not (TESTBED / "config.json").is_file():
        raise SpeclabError(f"{TESTBED} holds no model; train it: python scripts/train_image_ar.py")
    return TESTBED


def unconditional_prompt(tok) -> Callable[[list[int]], list[int]] | None:
    """For the testbed's tokenizer: the prompt with its class token replaced by ``<null>`` (the unconditional row of
    classifier-free guidance, as training dropped the class); None for any other tokenizer."""
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    if vocab != {t: i for i, t in enumerate(VOCAB)}:
        return None

    def drop_class(ids: list[int]) -> list[int]:
        return [NULL if CLASS0 <= t < CLASS0 + CLASSES else t for t in ids]

    return drop_class
