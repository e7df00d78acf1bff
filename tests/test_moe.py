"""Mixture-of-Experts targets through the engine: tiny seeded configs of each MoE family transformers ships here,
greedy-identical to plain ``generate()`` with ``ar``, ``pld``, tree drafts, a draft model, a Medusa head and
self-speculation; and the expert accounting of verifications.

The reference is ``generate()`` on a second copy with transformers' own attention (SDPA, or eager where the
family needs it) and its own cache: nothing of the engine's KV buffers, masks or kernels.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from harness.engine.decoder import Decoder
from harness.engine.drafter import NoDraft
from harness.engine.sampling import Sampling
from harness.engine.verifiers import make_verifier
from harness.model.target import ModelInfo, TargetModel
from harness.model.tiny import _seeded, byte_tokenizer
from methods.adaptive import AdaptiveDrafter
from methods.layerskip import EarlyExitDrafter, LayerSkipConfig
from methods.pld import PLDConfig, PromptLookup
from methods.sps import DraftModel, SpSConfig

from .conftest import TINY_TEXTS
from .test_greedy_equivalence import OracleTree, hf_greedy
from .test_parallel_heads import build

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 32
COMMON = {"vocab_size": 0, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True, "bos_token_id": 0,
          "pad_token_id": 0}
# family -> (model class, config class, MoE settings, the engine's attention for it)
FAMILIES = {
    "mixtral": (tf.MixtralForCausalLM, tf.MixtralConfig, {"num_local_experts": 8, "num_experts_per_tok": 2}, "speclab"),
    "qwen2_moe": (tf.Qwen2MoeForCausalLM, tf.Qwen2MoeConfig, {"num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}, "speclab"),
    "qwen3_moe": (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig, {"num_experts": 8, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "head_dim": 16}, "speclab"),
    "olmoe": (tf.OlmoeForCausalLM, tf.OlmoeConfig, {"num_experts": 8, "num_experts_per_tok": 2}, "speclab"),
    # multi-head latent attention with values narrower than queries and keys
    "deepseek_v3": (tf.DeepseekV3ForCausalLM, tf.DeepseekV3Config, {
        "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 0,
        "num_key_value_heads": 4, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16, "q_lora_rank": None, "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16, "v_head_dim": 8, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        "speclab"),
    # attention sinks (the engine kernel refuses them) and a sliding window of 8 on every other layer
    "gpt_oss": (tf.GptOssForCausalLM, tf.GptOssConfig, {"num_local_experts": 8, "num_experts_per_tok": 2, "head_dim": 16,
                "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}, "eager"),
}


def tiny_moe(family: str, attention: str) -> TargetModel:
    cls, config_cls, extra, _ = FAMILIES[family]
    tok = byte_tokenizer()
    config = config_cls(**{**COMMON, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, **extra})
    model = _seeded(cls, config, 0, 0.2, tok.eos_token_id)
    if family == "gpt_oss":
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # nonzero sinks (the same in every copy), so a kernel that ignored them would be caught
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_(0.0, 1.0, generator=gen)
    model.config._attn_implementation = attention
    return TargetModel(model, tok, ModelInfo(f"tiny-{family}", "", "", "float32", 0))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def moe(request):
    family = request.param
    target = tiny_moe(family, FAMILIES[family][3])
    stock = tiny_moe(family, "eager" if family == "gpt_oss" else "sdpa")
    prompts = [target.encode_chat([{"role": "user", "content": t}]) for t in TINY_TEXTS[:3]]
    return family, target, prompts, [hf_greedy(stock, p, MAX_NEW) for p in prompts]


def decode(target, drafter, prompt):
    return Decoder(target, make_verifier(Sampling())).generate(prompt, drafter, MAX_NEW)


def test_engine_methods_match_generate(moe, tiny_target, parallel_heads):
    family, target, prompts, references = moe
    drafters = {
        "ar": lambda i, ref: NoDraft(),
        "pld": lambda i, ref: PromptLookup(PLDConfig(num_draft=5), target.stop_ids),
        "tree": lambda i, ref: OracleTree(ref, seed=i),
        "sps": lambda i, ref: DraftModel(tiny_target, Sampling(), SpSConfig(k=3), None),  # a dense draft, same tokenizer
        "medusa": lambda i, ref: build(target, parallel_heads, "medusa").drafter,
        "moe_aware": lambda i, ref: AdaptiveDrafter(PromptLookup(PLDConfig(num_draft=8), target.stop_ids), 8,
                                                    lambda k: 1 + 0.05 * k, target.experts),
        "layerskip": lambda i, ref: EarlyExitDrafter(LayerSkipConfig(exit_layer=1, k=2, adapter="none"), target, None,
                                                     Sampling()),
    }
    accepted = dict.fromkeys(drafters, 0)
    for i, (prompt, ref) in enumerate(zip(prompts, references)):
        for name, make in drafters.items():
            res = decode(target, make(i, ref), prompt)
            assert res.token_ids == ref, f"{family}/{name}"
            accepted[name] += sum(res.accepted)
    assert accepted["tree"] > 10, family


def test_kernel_refuses_attention_sinks():
    target = tiny_moe("gpt_oss", "speclab")
    with pytest.raises(NotImplementedError, match="sinks"):
        decode(target, NoDraft(), target.encode_chat([{"role": "user", "content": "hi"}]))


def test_verifications_count_their_distinct_experts():
    from harness.model.experts import uniform_distinct

    target = tiny_moe("mixtral", "speclab")
    assert target.experts is not None and len(target.experts.routers) == 2
    prompt = target.encode_chat([{"role": "user", "content": TINY_TEXTS[1]}])
    res = decode(target, PromptLookup(PLDConfig(num_draft=6), target.stop_ids), prompt)
    by_width = {int(w): e for w, e in json.loads(res.extra["experts_by_width"]).items()}
    assert by_width[1] == 2.0  # one token, top-2: exactly two experts per layer
    assert len(by_width) > 1 and all(2.0 <= e <= min(8, 2 * w) for w, e in by_width.items())
    assert max(by_width) > 2 and by_width[max(by_width)] > 2.0  # wider verifications load more experts
    assert uniform_distinct(8, 2, 1) == pytest.approx(2.0) and uniform_distinct(8, 2, 64) == pytest.approx(8.0, abs=1e-6)


def test_dense_models_have_no_expert_counter(tiny_target):
    assert tiny_target.experts is None


def test_run_rows_carry_experts_per_step(tmp_path):
    from harness.api import run

    from .conftest import compose

    cfg = compose("model=tiny-llama", "model.name=tiny-mixtral", "model.tiny.family=mixtral", "method=pld", "task.limit=1",
                  "max_new_tokens=16", "engine.warmup=false", "progress=false", "engine.verify_cost=off")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    assert df.experts_per_step.between(2.0, 8.0).all() and df.experts_by_width.str.startswith("{").all()
    assert (df[df.role == "baseline"].experts_per_step == 2.0).all()  # ar verifies one token a step
