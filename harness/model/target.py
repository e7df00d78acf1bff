"""Target wrapper: one forward over a draft tree on top of the KV cache, returning logits and hidden states.

Wraps any transformers causal LM that routes attention through the attention interface (Llama, Qwen2,
Mistral, Gemma 3, ...). The engine registers its own attention function, ``speclab``: for a short query it
folds the query heads that share a KV head into the query-length axis, so grouped-query attention with a
tree mask reads the cached keys once instead of materialising ``repeat_kv`` copies (on this CPU those
this made 1- to 4-token forwards 3-6% faster than SDPA's path).

Classifier-free guidance (:meth:`TargetModel.set_guidance`) runs a second, unconditional row in the same
forward: the cache holds both rows, every forward feeds the same new tokens to both (the prefill feeds the
unconditional row its own prompt), and the logits returned are the guided ones, so drafters, verifiers and
the baseline all see one distribution and acceptance stays exact on it.

Sliding-window layers (Gemma 3, Mistral-style configs) keep every slot in the cache; the engine gives them
their own mask, the tree mask combined with the window measured in positions, whenever the window cuts
anything, so a tree token at depth d sees the cache slots within ``sliding_window`` positions of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel, PreTrainedTokenizerBase

from harness.model.experts import expert_counter
from harness.model.kv_cache import KVCache

ATTENTION = "speclab"


def speclab_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [b, H, q, d]; key/value [b, KVH, kv, d]; mask None (causal prefill or 1 token) or additive 4-D.

    A sliding-window layer's mask already holds its window (:meth:`TargetModel.forward` builds it); without a
    mask the whole cache must lie inside the window.
    """
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("the speclab attention kernel does not implement softcap; set model.attention=sdpa")
    if getattr(module, "sinks", None) is not None:  # GPT-OSS: a learned logit per head joins every softmax
        raise NotImplementedError("the speclab attention kernel does not implement attention sinks; set model.attention=eager")
    b, h, q, d = query.shape
    kvh, kv = key.shape[1], key.shape[2]
    window = kwargs.get("sliding_window")
    if window is not None and attention_mask is None and kv > window:
        raise ValueError(f"a sliding-window layer over {kv} cached slots (window {window}) needs an explicit mask")
    groups = h // kvh
    if attention_mask is None and q > 1:
        if q != kv:
            raise ValueError("a multi-token forward on a non-empty cache needs an explicit mask")
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous(), None
    folded = query.reshape(b, kvh, groups * q, d)
    mask = attention_mask
    if mask is not None:
        mask = mask[..., -kv:]
        if groups > 1:
            mask = mask.unsqueeze(2).expand(mask.shape[0], 1, groups, q, kv).reshape(mask.shape[0], 1, groups * q, kv)
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    # values may be narrower than queries and keys (DeepSeek's MLA)
    return out.reshape(b, h, q, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, speclab_attention)


def visibility(cache_len: int, tree: torch.Tensor) -> torch.Tensor:
    """Boolean [n, cache_len + n]: every new token sees the whole cache, and ``tree`` among the new ones."""
    n = tree.shape[0]
    full = torch.ones(n, cache_len + n, dtype=torch.bool, device=tree.device)
    full[:, cache_len:] = tree
    return full


def additive_mask(cache_len: int, tree: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, n, cache_len + n] additive form of :func:`visibility`."""
    return to_additive(visibility(cache_len, tree), dtype)


def window_visibility(visible: torch.Tensor, positions: torch.Tensor, window: int) -> torch.Tensor:
    """``visible`` [n, cache_len + n] limited to keys less than ``window`` positions behind each query.

    Cache slot j holds position j (the engine compacts accepted paths); the new tokens hold ``positions``.
    """
    n = positions.numel()
    key_pos = torch.cat([torch.arange(visible.shape[1] - n, device=positions.device), positions.reshape(-1)])
    return visible & (key_pos[None, :] > positions.reshape(-1, 1) - window)


def to_additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean [q, kv] visibility matrix as the [1, 1, q, kv] additive mask attention kernels take."""
    additive = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    additive.masked_fill_(~visible, torch.finfo(dtype).min)
    return additive[None, None]


def needs_layers(hidden_layers: Sequence[int | str]) -> bool:
    """Whether a forward must return every layer's states (any asked for but the final normed one)."""
    return any(layer != "final" for layer in hidden_layers)


def layer_states(out: Any, hidden_layers: Sequence[int | str]) -> dict[int | str, torch.Tensor]:
    """The asked-for states of the first row of a backbone output: layer index -> [n, H], ``"final"`` the normed last."""
    final = out.last_hidden_state[0]
    return {layer: final if layer == "final" else out.hidden_states[layer][0] for layer in hidden_layers}


def stop_token_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a generation: the generation config's eos ids and the tokenizer's."""
    ids: set[int] = set()
    for src in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return ids


@dataclass
class ModelInfo:
    """Provenance of a loaded model, copied into every results row."""

    name: str
    path: str
    weights_hash: str
    dtype: str
    num_params: int
    extra: dict = field(default_factory=dict)


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [rows, vocab] for the requested rows
    hidden: dict[int | str, torch.Tensor]  # layer index (or "final") -> [n, hidden]


class TargetModel:
    """The target LM as the engine sees it: prefill and tree-verification forwards on a :class:`KVCache`."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: ModelInfo) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.config = model.config
        self.backbone = model.get_decoder()
        self.num_layers = int(self.config.num_hidden_layers)
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 0) or 1 << 30)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        # hybrid models (Gemma 3: 5 sliding layers per full one) take a mask per layer type; configs without
        # layer types but with a window (Mistral) slide on every layer
        layer_types = getattr(self.config, "layer_types", None)
        window = int(getattr(self.config, "sliding_window", 0) or 0)
        self.hybrid = layer_types is not None
        self.sliding_window = window if not self.hybrid or "sliding_attention" in layer_types else 0
        self.experts = expert_counter(model)  # None for a dense model
        self.guidance = 1.0
        self.unconditional: Callable[[list[int]], list[int]] | None = None
        self.static = None  # harness/model/cuda_graphs.py: fixed-shape forwards (CUDA graphs), when the engine enables them

    def set_guidance(self, scale: float, unconditional: Callable[[list[int]], list[int]] | None) -> None:
        """Classifier-free guidance: logits ``u + scale * (c - u)`` of the conditional row c and the unconditional
        row u (LlamaGen's form; 1 is plain conditional decoding). ``unconditional`` maps a prompt to the prompt
        without its condition, of the same length so both rows share positions and tree masks."""
        if scale != 1.0 and unconditional is None:
            raise ValueError("classifier-free guidance needs the model's unconditional prompt")
        self.guidance = float(scale)
        self.unconditional = unconditional if scale != 1.0 else None

    @property
    def guided(self) -> bool:
        return self.unconditional is not None

    @property
    def lm_head(self) -> torch.nn.Module:
        # looked up on every call: kernels and reduced heads swap the module after construction
        return self.model.get_output_embeddings()

    @property
    def stop_ids(self) -> set[int]:
        return stop_token_ids(self.model.generation_config, self.tokenizer)

    def new_cache(self, capacity: int) -> KVCache:
        if self.static is not None:
            return self.static.new_cache(capacity)
        return KVCache(self.num_layers, capacity)

    def _mask(
        self, cache_len: int, tree: torch.Tensor | None, positions: torch.Tensor, last: int
    ) -> torch.Tensor | dict[str, torch.Tensor | None] | None:
        """The attention mask of a forward of ``positions`` on ``cache_len`` slots (None: causal, nothing cut).

        ``tree`` None means causal among the new tokens; ``last`` is the largest position. Hybrid models get a dict by layer type; a window mask
        is built only when the window cuts a key.
        """
        n = positions.numel()
        if n == 1:
            tree = None
        elif tree is None and (cache_len > 0 or self.config._attn_implementation == "eager"):
            # the engine kernel and SDPA read no mask as causal; eager attention reads it as no mask at all
            tree = torch.ones(n, n, dtype=torch.bool, device=positions.device).tril_()
        full = None if tree is None else additive_mask(cache_len, tree, self.dtype)
        if not self.sliding_window:
            return full
        sliding = full
        if last >= self.sliding_window:
            if tree is None:
                tree = torch.ones(n, n, dtype=torch.bool, device=positions.device).tril_()
            visible = visibility(cache_len, tree)
            sliding = to_additive(window_visibility(visible, positions, self.sliding_window), self.dtype)
        return {"full_attention": full, "sliding_attention": sliding} if self.hybrid else sliding

    @torch.inference_mode()
    def forward(
        self,
        cache: KVCache,
        tokens: Sequence[int] | torch.Tensor,
        positions: torch.Tensor | None = None,
        tree: torch.Tensor | None = None,
        logits_rows: Sequence[int] | slice | None = None,
        hidden_layers: Sequence[int | str] = (),
        exit_layer: int | None = None,
    ) -> ForwardOutput:
        """Run ``tokens`` on top of ``cache`` (which grows by ``len(tokens)`` slots).

        ``tree`` is a boolean [n, n] mask among the new tokens (row attends to column); ``None`` means causal.
        ``positions`` default to consecutive positions after the cache. ``logits_rows`` selects the rows
        to project to the vocabulary (all by default): the head is a large share of a small model's step.
        ``exit_layer=E`` runs only the first E layers, then the final norm and head (self-speculation's early
        exit): only those layers' caches grow, and ``hidden["final"]`` is the normed state after layer E.
        """
        if exit_layer is not None:
            if not 1 <= exit_layer <= self.num_layers:
                raise ValueError(f"exit_layer must be in 1..{self.num_layers}, got {exit_layer}")
            config = self.backbone.config
            full = config.num_hidden_layers
            # decoder models run self.layers[: config.num_hidden_layers]; restored below even on an error, and
            # hidden_layers past exit_layer then fail with an IndexError rather than return a wrong state
            config.num_hidden_layers = exit_layer
            try:
                return self.forward(cache, tokens, positions, tree, logits_rows, hidden_layers)
            finally:
                config.num_hidden_layers = full
        width = self.static.width(cache, len(tokens), exit_layer) if self.static is not None else None
        if width is not None:
            start = cache.length
            pos = torch.arange(start, start + len(tokens)) if positions is None else positions
            logits, hidden = self.static.forward(cache, torch.as_tensor(tokens, dtype=torch.long), pos, tree, width,
                                                 hidden_layers)
            return ForwardOutput(logits if logits_rows is None else logits[logits_rows], hidden)
        # the engine builds ids, positions and tree masks on the host; one copy each puts them on the model's device
        device = self.device
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1).to(device, non_blocking=True)
        n = ids.shape[1]
        start = cache.length
        if self.guided:
            # a prefill is the prompt: its unconditional row drops the condition; later tokens are the same in both
            uncond = ids[0] if start else torch.as_tensor(self.unconditional(ids[0].tolist()), dtype=torch.long, device=device)
            if uncond.numel() != n:
                raise ValueError(f"the unconditional prompt has {uncond.numel()} tokens, the prompt {n}; they must match")
            ids = torch.stack([ids[0], uncond])
        last = start + n - 1 if positions is None else int(positions.max())  # read before the copy: no device sync
        positions = torch.arange(start, start + n, device=device) if positions is None else positions.to(device, non_blocking=True)
        if tree is not None:
            tree = tree.to(device, non_blocking=True)
        mask = self._mask(start, tree, positions, last)
        want_hidden = needs_layers(hidden_layers)
        out = self.backbone(
            input_ids=ids,
            position_ids=positions.reshape(1, -1).expand(ids.shape[0], -1),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        states = out.last_hidden_state if logits_rows is None else out.last_hidden_state[:, logits_rows]
        r = states.shape[1]
        # no rows asked for: skip the head (packed kernels pad an empty input and would run it anyway)
        if not r:
            logits = states.new_zeros(0, self.vocab_size, dtype=torch.float32)
        elif self.guided:
            cond, uncond = self.lm_head(states.reshape(2 * r, -1)).float().split(r)
            logits = uncond + self.guidance * (cond - uncond)
        else:
            logits = self.lm_head(states[0]).float()
        return ForwardOutput(logits, layer_states(out, hidden_layers))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """``messages`` through the chat template; a base model without one gets the contents joined as raw text
        (the same rendering as tasks' ``task.chat=false``)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return list(self.tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"])
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
