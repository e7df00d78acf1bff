"""EAGLE head checkpoints written by speclab: its writer's files carry the official key names and shapes (the
tables in tests/official_heads.py, taken from the official sources), read back exactly (round trips: speclab's
writer read by speclab's loader), export standalone copies, and sizes that do not fit the target are refused in
one line. The official layouts themselves are checked against an independent forward in test_official_layouts.py.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from harness.core.errors import SpeclabError
from harness.drafting.heads.eagle_checkpoints import default_layers, export_official, load_head, new_head, save_head
from harness.drafting.vocab import ReducedVocab

from . import official_heads as oh
from .test_cli import error_line, run_cli


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


def official_shapes(head, target, embedding: bool) -> dict[str, tuple]:
    """The keys and shapes the official layout of ``head``'s variant has (vocabulary maps aside)."""
    d = oh.Dims.of(target)
    if head.variant == "eagle":
        keys = oh.eagle1_keys(d, fc_bias=head.fc.bias is not None, qkv_bias=False)
        return {k: s for k, s in keys if embedding or k != "embed_tokens.weight"}
    rows = head.lm_head.out_features
    return {**dict(oh.eagle3_keys(d, "midlayer.", rows, embedding)), "d2t": (rows,), "t2d": (d.vocab,)}


# -- round trips: speclab's writer, read back by speclab's loader --------------------------------------------

@pytest.mark.parametrize("source", ["eagle_bias", "eagle_plain", "eagle3"])
def test_save_load_round_trip(heads, tiny_target, tmp_path, source):
    from safetensors.torch import load_file

    head = heads[source]
    out = save_head(head, tmp_path / "h", tiny_target, {"command": "test"}, dtype=torch.float32)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    written = {k: tuple(v.shape) for k, v in load_file(str(out / "model.safetensors")).items()}
    assert written == official_shapes(head, tiny_target, embedding=False)  # the official layout, less the embedding
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
    # every key of the official layout, embedding included (Spec-Bench's strict EAGLE-1 loader demands them all)
    assert {k: tuple(v.shape) for k, v in state.items()} == official_shapes(head, tiny_target, embedding=True)
    if head.variant == "eagle3":
        config = json.loads((out / "config.json").read_text())
        assert config["target_hidden_size"] == tiny_target.config.hidden_size
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
    (folder / "config.json").write_text(json.dumps(oh.llama_head_config(oh.Dims.of(tiny_target))))
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(SpeclabError) as e:
        load_head(str(folder), tiny_target)
    assert "weights_only=True" in one_line(e) and not marker.exists()


def test_pickle_with_non_tensor_entries_is_refused(tiny_target, tmp_path):
    folder = oh.write_head(tmp_path / "h", oh.llama_head_config(oh.Dims.of(tiny_target)), {"fc.weight": [1.0, 2.0]},
                           "pytorch_model.bin")
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
