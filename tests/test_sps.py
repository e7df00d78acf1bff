"""Draft-model speculative sampling: lossless greedy output, draft formats, compatibility errors."""

import pytest
import torch
from omegaconf import OmegaConf

from harness.core.config import EngineConfig
from harness.core.errors import SpeclabError
from harness.core.registry import METHODS
from harness.drafting.draft_models import export_hf, load_draft
from harness.engine.decoder import Decoder
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling
from harness.engine.verifiers import make_verifier
from harness.model.tiny import byte_tokenizer, tiny_llama
from methods.sps import DraftModel, SpSConfig

from .test_greedy_equivalence import MAX_NEW, hf_greedy


@pytest.fixture(scope="module")
def draft_folder(tmp_path_factory, tiny_target):
    """An ordinary HF draft: a 1-layer tiny Llama with the target's tokenizer, trained on nothing."""
    tok = byte_tokenizer()
    model = tiny_llama(len(tok), seed=7, layers=1, eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("draft")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sps_greedy_matches_transformers(tiny_target, tiny_prompts, draft_folder, k, adaptive):
    draft = load_draft(str(draft_folder), tiny_target)
    for prompt in tiny_prompts:
        ref = hf_greedy(tiny_target, prompt, MAX_NEW)
        drafter = DraftModel(draft, Sampling(), SpSConfig(k=k, adaptive=adaptive), None)
        res = Decoder(tiny_target, make_verifier(Sampling())).generate(prompt, drafter, MAX_NEW)
        assert res.token_ids == ref
        assert sum(res.drafted) > 0


def test_layer_draft_round_trip(tiny_target, tiny_prompts, layer_draft_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    draft = load_draft(str(layer_draft_folder), tiny_target)
    assert draft.info.extra["shared_with_target"] == ["model.embed_tokens.weight"]
    from safetensors.torch import load_file

    stored = load_file(str(layer_draft_folder / "model.safetensors"))
    assert "model.embed_tokens.weight" not in stored and all(v.dtype == torch.float16 for v in stored.values())
    folder = export_hf(layer_draft_folder, tiny_target, tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tiny_prompts[0]])
    with torch.no_grad():
        expect = plain(ids).logits[0, -1]
    cache = draft.new_cache(64)
    got = draft.forward(cache, tiny_prompts[0], logits_rows=[-1]).logits[0]
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
    # the layer draft is lossless as a drafter, too
    ref = hf_greedy(tiny_target, tiny_prompts[1], MAX_NEW)
    res = Decoder(tiny_target, make_verifier(Sampling())).generate(
        tiny_prompts[1], DraftModel(draft, Sampling(), SpSConfig(k=4), None), MAX_NEW)
    assert res.token_ids == ref


def test_sps_method_builds_with_reduced_head(tiny_target, tiny_prompts, layer_draft_folder):
    import json

    freq = list(range(tiny_target.vocab_size))[::-1]
    (layer_draft_folder / "token_frequency.json").write_text(json.dumps({"token_ids": freq}))
    node = OmegaConf.structured(SpSConfig(k=3, vocab_size=64))
    node.draft.path = str(layer_draft_folder)
    gen = METHODS.build(node, MethodContext(tiny_target, Sampling(), EngineConfig(kernel="torch")))
    assert gen.drafter.draft.lm_head.weight.shape[0] == 64
    res = gen.generate(tiny_prompts[2], MAX_NEW, None)
    assert res.token_ids == hf_greedy(tiny_target, tiny_prompts[2], MAX_NEW)
    assert all(t in set(freq[:64]) for t in gen.drafter.token_ids.tolist())


def test_incompatible_draft_is_refused(tiny_target, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(SpeclabError, match="vocabulary"):
        load_draft(str(tmp_path), tiny_target)


def test_missing_default_draft_names_the_fix(tiny_target):
    with pytest.raises(SpeclabError, match="method.draft.path"):
        load_draft(None, tiny_target)


def test_a_model_without_a_default_draft_is_one_line_naming_the_fix(tiny_target):
    """sps on a model speclab ships no draft for (tiny-llama here; lmsys/vicuna-7b-v1.3 on a cluster): one line that
    names the option to set and the script that distils one."""
    from harness.core.errors import SpeclabError

    node = OmegaConf.structured(SpSConfig())
    with pytest.raises(SpeclabError, match=r"no default draft for model 'tiny-llama'.*method\.draft\.path=.*"
                                           r"python scripts/distill_draft\.py --model tiny-llama") as err:
        METHODS.build(node, MethodContext(tiny_target, Sampling(), EngineConfig(kernel="torch")))
    assert "\n" not in str(err.value)
