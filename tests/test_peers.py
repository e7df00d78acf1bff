"""transformers' generate() as peers: same outputs, counted steps, and PLD drafts identical to ours."""

from omegaconf import OmegaConf

from harness.core.config import EngineConfig
from harness.core.registry import METHODS
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling
from harness.results.metrics import generation_stats
from methods.ar import ARConfig
from methods.hf_peers import HFGenerateConfig, HFPLDConfig, peer_steps
from methods.pld import PLDConfig


def build(cfg, target, sampling=Sampling()):
    return METHODS.build(OmegaConf.structured(cfg), MethodContext(target, sampling, EngineConfig(kernel="torch")))


def test_hf_generate_and_hf_pld_match_the_engine(tiny_target, tiny_prompts):
    ar, hf = build(ARConfig(), tiny_target), build(HFGenerateConfig(), tiny_target)
    pld, hf_pld = build(PLDConfig(), tiny_target), build(HFPLDConfig(), tiny_target)
    assert hf_pld.extra == {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 3}
    first_drafts = []
    for prompt in tiny_prompts:
        a, h = ar.generate(prompt, 40, None), hf.generate(prompt, 40, None)
        assert h.token_ids == a.token_ids and h.steps == a.steps == len(a.token_ids)
        assert h.drafted == [0] * h.steps and h.emitted == [1] * h.steps
        # the prefill is timed apart, so ms_per_step is the time of a decode step, as for engine rows
        assert 0 < h.prefill_time < h.wall_time
        p, hp = pld.generate(prompt, 40, None), hf_pld.generate(prompt, 40, None)
        assert hp.token_ids == p.token_ids == a.token_ids
        assert len(hp.drafted) == len(hp.accepted) == hp.steps and sum(hp.emitted) == len(hp.token_ids)
        # transformers drafts already in its first forward (prompt + candidates), where the engine's prefill drafts
        # nothing; after it the same candidate rule gives the same drafts, capped at the token budget as the
        # engine caps them, and the same acceptances
        first_drafts.append(hp.drafted[0])
        if hp.accepted[0] == 0:
            assert hp.steps == p.steps and hp.drafted[1:] == p.drafted and hp.accepted[1:] == p.accepted
        stats = generation_stats(hp)
        assert stats["drafted_tokens"] == sum(hp.drafted) and stats["accepted_tokens"] == sum(hp.accepted)
        assert stats["acceptance_rate"] == (sum(hp.accepted) / sum(hp.drafted) if sum(hp.drafted) else None)
        assert stats["accept_lengths"] == [x + 1 for x in hp.accepted]
    assert any(first_drafts)  # the first forward's drafts count


def test_peer_steps_count_as_the_engine_counts():
    # transformers' forwards on a 74-token prompt, 20 new tokens: (first position, tokens fed)
    forwards = [(0, 84), *[(74 + i, 1) for i in range(11)], (85, 10), *[(86 + i, 1) for i in range(4)],
                (90, 5), (92, 1)]
    s = peer_steps(74, 20, 20, forwards)
    # the first forward's 10 drafts count; of the 9 fed after 12 tokens only 7 could still be used (20 - 12 - 1
    # for the target's own token), of the 4 after 17 tokens only 2: drafts past the budget, which the engine
    # never makes, do not count
    assert s.drafted == [10, *[0] * 11, 7, 0, 0, 0, 0, 2, 0]
    assert s.accepted == [0] * 17 + [1, 0] and sum(s.emitted) == 20
    assert s.reached == [1, *[0] * 11, 1, 0, 0, 0, 0, 2, 0]


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
