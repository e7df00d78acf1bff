"""The digits-ar image testbed (issue 17): tokens, split, quality measures, the task, and Jacobi decoding on it."""

from __future__ import annotations

import numpy as np
import pytest

from harness.loading.digits import BOS, EOS, NULL, PIXEL0, decode, digits_split, encode, tokenizer
from harness.results.image_quality import frechet_distance, precision_recall


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
    from harness.loading.digits import parse

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
    from harness.loading.sources import load_target

    return load_target("digits-ar", "digits_ar")


def test_jacobi_samples_match_plain_sampling_on_the_testbed(digits_target):
    """sjd and sjd_coupled are lossless: the target's log-likelihood of their images is distributed as that of
    plain ``ar`` samples (two-sample Kolmogorov-Smirnov over 150 independent images each)."""
    import torch
    from scipy.stats import ks_2samp

    from harness.engine.decoder import Decoder
    from harness.engine.drafter import NoDraft
    from harness.engine.sampling import Sampling
    from harness.engine.verifiers import make_verifier
    from harness.results.image_quality import sample_logp
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
    from harness.api import run

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
    from harness.results.image_quality import image_report

    table = image_report([tmp_path])
    assert "frechet" in table and (tmp_path / "samples_sjd.png").is_file() and (tmp_path / "speed_quality.png").is_file()


# -- classifier-free guidance ---------------------------------------------------------------------------------------
GUIDANCE = 3.0


@pytest.fixture
def guided_target(digits_target, one_thread):
    from harness.loading.digits import unconditional_prompt

    digits_target.set_guidance(GUIDANCE, unconditional_prompt(digits_target.tokenizer))
    yield digits_target
    digits_target.set_guidance(1.0, None)


def mid_image_prompt(label: int = 3, pixels: int = 20) -> list[int]:
    """A class token and the first pixels of a real image of it: the next pixels are uncertain, so sampling
    tests have power (the first pixels of every digit are background)."""
    train, _ = digits_split()
    image = train.images[np.flatnonzero(train.labels == label)[0]]
    return encode(image, label)[: 2 + pixels]


def test_guided_forward_is_the_guidance_of_two_plain_forwards(guided_target):
    """Both rows in one forward on a cache, tree tokens included, give u + s (c - u) of the conditional and the
    unconditional prompt run separately without guidance; an accepted path kept by gather stays right."""
    import torch

    from harness.engine import tree as T

    t = guided_target
    prompt = mid_image_prompt()
    tokens, parents = [PIXEL0 + 5, PIXEL0 + 9, PIXEL0 + 0, PIXEL0 + 16], [-1, 0, 0, 2]

    def plain(ids):
        with torch.inference_mode():
            return t.model(input_ids=torch.tensor([ids])).logits[0, -1].float()

    def guided_ref(ids):
        c, u = plain(ids), plain([NULL if i == 1 else x for i, x in enumerate(ids)])
        return u + GUIDANCE * (c - u)

    cache = t.new_cache(64)
    out = t.forward(cache, prompt, logits_rows=[-1])
    assert torch.allclose(out.logits[0], guided_ref(prompt), atol=1e-4)
    start = cache.length
    out = t.forward(cache, [PIXEL0 + 1] + tokens, positions=T.positions(parents, start), tree=T.ancestor_mask(parents))
    base = prompt + [PIXEL0 + 1]
    def path_to(node):
        return [] if node < 0 else path_to(parents[node]) + [tokens[node]]

    for row, node in enumerate([-1, 0, 1, 2, 3]):
        ids = base + path_to(node)
        assert torch.allclose(out.logits[row], guided_ref(ids), atol=1e-4), row
    cache.keep(start, [0, 1, 3, 4])  # the path node 0 -> node 2 -> node 3 (slot 2, node 1, dropped)
    out = t.forward(cache, [PIXEL0 + 7])
    assert torch.allclose(out.logits[0], guided_ref(base + path_to(3) + [PIXEL0 + 7]), atol=1e-4)


def test_guided_jacobi_decoding_samples_the_guided_distribution(guided_target):
    """sjd under guidance reproduces the guided law of the next 3 pixels (chi-square against the exact law);
    plain sampling of the unguided model, the same test's control, is rejected: the guidance is real."""
    from harness.engine.decoder import Decoder
    from harness.engine.drafter import NoDraft
    from harness.engine.sampling import Sampling
    from harness.engine.verifiers import make_verifier
    from methods.sjd import JacobiWindow, SJDConfig

    from .test_sampling_lossless import TargetLaw
    from .toy import chi_square, sample_outputs

    s, n, length = Sampling(1.0), 3000, 3
    prompt = mid_image_prompt()
    law = TargetLaw(guided_target, prompt, s, length, 5.0 / n)
    decoder = Decoder(guided_target, make_verifier(s))

    def cells(drafter, seed):
        counts: dict[tuple, int] = {}
        for seq, c in sample_outputs(decoder, drafter, prompt, length, n, seed).items():
            counts[law.cell(seq)] = counts.get(law.cell(seq), 0) + c
        return counts

    pvalue, tv = chi_square(cells(JacobiWindow(SJDConfig(window=4), s), 0), law.cells)
    assert pvalue > 1e-4, f"p={pvalue:.2e}, TV={tv:.4f}"
    guided_target.set_guidance(1.0, None)
    assert chi_square(cells(NoDraft(), 1), law.cells)[0] < 1e-8


def test_guided_greedy_decoding_is_identical_for_every_drafter(guided_target):
    import torch

    from harness.engine.decoder import Decoder
    from harness.engine.drafter import NoDraft
    from harness.engine.sampling import Sampling
    from harness.engine.verifiers import make_verifier
    from methods.pld import PLDConfig, PromptLookup
    from methods.sjd import JacobiWindow, SJDConfig

    s = Sampling(0.0)
    decoder = Decoder(guided_target, make_verifier(s))
    for label in (0, 3, 8):
        prompt = guided_target.tokenizer(f"c{label}")["input_ids"]
        ref = decoder.generate(prompt, NoDraft(), 65).token_ids
        for drafter in (JacobiWindow(SJDConfig(window=8), s), PromptLookup(PLDConfig(), guided_target.stop_ids)):
            assert decoder.generate(prompt, drafter, 65).token_ids == ref, (label, type(drafter).__name__)
    with torch.inference_mode():  # guidance changes the greedy image of some class
        guided = [decoder.generate(guided_target.tokenizer(f"c{c}")["input_ids"], NoDraft(), 65).token_ids for c in range(10)]
        guided_target.set_guidance(1.0, None)
        plain = [decoder.generate(guided_target.tokenizer(f"c{c}")["input_ids"], NoDraft(), 65).token_ids for c in range(10)]
    assert guided != plain


def test_guided_run_records_its_scale_and_refuses_what_it_cannot_guide(tmp_path):
    from harness.api import run
    from harness.bench.runner import Runner
    from harness.core.errors import SpeclabError

    from .conftest import compose

    base = ("experiment=digits", "task.limit=1", "task.groups=[c3]", "engine.warmup=false", "progress=false")
    cfg = compose(*base, "method=sjd", "guidance=2.5")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    assert set(df.guidance) == {2.5} and set(df.role) == {"method", "baseline"}
    bad = {
        ("guidance=2", "compare=[hf_generate]"): "hf_generate decode with transformers' generate()",
        ("guidance=2", "model=tiny-llama"): "model 'tiny-llama' has no unconditional prompt",
        ("guidance=-1",): "guidance must be >= 0",
    }
    for extra, message in bad.items():
        cfg = compose(*base, "method=sjd", *extra)
        cfg.out_dir = str(tmp_path / "bad")
        with pytest.raises(SpeclabError, match=message):
            Runner(cfg)


def test_a_fixed_length_task_sets_the_budget_itself(tmp_path):
    """task=digits knows an answer is 64 grey levels and the end token: without experiment=digits it runs with that
    budget (the default 128 would exceed the model's context of 74), and an explicit max_new_tokens still wins."""
    from harness.api import run

    from .conftest import compose

    assert compose("model=digits-ar", "task=digits").max_new_tokens == 65
    assert compose("model=digits-ar", "task=digits", "max_new_tokens=20").max_new_tokens == 20
    assert compose().max_new_tokens == 128  # other tasks keep the run's default
    cfg = compose("model=digits-ar", "task=digits", "method=sjd", "task.per_class=1", "task.limit=2",
                  "engine.warmup=false", "progress=false")
    cfg.out_dir = str(tmp_path)
    m = run(cfg).query("role == 'method'")
    assert (m.max_new_tokens == 65).all() and (m.new_tokens == 65).all() and m.equivalent.all()
