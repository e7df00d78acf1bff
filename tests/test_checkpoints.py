"""EAGLE head checkpoints: every official layout written by hand loads into the same head; sizes that do not fit
the target are refused in one line; save/load and export round-trip exactly."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.core.errors import SpeclabError
from harness.drafting.heads.eagle_checkpoints import default_layers, export_official, load_head, new_head, save_head
from harness.drafting.vocab import ReducedVocab

from .test_cli import error_line, run_cli

LAYER_MODULES = ("self_attn.", "mlp.", "post_attention_layernorm.", "input_layernorm.", "hidden_norm.")


@pytest.fixture(scope="module")
def heads(tiny_target):
    """Source heads: EAGLE-1 with and without an fc bias, EAGLE-3 over every third token id."""
    vocab = ReducedVocab(torch.arange(1, tiny_target.vocab_size, 3), tiny_target.vocab_size)
    biased = new_head("eagle", tiny_target, seed=1)
    plain = new_head("eagle", tiny_target, seed=2)
    plain.fc.bias = None
    e3 = new_head("eagle3", tiny_target, vocab, seed=3)
    with torch.no_grad():  # non-trivial norms, so a swapped or dropped norm shows in the outputs
        for head in (biased, plain, e3):
            for name, p in head.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
    return {"eagle_bias": biased, "eagle_plain": plain, "eagle3": e3}


def outputs(head, target):
    """Fused feature, layer output and logits over target ids for fixed random tokens and target states."""
    g = torch.Generator().manual_seed(7)
    n, h = 5, target.config.hidden_size
    tokens = torch.randint(0, target.vocab_size, (1, n), generator=g)
    hidden = {layer: torch.randn(n, h, generator=g) for layer in head.target_layers}
    with torch.no_grad():
        f = head.features(hidden)[None]
        out = head(tokens, f, torch.arange(n)[None])
        logits = head.logits(out[0])
    if head.vocab is not None and head.variant == "eagle3":
        full = torch.full((n, target.vocab_size), -torch.inf)
        full[:, head.vocab.ids] = logits
        logits = full
    return f, out, logits


def assert_same_outputs(a, b, target):
    for x, y in zip(outputs(a, target), outputs(b, target)):
        assert torch.equal(x, y)


def renamed(head, layer_prefix):
    """The head's weights with its decoder layer under ``layer_prefix`` (the official key names)."""
    return {(layer_prefix + k if k.startswith(LAYER_MODULES) else k): v.detach().clone()
            for k, v in head.own_state_dict().items()}


def write(folder: pathlib.Path, config: dict, state: dict, fmt: str) -> pathlib.Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def llama_config(target, **extra) -> dict:
    tc = target.config
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": tc.hidden_size,
            "intermediate_size": tc.intermediate_size, "num_attention_heads": tc.num_attention_heads,
            "num_key_value_heads": tc.num_key_value_heads, "num_hidden_layers": 1, "rms_norm_eps": tc.rms_norm_eps,
            "vocab_size": tc.vocab_size, "max_position_embeddings": 2048, "torch_dtype": "float32", **extra}


# -- each layout ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source,with_embed,bias_key", [
    ("eagle_bias", True, None),  # EAGLE-Vicuna style: no "bias" key means an fc bias, embedding copy stored
    ("eagle_bias", False, True),
    ("eagle_plain", True, False),  # EAGLE-LLaMA3 style: "bias": false
    ("eagle_plain", False, False),
])
def test_eagle1_official_bin(heads, tiny_target, tmp_path, source, with_embed, bias_key):
    head = heads[source]
    state = renamed(head, "layers.0.")
    assert "layers.0.input_layernorm.weight" not in state and "lm_head.weight" not in state
    if with_embed:
        state["embed_tokens.weight"] = tiny_target.model.get_input_embeddings().weight.detach().clone()
    extra = {"rope_theta": 10000.0} if bias_key is None else {"rope_theta": 10000.0, "bias": bias_key}
    folder = write(tmp_path / "h", llama_config(tiny_target, **extra), state, "bin")
    loaded, _ = load_head(str(folder), tiny_target)
    assert loaded.variant == "eagle" and loaded.target_layers == ("final",)
    assert (loaded.fc.bias is not None) == (source == "eagle_bias")
    assert loaded.embed is tiny_target.model.get_input_embeddings()  # the stored copy equals the target's
    assert_same_outputs(head, loaded, tiny_target)


def test_eagle1_bias_key_must_match_weights(heads, tiny_target, tmp_path):
    state = renamed(heads["eagle_bias"], "layers.0.")
    folder = write(tmp_path / "h", llama_config(tiny_target, bias=False), state, "bin")
    with pytest.raises(SpeclabError, match="bias=false but its weights hold fc.bias"):
        load_head(str(folder), tiny_target)


def test_eagle1_stored_embedding_that_differs_is_used(heads, tiny_target, tmp_path):
    """The official loaders overwrite the target's embedding with the stored copy; so does speclab."""
    state = renamed(heads["eagle_bias"], "layers.0.")
    state["embed_tokens.weight"] = torch.randn_like(tiny_target.model.get_input_embeddings().weight)
    loaded, _ = load_head(str(write(tmp_path / "h", llama_config(tiny_target), state, "bin")), tiny_target)
    assert torch.equal(loaded.embed.weight, state["embed_tokens.weight"])


def eagle3_official(head, target, tmp_path, fmt="bin"):
    """yuhuili/EAGLE3-*: midlayer.*, d2t/t2d, config with draft_vocab_size and no rope_theta."""
    state = renamed(head, "midlayer.")
    state["d2t"], state["t2d"] = head.vocab.d2t, head.vocab.t2d
    config = llama_config(target, draft_vocab_size=len(head.vocab), tie_word_embeddings=False)
    return write(tmp_path / "eagle3", config, state, fmt)


def test_eagle3_official(heads, tiny_target, tmp_path):
    head = heads["eagle3"]
    loaded, _ = load_head(str(eagle3_official(head, tiny_target, tmp_path)), tiny_target)
    assert loaded.variant == "eagle3" and loaded.target_layers == head.target_layers
    assert torch.equal(loaded.vocab.ids, head.vocab.ids)
    assert loaded.config.rope_parameters["rope_theta"] == 10000.0  # no rope_theta: Llama's default base
    assert_same_outputs(head, loaded, tiny_target)


def test_eagle3_rope_theta_is_read(heads, tiny_target, tmp_path):
    folder = eagle3_official(heads["eagle3"], tiny_target, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 500000.0}))
    loaded, _ = load_head(str(folder), tiny_target)
    assert loaded.config.rope_parameters["rope_theta"] == 500000.0


def test_eagle3_d2t_in_any_order(heads, tiny_target, tmp_path):
    """d2t only promises draft index i -> target id i + d2t[i]; rows need not be sorted by target id."""
    head = heads["eagle3"]
    state = renamed(head, "midlayer.")
    perm = torch.randperm(len(head.vocab), generator=torch.Generator().manual_seed(0))
    ids = head.vocab.ids[perm]
    state["lm_head.weight"] = state["lm_head.weight"][perm]
    state["d2t"], state["t2d"] = ids - torch.arange(len(ids)), head.vocab.t2d
    folder = write(tmp_path / "h", llama_config(tiny_target, draft_vocab_size=len(ids)), state, "safetensors")
    loaded, _ = load_head(str(folder), tiny_target)
    assert_same_outputs(head, loaded, tiny_target)


def test_eagle3_full_vocabulary_needs_no_d2t(tiny_target, tmp_path):
    head = new_head("eagle3", tiny_target, None, seed=4)
    config = llama_config(tiny_target, draft_vocab_size=tiny_target.vocab_size)
    loaded, _ = load_head(str(write(tmp_path / "h", config, renamed(head, "midlayer."), "bin")), tiny_target)
    assert loaded.vocab is None
    assert_same_outputs(head, loaded, tiny_target)


def test_speculators_layout(heads, tiny_target, tmp_path):
    """vllm-project/speculators: layers.0.*, stored embedding, the layer config nested, taps as layer inputs."""
    head = heads["eagle3"]
    state = renamed(head, "layers.0.")
    state["embed_tokens.weight"] = tiny_target.model.get_input_embeddings().weight.detach().clone()
    state["d2t"], state["t2d"] = head.vocab.d2t, head.vocab.t2d
    config = {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "speculators_version": "0.3.0",
        "transformer_layer_config": llama_config(tiny_target),
        "draft_vocab_size": len(head.vocab), "norm_before_residual": False, "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": list(head.target_layers),
        "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                               "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                               "verifier": {"name_or_path": "tiny-llama", "architectures": ["LlamaForCausalLM"]}},
    }
    loaded, _ = load_head(str(write(tmp_path / "h", config, state, "safetensors")), tiny_target)
    assert loaded.target_layers == head.target_layers
    assert_same_outputs(head, loaded, tiny_target)


def test_specforge_layout(heads, tiny_target, tmp_path):
    """SpecForge/SGLang: official keys, no embedding, taps listed as layer outputs under eagle_config."""
    head = heads["eagle3"]
    state = renamed(head, "midlayer.")
    state["d2t"], state["t2d"] = head.vocab.d2t, head.vocab.t2d
    config = llama_config(tiny_target, architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=len(head.vocab),
                          eagle_config={"eagle_aux_hidden_state_layer_ids": [i - 1 for i in head.target_layers],
                                        "use_aux_hidden_state": True})
    loaded, _ = load_head(str(write(tmp_path / "h", config, state, "safetensors")), tiny_target)
    assert loaded.target_layers == head.target_layers
    assert_same_outputs(head, loaded, tiny_target)


# -- round trips ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["eagle_bias", "eagle_plain", "eagle3"])
def test_save_load_round_trip(heads, tiny_target, tmp_path, source):
    head = heads[source]
    out = save_head(head, tmp_path / "h", tiny_target, {"command": "test"}, dtype=torch.float32)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["rope_theta"] == 10000.0 and config["rope_scaling"] is None
    if head.variant == "eagle3":  # both engines' conventions for the taps
        assert config["eagle_aux_hidden_state_layer_ids"] == list(head.target_layers)
        assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [i - 1 for i in head.target_layers]
        assert config["draft_vocab_size"] == len(head.vocab)
    else:
        assert config["bias"] == (head.fc.bias is not None)
    loaded, _ = load_head(str(out), tiny_target)
    mine, theirs = head.own_state_dict(), loaded.own_state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert_same_outputs(head, loaded, tiny_target)


@pytest.mark.parametrize("source", ["eagle_bias", "eagle3"])
def test_export_official_is_standalone(heads, tiny_target, tmp_path, source):
    head = heads[source]
    saved = save_head(head, tmp_path / "h", tiny_target, {}, dtype=torch.float32)
    out = export_official(str(saved), tiny_target, tmp_path / "standalone", dtype=torch.float32)
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert torch.equal(state["embed_tokens.weight"], tiny_target.model.get_input_embeddings().weight)
    if head.variant == "eagle":  # exactly what Spec-Bench's strict EAGLE-1 loader builds
        layer = ({f"layers.0.self_attn.{p}_proj.weight" for p in "qkvo"}
                 | {f"layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
                 | {"layers.0.post_attention_layernorm.weight"})
        assert set(state) == layer | {"embed_tokens.weight", "fc.weight", "fc.bias"}
    else:
        config = json.loads((out / "config.json").read_text())
        assert config["target_hidden_size"] == tiny_target.config.hidden_size
        assert {"midlayer.hidden_norm.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"} <= set(state)
    loaded, _ = load_head(str(out), tiny_target)
    assert_same_outputs(head, loaded, tiny_target)


# -- refusals ------------------------------------------------------------------------------------------------

def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_pickle_with_objects_is_refused(tiny_target, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    folder = tmp_path / "h"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llama_config(tiny_target)))
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(SpeclabError) as e:
        load_head(str(folder), tiny_target)
    assert "weights_only=True" in one_line(e) and not marker.exists()


def test_pickle_with_non_tensor_entries_is_refused(tiny_target, tmp_path):
    folder = write(tmp_path / "h", llama_config(tiny_target), {"fc.weight": [1.0, 2.0]}, "bin")
    with pytest.raises(SpeclabError, match="non-tensor entries"):
        load_head(str(folder), tiny_target)


def saved(head, target, path, **config_changes):
    out = save_head(head, path, target, {}, dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **config_changes}))
    return str(out)


def test_hidden_size_mismatch(tiny_target, tmp_path):
    from harness.core.config import TinySpec
    from harness.loading.sources import load_target

    narrow = load_target("tiny-narrow", "tiny", tiny=TinySpec(hidden=32, intermediate=64))
    with pytest.raises(SpeclabError) as e:
        load_head(saved(new_head("eagle", narrow), narrow, tmp_path / "h"), tiny_target)
    assert "head hidden size 32 does not fit target 'tiny-llama' (hidden size 64)" in one_line(e)


@pytest.mark.parametrize("source,changes,expect", [
    ("eagle_bias", {"vocab_size": 300},
     "head vocabulary 300 (config vocab_size) does not fit target 'tiny-llama' (vocabulary 259)"),
    ("eagle3", {"eagle_aux_hidden_state_layer_ids": [0, 1, 5]},
     "head reads the inputs of target layers [0, 1, 5] but target 'tiny-llama' has 2 layers"),
    ("eagle3", {"eagle_aux_hidden_state_layer_ids": [0, 1]},
     "head fc maps 192 inputs to 64 but target 'tiny-llama' gives 128"),
    ("eagle3", {"draft_vocab_size": 50}, "draft_vocab_size 50 but its lm_head has 86 rows"),
    ("eagle3", {"fc_norm": True}, "sets fc_norm"),
    ("eagle_bias", {"num_hidden_layers": 2}, "has 2 decoder layers"),
])
def test_misfits_are_refused(heads, tiny_target, tmp_path, source, changes, expect):
    with pytest.raises(SpeclabError) as e:
        load_head(saved(heads[source], tiny_target, tmp_path / "h", **changes), tiny_target)
    assert expect in one_line(e)


def test_t2d_of_another_vocabulary(heads, tiny_target, tmp_path):
    folder = eagle3_official(heads["eagle3"], tiny_target, tmp_path, fmt="safetensors")
    state = load_file(str(folder / "model.safetensors"))
    state["t2d"] = torch.zeros(300, dtype=torch.bool)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(SpeclabError) as e:
        load_head(str(folder), tiny_target)
    assert "head vocabulary 300 (t2d) does not fit target 'tiny-llama' (vocabulary 259)" in one_line(e)


# -- the tap convention --------------------------------------------------------------------------------------

def test_hidden_states_index_layer_inputs(tiny_target):
    """transformers' hidden_states[i] is the input of decoder layer i; the last entry is post-norm, so
    EAGLE-3 taps (inputs of layers 2, L//2, L-3) never index it."""
    backbone = tiny_target.backbone
    seen = {}

    def record(i):
        def hook(module, args, kwargs):
            seen[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    hooks = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(backbone.layers)]
    try:
        with torch.no_grad():
            out = backbone(input_ids=torch.tensor([[3, 14, 15, 92]]), output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    n = tiny_target.num_layers
    assert len(out.hidden_states) == n + 1
    assert all(torch.equal(out.hidden_states[i], seen[i]) for i in range(n))
    assert torch.equal(out.hidden_states[n], out.last_hidden_state)  # post-norm
    assert default_layers("eagle3", 30) == (2, 15, 27)  # SmolLM2-135M
    assert max(default_layers("eagle3", n)) < n


# -- the command line ----------------------------------------------------------------------------------------

def test_cli_refuses_a_misfit_head(tmp_path):
    from harness.core.config import TinySpec
    from harness.loading.sources import load_target

    narrow = load_target("tiny-narrow", "tiny", tiny=TinySpec(hidden=32, intermediate=64))
    head = saved(new_head("eagle", narrow), narrow, tmp_path / "head")
    proc = run_cli("method=eagle", "model=tiny-llama", f"method.head={head}", "task.limit=1", tmp_path=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "head hidden size 32 does not fit target 'tiny-llama' (hidden size 64)" in error_line(proc)
