"""SMC-SD: importance weights that are right (zero when the draft is the target; unbiased otherwise), resampling that
follows the weights, answers drawn from the target's distribution when the draft is the target, one-line refusals."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from harness.core.config import EngineConfig
from harness.core.errors import SpeclabError
from harness.core.registry import METHODS
from harness.drafting import particles
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling
from methods.smc import SMCConfig

from .test_sampling_lossless import ALPHA, TargetLaw
from .toy import chi_square

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target_as_draft(tiny_target, tmp_path_factory):
    """The tiny target saved as an ordinary HF folder: a draft whose q is exactly the target's p."""
    folder = tmp_path_factory.mktemp("target_as_draft")
    tiny_target.model.save_pretrained(folder)
    tiny_target.tokenizer.save_pretrained(folder)
    return folder


def smc(target, draft_folder, sampling=Sampling(1.0), **overrides):
    node = OmegaConf.structured(SMCConfig(**overrides))
    node.draft.path = str(draft_folder)
    return METHODS.build(node, MethodContext(target, sampling, OmegaConf.structured(EngineConfig(kernel="torch"))))


def test_a_draft_equal_to_the_target_weighs_every_particle_alike(tiny_target, tiny_prompts, target_as_draft):
    gen = smc(tiny_target, target_as_draft, particles=4, gamma=3)
    weights = []
    update = particles.effective_size

    def spy(log_w):
        weights.append(log_w.clone())
        return update(log_w)

    particles.effective_size = spy
    try:
        result = gen.generate(tiny_prompts[1], 16, torch.Generator().manual_seed(0))
    finally:
        particles.effective_size = update
    assert weights and all(w.abs().max() < 1e-4 for w in weights)  # log p - log q = 0 for every drafted token
    assert result.extra["smc_resamples"] == 0 and result.extra["smc_ess_mean"] == pytest.approx(4.0)
    assert result.new_tokens == 16 and gen.lossless is False


def test_with_the_target_as_draft_answers_follow_the_target(tiny_target, tiny_prompts, target_as_draft):
    """q = p: every particle is a sample of the target and the weights are equal, so the answer (argmax of equal
    weights: the first particle) is distributed as the target's own samples."""
    s = Sampling(1.0)
    gen = smc(tiny_target, target_as_draft, s, particles=2, gamma=2)
    law = TargetLaw(tiny_target, tiny_prompts[0], s, 3, 2.0 / 1500)
    counts: dict = {}
    g = torch.Generator().manual_seed(1)
    for _ in range(1500):
        cell = law.cell(gen.generate(tiny_prompts[0], 3, g).token_ids)
        counts[cell] = counts.get(cell, 0) + 1
    pvalue, tv = chi_square(counts, law.cells)
    assert pvalue > ALPHA, f"p={pvalue:.2e}, TV={tv:.4f}"


def test_importance_weights_are_unbiased_for_another_draft(tiny_target, tiny_prompts, layer_draft_folder):
    """E_q[p(x) / q(x)] = 1 token by token: the mean of exp(log p - log q) over many drafted tokens is 1, and a weight
    with the draft's and target's roles swapped would not be."""
    s = Sampling(1.0)
    gen = smc(tiny_target, layer_draft_folder, s, particles=8, gamma=1, resample_threshold=0.0)
    ratios = []
    g = torch.Generator().manual_seed(2)
    original = particles.effective_size

    def spy(log_w):
        ratios.append(torch.exp(log_w - spy.last))
        spy.last = log_w.clone()
        return original(log_w)

    for prompt in tiny_prompts * 30:
        spy.last = torch.zeros(8, dtype=torch.float64)
        particles.effective_size = spy
        try:
            gen.generate(prompt, 2, g)  # one cycle: one drafted token per particle
        finally:
            particles.effective_size = original
    values = torch.cat(ratios)
    mean, err = float(values.mean()), float(values.std() / len(values) ** 0.5)
    assert abs(mean - 1.0) < 4 * err + 0.02, (mean, err)
    assert float(values.std()) > 0.05  # the draft differs from the target: the weights do vary
    swapped = 1.0 / values  # q / p: E_q[q / p] = sum q^2 / p > 1 unless q = p
    assert float(swapped.mean()) > 1.0 + 4 * float(swapped.std() / len(values) ** 0.5)


def test_resampling_follows_the_weights():
    g = torch.Generator().manual_seed(3)
    log_w = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64))
    assert particles.effective_size(torch.zeros(4)) == pytest.approx(4.0)
    assert particles.effective_size(log_w) == pytest.approx(1 / (0.25 + 0.0625 + 2 * 0.015625))
    for scheme in particles.SCHEMES:
        counts = torch.zeros(4)
        for _ in range(4000):
            for a in particles.ancestors(log_w, scheme, g):
                counts[a] += 1
        assert torch.allclose(counts / counts.sum(), torch.exp(log_w).float(), atol=0.01), (scheme, counts)
    # systematic: a particle of weight w has floor(N w) or ceil(N w) children, every time
    for _ in range(100):
        kids = torch.bincount(torch.tensor(particles.ancestors(log_w, "systematic", g)), minlength=4)
        assert kids[0] == 2 and kids[1] == 1 and kids[2:].sum() == 1


def test_a_run_labels_smc_lossy_and_sets_its_quality_beside_plain_sampling(tmp_path, layer_draft_folder):
    from harness.api import run

    from .test_runs import tiny_cfg

    df = run(tiny_cfg(tmp_path, "method=smc", f"method.draft.path={layer_draft_folder}", "temperature=0.7",
                      "task.limit=2", "nll=true", "max_new_tokens=12"))
    m = df[df.role == "method"]
    assert not m.lossless.any() and (m.acceptance_rule == "smc").all() and (m.smc_particles == 4).all()
    assert m.target_nll.gt(0).all() and df[df.role == "baseline"].target_nll.gt(0).all()
    assert m.equivalent.isna().all()  # sampled: checked by distribution, never token by token


def test_bad_smc_settings_are_one_clear_line(tiny_target, target_as_draft):
    for overrides, message in [({"particles": 0}, "particles >= 1"), ({"resampling": "stratified"}, "resampling"),
                               ({"select": "first"}, "method.select"), ({"resample_threshold": 2.0}, "resample_threshold")]:
        with pytest.raises(SpeclabError, match=message):
            smc(tiny_target, target_as_draft, **overrides)
    with pytest.raises(SpeclabError, match="temperature must be > 0"):
        smc(tiny_target, target_as_draft, Sampling())
