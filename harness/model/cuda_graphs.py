"""Static-shape target forwards, replayed as CUDA graphs on a GPU.

On a GPU an eager forward of a 7B model costs about 18 ms for 1 token and barely more for 64: kernel launches,
not the GPU, set its price (issue 15's measurements). A CUDA graph replays a recorded forward with one launch,
but it needs the same shapes and the same memory addresses on every replay. So, for a forward of n <= W tokens
on a cache that already holds the prompt:

* the KV cache is one buffer per layer, allocated once (:meth:`KVCache.allocate`); the forward writes its keys
  to given slots (``index_copy_``) and attends over the whole buffer, with a mask that hides every slot past the
  committed length and, among the new tokens, all but each token's tree ancestors;
* it runs in the graph of the smallest width W >= n of ``engine.graph_widths``; the W - n padding rows write
  past the real ones (slots the next forward overwrites), see only themselves, and their outputs are dropped;
* token ids, positions, slots, the tree mask and the committed length travel as one int64 vector, one copy
  from pinned host memory into the graph's own input before each replay; the outputs (logits of all W rows,
  the hidden states the drafter reads) are copied out before the next.

The prefill (an empty cache, any length), forwards wider than the widest graph, early-exit forwards
(self-speculation), guided two-row models, MoE targets (their expert counters are hooks, which a replay does
not run) and sliding-window models run eagerly on the same buffers. Without a GPU the same static path runs
uncaptured (``engine.cuda_graphs=on`` on a CPU): that is how the test suite checks that it gives exactly the
eager path's tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.model.kv_cache import KVCache
from harness.model.target import layer_states, needs_layers

DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
MODES = ("auto", "on", "off")
CAPACITY_STEP = 1024  # cache buffers grow in these steps (each growth re-records the graphs)


def unsupported(target: Any) -> str | None:
    """Why ``target`` cannot run the static path, or None when it can."""
    if target.experts is not None:
        return "an MoE target's expert counters are forward hooks, which a graph replay skips"
    if target.guided:
        return "classifier-free guidance runs two rows"
    if target.sliding_window:
        return "sliding-window layers need a mask per layer type"
    rope = getattr(target.config, "rope_parameters", None) or getattr(target.config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type") == "dynamic":
        return "dynamic RoPE re-reads the sequence length on the host every forward"
    if getattr(target.config, "kv_lora_rank", None):
        return "multi-head latent attention (DeepSeek) keeps keys and values of other sizes"
    if target.model.config._attn_implementation != "speclab":
        return f"model.attention={target.model.config._attn_implementation} (the static path uses the engine's kernel)"
    return None


@dataclass
class _Graph:
    """One width's inputs and outputs, and its recorded graph (None on a CPU).

    The inputs travel as one int64 vector, ids | positions | slots | committed length | tree (W x W, 0/1), filled
    on the host (pinned memory on a GPU) and copied to ``dev`` in one transfer before each replay."""

    width: int
    host: torch.Tensor
    dev: torch.Tensor
    logits: torch.Tensor | None = None  # [W, vocab]
    hidden: dict = field(default_factory=dict)
    graph: Any = None
    copied: Any = None  # CUDA event: the last host-to-device copy of the inputs

    def views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        w, d = self.width, self.dev
        return d[:w].view(1, w), d[w:2 * w].view(1, w), d[2 * w:3 * w], d[3 * w], d[3 * w + 1:].view(w, w)


class StaticForward:
    """The static path of one :class:`TargetModel`: its cache buffers and one graph per width.

    Its buffers are allocated, written and recorded in inference mode, whoever calls first: buffers made under
    ``torch.inference_mode()`` (a c(k) measurement, a decoding step) can only be written there, and a graph recorded
    with autograd on would carry ``requires_grad`` outputs into every replay.
    """

    def __init__(self, target: Any, widths: Sequence[int] = DEFAULT_WIDTHS, capture: bool = True) -> None:
        if not widths or min(widths) < 1:
            raise ValueError(f"engine.graph_widths must be positive widths, got {list(widths)}")
        self.target = target
        self.widths = sorted({int(w) for w in widths})
        self.capture = capture
        self.cache: KVCache | None = None
        self.graphs: dict[tuple[int, tuple], _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.replays = 0  # forwards served by the static path (tests read it)

    # -- the cache -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def new_cache(self, capacity: int) -> KVCache:
        """The one static cache, emptied; re-allocated (and the graphs re-recorded) when ``capacity`` outgrows it."""
        need = int(capacity) + self.widths[-1]  # padding rows write past the real ones
        if self.cache is None or self.cache.layers[0].capacity < need:
            config = self.target.config
            heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
            head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
            cache = KVCache(self.target.num_layers, -(-need // CAPACITY_STEP) * CAPACITY_STEP)
            like = self.target.lm_head.weight
            cache.allocate(torch.empty((), dtype=self.target.dtype, device=like.device), heads, head_dim)
            self.cache, self.graphs = cache, {}
        self.cache.set_length(0)
        return self.cache

    def _check_buffers(self) -> None:
        """An eager forward past the capacity (a tree wider than planned) re-allocates the buffers: the graphs
        recorded on the old ones are dropped and recorded again."""
        ptr = self.cache.layers[0]._k.data_ptr()
        if getattr(self, "_ptr", None) != ptr:
            self.graphs, self._ptr = {}, ptr

    @torch.inference_mode()
    def record(self, capacity: int, hidden_layers: Sequence[int | str]) -> None:
        """Record every width's graph for a drafter that reads ``hidden_layers``, on a cache of ``capacity`` slots,
        before any timing: a recording synchronises the device and empties its allocator's cache."""
        cache = self.new_cache(capacity)
        cache.set_length(1)  # a graph serves forwards on a non-empty cache; slot 0's zeros stand in for a prompt
        for w in self.widths:
            self.forward(cache, torch.zeros(w, dtype=torch.long), torch.arange(1, 1 + w), None, w, hidden_layers)
            cache.set_length(1)
        cache.set_length(0)

    def width(self, cache: KVCache, n: int, exit_layer: int | None) -> int | None:
        """The graph width that serves a forward of ``n`` tokens on ``cache``, or None (eager)."""
        if cache is not self.cache or cache.length == 0 or exit_layer is not None or n > self.widths[-1]:
            return None
        if self.target.backbone.config.num_hidden_layers != self.target.num_layers:  # inside an early exit's forward
            return None
        if cache.length + self.widths[-1] > cache.layers[0].capacity:
            return None
        return next(w for w in self.widths if w >= n)

    # -- one forward -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, cache: KVCache, ids: torch.Tensor, positions: torch.Tensor, tree: torch.Tensor | None,
                width: int, hidden_layers: Sequence[int | str]) -> tuple[torch.Tensor, dict]:
        """Logits [n, vocab] (float32) and the requested hidden states [n, H] of the ``n`` new tokens; the cache
        grows by n slots, as an eager forward's would."""
        n = ids.shape[-1]
        self._check_buffers()
        key = (width, tuple(hidden_layers))
        g = self.graphs.get(key)
        fresh = g is None
        if fresh:
            g = self.graphs[key] = self._inputs(width)
        start = cache.length
        with torch.cuda.device(self.target.device) if self.capture else contextlib.nullcontext():
            self._load(g, ids, positions, tree, start, n)
            if fresh:
                self._record(g, hidden_layers)
            if g.graph is not None:
                g.graph.replay()
            elif not fresh:  # uncaptured (CPU): the recording call above already computed this forward
                self._body(g, hidden_layers)
        cache.set_length(start + n)
        self.replays += 1
        return g.logits[:n].clone(), {k: v[:n].clone() for k, v in g.hidden.items()}

    def _inputs(self, width: int) -> _Graph:
        size = 3 * width + 1 + width * width
        host = torch.zeros(size, dtype=torch.long, pin_memory=self.capture)
        return _Graph(width, host, torch.zeros(size, dtype=torch.long, device=self.target.device))

    def _load(self, g: _Graph, ids: torch.Tensor, positions: torch.Tensor, tree: torch.Tensor | None,
              start: int, n: int) -> None:
        """Write one forward's inputs into the graph's input vector; padding rows sit at the next slots, at
        position ``start``, and see only themselves."""
        w, h = g.width, g.host
        if g.copied is not None:  # the last copy out of this pinned buffer must be done before it is rewritten
            g.copied.synchronize()
        h.zero_()
        h[:n] = ids.reshape(-1)
        h[w:2 * w] = start
        h[w:w + n] = positions.reshape(-1)
        torch.arange(start, start + w, out=h[2 * w:3 * w])
        h[3 * w] = start
        mask = h[3 * w + 1:].view(w, w)
        mask.fill_diagonal_(1)
        mask[:n, :n] = torch.ones(n, n, dtype=torch.long).tril_() if tree is None else tree.to(torch.long)
        g.dev.copy_(h, non_blocking=True)
        if self.capture:
            g.copied = torch.cuda.Event()
            g.copied.record()

    def _body(self, g: _Graph, hidden_layers: Sequence[int | str]) -> None:
        """The recorded work: the mask from (length, slots, tree), the backbone on the static cache, the head."""
        target, cache = self.target, self.cache
        ids, positions, slots, length, tree = g.views()
        w, device = g.width, g.dev.device
        capacity = cache.layers[0].capacity
        visible = (torch.arange(capacity, device=device)[None, :] < length).expand(w, capacity).clone()
        visible.index_copy_(1, slots, tree != 0)
        mask = torch.zeros(w, capacity, dtype=target.dtype, device=device)
        mask.masked_fill_(~visible, torch.finfo(target.dtype).min)
        cache.set_slots(slots)
        try:
            out = target.backbone(input_ids=ids, position_ids=positions, attention_mask=mask[None, None], cache=cache,
                                  use_cache=True, output_hidden_states=needs_layers(hidden_layers))
        finally:
            cache.set_slots(None)
        g.logits = target.lm_head(out.last_hidden_state[0]).float()
        g.hidden = layer_states(out, hidden_layers)

    def _record(self, g: _Graph, hidden_layers: Sequence[int | str]) -> None:
        """Run the body once (uncaptured), or warm it up and record it as a CUDA graph. Every run writes the same
        keys to the same slots, which this very forward writes anyway."""
        length = self.cache.length
        if not self.capture:
            self._body(g, hidden_layers)
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # lazy initialisations (cuBLAS handles, autotuning) must not happen while recording
                self._body(g, hidden_layers)
        torch.cuda.current_stream().wait_stream(stream)
        g.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g.graph, pool=self.pool):
            self._body(g, hidden_layers)
        self.cache.set_length(length)


def enable(target: Any, mode: str, widths: Sequence[int] = DEFAULT_WIDTHS, log: Any = None) -> bool:
    """Give ``target`` the static path per ``engine.cuda_graphs`` (auto: on CUDA when the model allows it; on:
    also uncaptured on a CPU); returns whether it is on."""
    if mode not in MODES:
        from harness.core.errors import SpeclabError

        raise SpeclabError(f"unknown engine.cuda_graphs {mode!r}; choose auto, on or off")
    cuda = target.device.type == "cuda"
    if mode == "off" or (mode == "auto" and not cuda):
        target.static = None
        return False
    reason = unsupported(target)
    if reason is not None:
        if log is not None:
            log.info("static forwards off for %s: %s; it runs eagerly", target.info.name, reason)
        target.static = None
        return False
    target.static = StaticForward(target, widths, capture=cuda)
    return True
