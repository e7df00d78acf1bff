"""Synthetic acceptance: a method's system speed on a machine where its real acceptance cannot be measured.

A target with random weights (a GPU with no network, or a model too large to load here) runs every forward a
real one would, but its drafts are never accepted for real. In this mode the engine still drafts with the
method's own drafter, verifies the whole tree in one target forward and compacts the KV cache as always, but
*which* draft nodes count as accepted comes from

* ``synthetic.mode=trace``: the per-step draft sizes and accepted lengths of a real run of the same method on
  the same prompts (its ``results.parquet``), replayed step by step; every side generates exactly the tokens
  the real baseline generated for that prompt and turn;
* ``synthetic.mode=rates``: given conditional acceptance rates per draft depth, drawn with a seeded generator.

A chain drafter's proposal is cut or padded to the step's draft size (retrieval finds nothing to copy in a random
model's text, yet its real drafts had that size); a tree drafter keeps the tree it built, and the accepted
path descends through the first child deep enough for it (a path as long as the real one may be missing from
a tree the random target's drafter shaped: then the deepest one is taken, and the row's tau falls short of
``real_tau``). Stop tokens are ignored so that every side generates the same number of
tokens. Rows say ``synthetic`` (trace | rates) and carry the real run's tau beside theirs; they are a projection
of speed, never pooled with real results (the report labels the runs apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.bench.timing import derive_seed
from harness.core.errors import SpeclabError
from harness.engine import tree as T
from harness.engine.drafter import DecodeState, Drafter, NoDraft
from harness.engine.method import EngineGenerator, Generator
from harness.engine.proposal import Proposal
from harness.engine.sampling import sample, warp
from harness.engine.verifiers import Verifier, VerifyResult
from harness.model.target import ForwardOutput

MODES = ("off", "trace", "rates")
ACCEPT = "synthetic_accept"  # Proposal.meta key: how many draft nodes this step accepts


@dataclass
class Step:
    drafted: int  # the draft size of the step (chains are cut or padded to it)
    accepted: int  # draft tokens accepted


@dataclass
class TraceEntry:
    steps: list[Step]
    new_tokens: int  # what the real generation emitted
    real_steps: int  # its target forwards, the prefill included


class Trace:
    """Per (method, prompt, turn): the steps of a real run's generation, and the real baseline's length."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        file = path / "results.parquet" if path.is_dir() else path
        if not file.is_file():
            raise SpeclabError(f"synthetic.trace={path}: no results.parquet there; give the folder or parquet of a real run "
                               "of the same method and task (python run.py ... prints it)")
        df = pd.read_parquet(file)
        if "synthetic" in df and df.synthetic.notna().any():
            raise SpeclabError(f"synthetic.trace={path} is itself a synthetic run; give a real run's results")
        self.entries: dict[tuple[str, str, int], TraceEntry] = {}
        self.lengths: dict[tuple[str, int], int] = {}  # (prompt, turn) -> tokens the real baseline generated
        for r in df.itertuples(index=False):
            if r.role == "baseline":
                self.lengths[(str(r.prompt_id), int(r.turn))] = int(r.new_tokens)
                continue
            if int(getattr(r, "repeat", 0)) != 0 or r.drafted_per_step is None:
                continue  # peers record no steps; repeats replay the first repeat
            steps = [Step(int(d), int(a) - 1) for d, a in zip(r.drafted_per_step, r.accept_lengths)]
            self.entries[(str(r.method), str(r.prompt_id), int(r.turn))] = TraceEntry(steps, int(r.new_tokens), int(r.steps))
        self.path = str(file)
        self.methods = sorted({m for m, _, _ in self.entries})

    def entry(self, method: str, prompt_id: str, turn: int) -> TraceEntry | None:
        return self.entries.get((method, str(prompt_id), int(turn)))

    def length(self, prompt_id: str, turn: int, methods: list[str]) -> int | None:
        """Tokens every side generates for this prompt and turn: the real baseline's, else the longest real method's."""
        if (prompt_id, turn) in self.lengths:
            return self.lengths[(prompt_id, turn)]
        found = [e.new_tokens for m in methods if (e := self.entry(m, prompt_id, turn)) is not None]
        return max(found) if found else None


class SyntheticDrafter(Drafter):
    """The method's drafter, with each proposal shaped to the step's draft size and told how much it accepts."""

    def __init__(self, inner: Drafter, rates: list[float] | None = None, seed: int = 0) -> None:
        self.inner = inner
        self.name = inner.name
        self.hidden_layers = inner.hidden_layers
        self.rates = list(rates or [])
        self.schedule: list[Step] | None = None  # trace mode: set by the runner before each generation
        self._step = 0
        self._rng = torch.Generator().manual_seed(seed)

    def start(self, schedule: list[Step] | None, seed: int) -> None:
        self.schedule = schedule
        self._rng = torch.Generator().manual_seed(seed)

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self._step = 0
        self.inner.begin(state, prefill)

    def _next(self, proposal: Proposal) -> Step:
        if self.schedule is not None:  # trace: past the real generation's steps, nothing more is accepted
            step = self.schedule[self._step] if self._step < len(self.schedule) else Step(0, 0)
            self._step += 1
            return step
        width = len(self.rates) if not proposal.tokens or T.is_chain(proposal.parents) else len(proposal.tokens)
        accepted = 0
        for rate in self.rates:
            if float(torch.rand((), generator=self._rng)) >= rate:
                break
            accepted += 1
        return Step(width, accepted)

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        proposal = self.inner.propose(state, max_depth)
        step = self._next(proposal)
        if not proposal.tokens or T.is_chain(proposal.parents):
            width = min(step.drafted, max_depth)
            tokens = (proposal.tokens + [state.ids[-1]] * width)[:width]  # filler: any token costs the same to verify
            proposal = Proposal.chain(tokens, None, **proposal.meta)  # the schedule decides, so q is not needed
        proposal.meta[ACCEPT] = min(step.accepted, len(proposal.tokens))
        return proposal

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        self.inner.observe(state, proposal, result, out)


class SyntheticVerifier(Verifier):
    """Accepts the path the schedule says (first children, as deep as the tree allows); the token after it is the
    target's own (argmax, or a draw from its warped distribution)."""

    lossless = False  # the output is not the target's: rows are a speed projection, never a quality result

    def __init__(self, inner: Verifier) -> None:
        super().__init__(inner.sampling)
        self.inner = inner
        self.name = f"synthetic({inner.name})"

    def verify(self, logits: torch.Tensor, proposal: Proposal, generator: torch.Generator | None) -> VerifyResult:
        if ACCEPT not in proposal.meta:  # the prefill, and sides that draft nothing
            return self.inner.verify(logits, proposal, generator)
        kids = T.children(proposal.parents)
        height = [0] * (len(proposal.tokens) + 1)  # levels below each row (root, nodes) in its subtree
        for i in reversed(range(len(proposal.tokens))):
            height[proposal.parents[i] + 1] = max(height[proposal.parents[i] + 1], height[i + 1] + 1)
        path: list[int] = []
        row = 0
        want = proposal.meta[ACCEPT]
        while len(path) < want and kids[row]:
            # the first child deep enough for the rest of the path, else the deepest (a real path of that length
            # may not exist in this tree: the random target's drafter built another one)
            need = want - len(path) - 1
            child = next((c for c in kids[row] if height[c + 1] >= need), max(kids[row], key=lambda c: height[c + 1]))
            path.append(child)
            row = child + 1
        reached = min(len(path) + 1, max(T.depths(proposal.parents), default=0))
        if self.sampling.greedy:
            token = int(logits[row].argmax())
        else:
            token = sample(warp(logits[row], self.sampling), generator)
        return VerifyResult(path, token, reached)


def validate(cfg: Any) -> None:
    if cfg.mode not in MODES:
        raise SpeclabError(f"unknown synthetic.mode {cfg.mode!r}; choose off, trace or rates")
    if cfg.mode == "trace" and not cfg.trace:
        raise SpeclabError("synthetic.mode=trace needs synthetic.trace=<folder or results.parquet of a real run>")
    if cfg.mode == "rates":
        rates = list(cfg.rates)
        if not rates or not all(0.0 <= r <= 1.0 for r in rates):
            raise SpeclabError(f"synthetic.mode=rates needs synthetic.rates=[...] of per-depth acceptance rates in [0, 1], "
                               f"got {rates}")


class Synthetic:
    """The runner's side of the mode: wraps the generators and prepares each generation."""

    def __init__(self, cfg: Any) -> None:
        validate(cfg)
        self.mode = cfg.mode
        self.seed = int(cfg.seed)
        self.rates = [float(r) for r in cfg.rates]
        self.trace = Trace(cfg.trace) if cfg.mode == "trace" else None
        self.drafters: dict[str, SyntheticDrafter] = {}

    def wrap(self, gen: Generator) -> Generator:
        """The generator as this mode runs it: an engine method drafts through a :class:`SyntheticDrafter` and is
        verified by the schedule, and every side generates its whole budget (stop tokens ignored). Peers that draft
        inside transformers' ``generate()`` cannot be scheduled and refuse."""
        if not isinstance(gen, EngineGenerator):
            return gen.without_stop_tokens()
        drafter = gen.drafter
        if not isinstance(drafter, NoDraft):
            if self.trace is not None and gen.name not in self.trace.methods:
                raise SpeclabError(f"synthetic.trace {self.trace.path} has no rows of method {gen.name!r} (it has "
                                   f"{', '.join(self.trace.methods) or 'none'}); trace a real run of the same method")
            drafter = self.drafters[gen.name] = SyntheticDrafter(gen.drafter, self.rates, self.seed)
        return EngineGenerator(gen.name, gen.target, drafter, SyntheticVerifier(gen.verifier), stop_ids=set(),
                               acceptance_rule=gen.acceptance_rule)

    def prepare(self, prompt_id: str, turn: int, repeat: int, max_new_tokens: int) -> int:
        """Set each drafter's schedule for this generation; the tokens every side generates."""
        seed = derive_seed(self.seed, prompt_id, turn, repeat)
        length = max_new_tokens
        if self.trace is not None:
            found = self.trace.length(str(prompt_id), turn, list(self.drafters))
            if found is None:
                raise SpeclabError(f"synthetic.trace {self.trace.path} has no generation of prompt {prompt_id!r} turn {turn}; "
                                   "trace a real run of the same task and task.limit")
            length = min(found, max_new_tokens)
        for name, drafter in self.drafters.items():
            entry = self.trace.entry(name, prompt_id, turn) if self.trace is not None else None
            drafter.start(entry.steps if entry is not None else None if self.trace is None else [], seed)
        return max(1, length)

    def row_fields(self, method: str | None, prompt_id: str, turn: int) -> dict[str, Any]:
        """Columns of a synthetic row: the mode, and (trace mode) the real generation's tokens and steps, whose
        ratio is the real tau beside the row's own."""
        fields: dict[str, Any] = {"synthetic": self.mode, "trace_new_tokens": None, "trace_steps": None}
        if self.trace is not None and method is not None and (e := self.trace.entry(method, prompt_id, turn)) is not None:
            fields.update(trace_new_tokens=e.new_tokens, trace_steps=e.real_steps)
        return fields
