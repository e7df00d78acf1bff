"""transformers' generate() as peers: same outputs, counted steps, and PLD drafts identical to ours."""

from omegaconf import OmegaConf

from harness.config import EngineConfig
from harness.generator import METHODS, MethodContext
from harness.metrics import generation_stats
from harness.sampling import Sampling
from methods.ar import ARConfig
from methods.hf_peers import HFGenerateConfig, HFPLDConfig
from methods.pld import PLDConfig


def build(cfg, target, sampling=Sampling()):
    return METHODS.build(OmegaConf.structured(cfg), MethodContext(target, sampling, EngineConfig(kernel="torch")))


def test_hf_generate_and_hf_pld_match_the_engine(tiny_target, tiny_prompts):
    ar, hf = build(ARConfig(), tiny_target), build(HFGenerateConfig(), tiny_target)
    pld, hf_pld = build(PLDConfig(), tiny_target), build(HFPLDConfig(), tiny_target)
    assert hf_pld.extra == {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 3}
    for prompt in tiny_prompts:
        a, h = ar.generate(prompt, 40, None), hf.generate(prompt, 40, None)
        assert h.token_ids == a.token_ids and h.steps == a.steps == len(a.token_ids)
        p, hp = pld.generate(prompt, 40, None), hf_pld.generate(prompt, 40, None)
        assert hp.token_ids == p.token_ids == a.token_ids
        # the same candidate rule: the same drafts, steps and acceptances (the engine also caps a draft at the
        # tokens still allowed, which transformers does not)
        room = [40 - 1 - sum(p.emitted[:i]) - 1 for i in range(len(p.drafted))]
        assert hp.steps == p.steps and [min(d, r) for d, r in zip(hp.drafted, room)] == p.drafted
        assert hp.accepted_total == sum(p.accepted)
        stats = generation_stats(hp)
        assert stats["pos_reached"] is None and stats["accept_lengths"] is None
        assert stats["acceptance_rate"] == (hp.accepted_total / sum(hp.drafted) if sum(hp.drafted) else None)


def test_hf_generate_samples_reproducibly(tiny_target, tiny_prompts):
    import torch

    hf = build(HFGenerateConfig(), tiny_target, Sampling(0.8, top_k=20))
    a = hf.generate(tiny_prompts[0], 20, torch.Generator().manual_seed(3)).token_ids
    b = hf.generate(tiny_prompts[0], 20, torch.Generator().manual_seed(3)).token_ids
    assert a == b


def test_hf_assisted_uses_the_same_draft(tiny_target, tiny_prompts, layer_draft_folder):
    from methods.hf_peers import HFAssistedConfig

    cfg = OmegaConf.structured(HFAssistedConfig(k=3))
    cfg.draft.path = str(layer_draft_folder)
    hf = METHODS.build(cfg, MethodContext(tiny_target, Sampling(), EngineConfig(kernel="torch")))
    assistant = hf.extra["assistant_model"]
    assert assistant.generation_config.num_assistant_tokens == 3
    assert assistant.generation_config.num_assistant_tokens_schedule == "constant"
    ar = build(ARConfig(), tiny_target)
    for prompt in tiny_prompts[:2]:
        res = hf.generate(prompt, 30, None)
        assert res.token_ids == ar.generate(prompt, 30, None).token_ids
        assert sum(res.drafted) > 0 and res.steps < 31
