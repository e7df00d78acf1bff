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
* token ids, positions, slots, the tree mask and the committed length are copied into the graph's own input
  tensors before each replay; the outputs (logits of all W rows, the hidden states the drafter reads) are
  copied out before the next.

The prefill (an empty cache, any length), forwards wider than the widest graph, early-exit forwards
(self-speculation), guided two-row models, MoE targets (their expert counters are hooks, which a replay does
not run) and sliding-window models run eagerly on the same buffers. Without a GPU the same static path runs
uncaptured (``engine.cuda_graphs=on`` on a CPU): that is how the test suite checks that it gives exactly the
eager path's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .cache import KVCache

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
    if target.model.config._attn_implementation != "speclab":
        return f"model.attention={target.model.config._attn_implementation} (the static path uses the engine's kernel)"
    return None


@dataclass
class _Graph:
    """One width's static inputs and outputs, and its recorded graph (None on a CPU)."""

    ids: torch.Tensor  # [1, W]
    positions: torch.Tensor  # [1, W]
    slots: torch.Tensor  # [W]
    tree: torch.Tensor  # [W, W] bool
    length: torch.Tensor  # [] committed slots
    logits: torch.Tensor | None = None  # [W, vocab]
    hidden: dict = field(default_factory=dict)
    graph: Any = None


class StaticForward:
    """The static path of one :class:`TargetModel`: its cache buffers and one graph per width."""

    def __init__(self, target: Any, widths: Sequence[int] = DEFAULT_WIDTHS, capture: bool = True) -> None:
        if not widths or min(widths) < 1:
            raise ValueError(f"engine.graph_widths must be positive widths, got {list(widths)}")
        self.target = target
        self.widths = sorted(set(int(w) for w in widths))
        self.capture = capture
        self.cache: KVCache | None = None
        self.graphs: dict[tuple[int, tuple], _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.replays = 0  # forwards served by the static path (tests read it)

    # -- the cache -------------------------------------------------------------------------------------------
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

    def width(self, cache: KVCache, n: int, exit_layer: int | None) -> int | None:
        """The graph width that serves a forward of ``n`` tokens on ``cache``, or None (eager)."""
        if cache is not self.cache or cache.length == 0 or exit_layer is not None or n > self.widths[-1]:
            return None
        if cache.length + self.widths[-1] > cache.layers[0].capacity:
            return None
        return next(w for w in self.widths if w >= n)

    # -- one forward -----------------------------------------------------------------------------------------
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
        device = self.target.device
        zeros = torch.zeros(width, dtype=torch.long, device=device)
        return _Graph(zeros[None].clone(), zeros[None].clone(), zeros.clone(),
                      torch.eye(width, dtype=torch.bool, device=device), torch.zeros((), dtype=torch.long, device=device))

    def _load(self, g: _Graph, ids: torch.Tensor, positions: torch.Tensor, tree: torch.Tensor | None,
              start: int, n: int) -> None:
        """Copy one forward's inputs into the graph's tensors; padding rows see only themselves."""
        w = g.slots.numel()
        host_tree = torch.eye(w, dtype=torch.bool)
        host_tree[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril_() if tree is None else tree.cpu()
        host_pos = torch.full((w,), start, dtype=torch.long)
        host_pos[:n] = positions.reshape(-1).cpu()
        host_ids = torch.zeros(w, dtype=torch.long)
        host_ids[:n] = ids.reshape(-1).cpu()
        g.ids.copy_(host_ids[None], non_blocking=True)
        g.positions.copy_(host_pos[None], non_blocking=True)
        g.slots.copy_(torch.arange(start, start + w), non_blocking=True)
        g.tree.copy_(host_tree, non_blocking=True)
        g.length.fill_(start)

    def _body(self, g: _Graph, hidden_layers: Sequence[int | str]) -> None:
        """The recorded work: the mask from (length, slots, tree), the backbone on the static cache, the head."""
        target, cache = self.target, self.cache
        w = g.slots.numel()
        capacity = cache.layers[0].capacity
        visible = (torch.arange(capacity, device=g.slots.device)[None, :] < g.length).expand(w, capacity).clone()
        visible.index_copy_(1, g.slots, g.tree)
        mask = torch.zeros(w, capacity, dtype=target.dtype, device=g.slots.device)
        mask.masked_fill_(~visible, torch.finfo(target.dtype).min)
        cache.set_slots(g.slots)
        try:
            out = target.backbone(input_ids=g.ids, position_ids=g.positions, attention_mask=mask[None, None], cache=cache,
                                  use_cache=True, output_hidden_states=any(layer != "final" for layer in hidden_layers))
        finally:
            cache.set_slots(None)
        final = out.last_hidden_state[0]
        g.logits = target.lm_head(final).float()
        g.hidden = {layer: final if layer == "final" else out.hidden_states[layer][0] for layer in hidden_layers}

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
        from .errors import SpeclabError

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
