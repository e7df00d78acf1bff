"""Verification: which draft nodes the target accepts, and the token it emits after them.

Every rule walks the draft tree from the root, choosing at most one child per level, so the accepted
nodes always form one root-to-node path; the emitted tokens are that path plus one target token (the
correction or bonus).

* ``greedy``: a child is accepted iff it equals the target's argmax at its parent (longest matching path;
  the first such child wins).
* ``rejection``: lossless speculative sampling generalised to trees (multi-step speculative sampling,
  SpecInfer). Siblings are tried in order against the current target residual: a child drawn from q is
  accepted with probability min(1, p(x)/q(x)), else p <- norm((p - q)+); a deterministic child (q is
  None: retrieval drafts, top-k trees) uses q = one-hot, i.e. accept with p(x), else zero p(x) and
  renormalise. For a chain with q this is Leviathan et al.'s rule. If no child is accepted the emitted
  token is drawn from the residual.

* ``typical`` (Medusa's typical acceptance; lossy, ``lossless = False``): at temperature T a node x under a
  parent whose target distribution is p = softmax(logits / T) passes iff p(x) > min(threshold, alpha x
  exp(-H(p))); the longest root path of passing nodes wins (ties: the largest sum of log p), and the token
  after it is the target's argmax (``bonus=argmax``, the reference's ``fast`` path, which makes the output a
  function of the prompt) or a draw from p (``bonus=sample``).
* ``lantern``, ``gsd``, ``mars`` (lossy): relaxed rules, below. ``mars`` at temperature 0 relaxes greedy matching
  (the target's close second choice counts as its first); sampled, it relaxes the rejection rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.engine import tree as T
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling, sample, warp


@dataclass
class VerifyResult:
    accepted: list[int]  # draft node indices along the accepted path, root side first
    token: int  # the target's own token after the path (correction or bonus)
    reached: int  # how many draft positions were evaluated (depth of the deepest level tried)
    # greedy rules: the target's two best logits at each committed token's step (path tokens, then the bonus), which
    # say how close a token was to a tie where another computation of the same model chose differently
    top2: list[tuple[float, float]] | None = None


class Verifier:
    name = "base"
    lossless = True

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling

    def verify(
        self, logits: torch.Tensor, proposal: Proposal, generator: torch.Generator | None
    ) -> VerifyResult:
        """``logits[0]`` is the target's prediction after the root, ``logits[i + 1]`` after node i."""
        raise NotImplementedError


class GreedyVerifier(Verifier):
    name = "greedy"

    def alternative(self, logits: torch.Tensor) -> int | None:
        """A token accepted where the argmax is not drafted (relaxed greedy rules); None for exact greedy."""
        return None

    def verify(self, logits, proposal, generator=None):
        pred = logits.argmax(-1).tolist()  # argmax, not topk: the first index wins a tie, as in transformers
        top2 = logits.topk(2, dim=-1).values.tolist()
        if not proposal.tokens:
            return VerifyResult([], pred[0], 0, [tuple(top2[0])])
        kids = T.children(proposal.parents)
        path: list[int] = []
        row = 0
        reached = 0
        while kids[row]:
            reached += 1
            nxt = next((c for c in kids[row] if proposal.tokens[c] == pred[row]), None)
            if nxt is None and (alt := self.alternative(logits[row])) is not None:
                nxt = next((c for c in kids[row] if proposal.tokens[c] == alt), None)
            if nxt is None:
                break
            path.append(nxt)
            row = nxt + 1
        rows = [0] + [c + 1 for c in path]  # the row that chose each committed token
        return VerifyResult(path, pred[row], reached, [tuple(top2[r]) for r in rows])


class RejectionVerifier(Verifier):
    name = "rejection"

    def accept_probability(self, p: torch.Tensor, q: torch.Tensor, x: int) -> float:
        """Probability of accepting x drawn from q where the target (current residual) is p: min(1, p(x)/q(x))."""
        qx = float(q[x])
        return min(1.0, float(p[x]) / qx) if qx > 0 else 0.0

    def verify(self, logits, proposal, generator=None):
        kids = T.children(proposal.parents) if proposal.tokens else [[]]
        q = proposal.q
        path: list[int] = []
        row = 0
        reached = 0
        while True:
            p = warp(logits[row], self.sampling)
            if not kids[row]:
                return VerifyResult(path, sample(p, generator), reached)
            reached += 1
            accepted = None
            for c in kids[row]:
                x = proposal.tokens[c]
                u = float(torch.rand((), generator=generator))
                if q is None:
                    if u < float(p[x]):
                        accepted = c
                        break
                    p = p.clone()
                    p[x] = 0.0
                else:
                    qc = q[c]
                    if u < self.accept_probability(p, qc, x):
                        accepted = c
                        break
                    p = torch.clamp(p - qc, min=0.0)
                total = float(p.sum())
                if total <= 0.0:  # p was (numerically) equal to what was rejected; nothing left to prefer
                    p = warp(logits[row], self.sampling)
                    total = float(p.sum())
                p = p / total
            if accepted is None:
                return VerifyResult(path, sample(p, generator), reached)
            path.append(accepted)
            row = accepted + 1


class TypicalVerifier(Verifier):
    name = "typical"
    lossless = False

    def __init__(self, sampling: Sampling, threshold: float = 0.09, alpha: float = 0.3, bonus: str = "argmax") -> None:
        super().__init__(sampling)
        if sampling.greedy:
            raise ValueError("the typical rule needs temperature > 0 (at temperature 0 it is the greedy rule); "
                             "set temperature, or use rule=auto")
        if not threshold > 0 or not alpha > 0:
            raise ValueError(f"typical acceptance needs posterior_threshold > 0 and posterior_alpha > 0, "
                             f"got {threshold} and {alpha}")
        if bonus not in ("argmax", "sample"):
            raise ValueError(f"unknown typical bonus {bonus!r}; choose argmax or sample")
        self.threshold, self.alpha, self.bonus = float(threshold), float(alpha), bonus

    def verify(self, logits, proposal, generator=None):
        p = torch.softmax(logits.float() / self.sampling.temperature, dim=-1)  # Medusa: temperature only
        entropy = -(p * torch.log(p + 1e-5)).sum(-1)
        limit = torch.clamp(self.alpha * torch.exp(-entropy), max=self.threshold)
        depth = T.depths(proposal.parents) if proposal.tokens else []
        best, best_key = -1, (0, 0.0)
        ok: dict[int, float] = {-1: 0.0}  # passing nodes whose ancestors all pass -> their summed log p
        reached = 0
        for i, (x, parent) in enumerate(zip(proposal.tokens, proposal.parents)):
            if parent not in ok:
                continue
            reached = max(reached, depth[i])  # evaluated: its parent's path passed
            px = float(p[parent + 1, x])
            if px > float(limit[parent + 1]):
                ok[i] = ok[parent] + math.log(px)
                key = (depth[i], ok[i])
                if best < 0 or key > best_key:
                    best, best_key = i, key
        path = []
        node = best
        while node >= 0:
            path.append(node)
            node = proposal.parents[node]
        path.reverse()
        row = best + 1
        token = int(p[row].argmax()) if self.bonus == "argmax" else sample(warp(logits[row], self.sampling), generator)
        return VerifyResult(path, token, reached)


class RelaxedVerifier(RejectionVerifier):
    """Rejection sampling with a relaxed acceptance probability (lossy): a draft x from q is accepted with a
    probability computed from a neighbourhood of x instead of x alone; a rejection resamples from the residual
    as the lossless rule does. Neighbours are token ids whose codes are close: ``neighbours(x)`` [ids], nearest
    first (``harness/relaxed.py`` gives them for the digits testbed's grey levels)."""

    lossless = False

    def __init__(self, sampling: Sampling, neighbours) -> None:
        super().__init__(sampling)
        if sampling.greedy:
            raise ValueError(f"the {self.name} rule relaxes sampled acceptance; set temperature > 0")
        self.neighbours = neighbours


class LanternVerifier(RelaxedVerifier):
    """LANTERN (Jang et al., ICLR 2025): p(x) is replaced by the mass of x's latent neighbourhood A(x), its
    k nearest codes added nearest first while the added mass stays within the total-variation budget delta."""

    name = "lantern"

    def __init__(self, sampling: Sampling, neighbours, k: int = 3, delta: float = 0.2) -> None:
        super().__init__(sampling, neighbours)
        if k < 1 or not delta >= 0:
            raise ValueError(f"lantern needs k >= 1 and delta >= 0, got k={k}, delta={delta}")
        self.k, self.delta = int(k), float(delta)

    def accept_probability(self, p, q, x):
        mass, added = float(p[x]), 0.0
        for y in self.neighbours(x)[: self.k]:
            if added + float(p[y]) > self.delta:
                break
            added += float(p[y])
        qx = float(q[x])
        return min(1.0, (mass + added) / qx) if qx > 0 else 0.0


class GroupedVerifier(RelaxedVerifier):
    """GSD-style grouped acceptance (So et al., ICCV 2025): x is judged as its group G(x), the codes within
    ``radius`` of it, accepted with min(1, p(G(x)) / q(G(x)))."""

    name = "gsd"

    def __init__(self, sampling: Sampling, neighbours, radius: int = 1) -> None:
        super().__init__(sampling, neighbours)
        self.radius = int(radius)

    def accept_probability(self, p, q, x):
        group = [x, *self.neighbours(x, self.radius)]
        qg = float(q[group].sum())
        return min(1.0, float(p[group].sum()) / qg) if qg > 0 else 0.0


def margin_ratio(ratio: float) -> float:
    """MARS's option, checked once for both of its forms."""
    if not 0 < ratio <= 1:
        raise ValueError(f"mars needs 0 < ratio <= 1, got {ratio}")
    return float(ratio)


class MarginVerifier(RejectionVerifier):
    """MARS (Song et al., 2026), margin-aware verification (lossy): where the target is torn between its two
    best tokens (top-2 probability over top-1 at least ``ratio``), a draft of its second choice counts as its
    first; any other draft goes through the lossless rule. Needs no neighbourhood, so it serves text too."""

    name = "mars"
    lossless = False

    def __init__(self, sampling: Sampling, ratio: float = 0.5) -> None:
        super().__init__(sampling)
        self.ratio = margin_ratio(ratio)

    def accept_probability(self, p, q, x):
        top = torch.topk(p, 2)
        if int(top.indices[1]) == x and float(top.values[1]) >= self.ratio * float(top.values[0]):
            x = int(top.indices[0])
            return min(1.0, float(p[x]) / float(q[int(top.indices[1])])) if float(q[int(top.indices[1])]) > 0 else 0.0
        return super().accept_probability(p, q, x)


class GreedyMarginVerifier(GreedyVerifier):
    """MARS at temperature 0 (lossy), its setting in the paper: a drafted token that is the target's second choice
    is accepted when the target's own softmax puts at least ``ratio`` times the first choice's probability on it
    (a logit margin under -ln ratio); the token after the path is still the target's argmax."""

    name = "mars"
    lossless = False

    def __init__(self, sampling: Sampling, ratio: float = 0.5) -> None:
        super().__init__(sampling)
        self.ratio = margin_ratio(ratio)

    def alternative(self, logits):
        top = torch.topk(logits.float(), 2)
        return int(top.indices[1]) if float(top.values[1] - top.values[0]) >= math.log(self.ratio) else None


RULE_OPTIONS = {"lantern": ("k", "delta"), "gsd": ("radius",), "mars": ("ratio",), "typical": ("threshold", "alpha")}


def _number(value: str) -> float | int | str:
    try:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        return value


def parse_rule(spec: str) -> tuple[str, dict[str, float | str]]:
    """A rule and its options in one string: ``"lantern k=3 delta=0.2"``, or positionally ``"lantern:3:0.2"``
    (the form that fits in a ``compare`` entry; order: lantern k, delta; gsd radius; mars ratio; typical
    threshold, alpha) -> ("lantern", {"k": 3, "delta": 0.2})."""
    name, *pairs = spec.split()
    name, *positional = name.split(":")
    options: dict[str, float | str] = {}
    if positional:
        keys = RULE_OPTIONS.get(name, ())
        if len(positional) > len(keys):
            raise ValueError(f"rule {name!r} takes {len(keys)} positional options ({', '.join(keys) or 'none'}), "
                             f"got {len(positional)}")
        options.update({k: _number(v) for k, v in zip(keys, positional)})
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"rule option {pair!r} is not key=value (e.g. rule='lantern k=3 delta=0.2' or lantern:3:0.2)")
        options[key] = _number(value)
    return name, options


def make_verifier(sampling: Sampling, rule: str = "auto", neighbours=None, **options) -> Verifier:
    """``auto`` is greedy matching at temperature 0 and lossless rejection sampling otherwise; ``options`` go
    to the rule (typical: ``threshold``, ``alpha``, ``bonus``), and may come in the rule string itself
    (``"lantern k=3 delta=0.2"``). The relaxed rules ``lantern`` and ``gsd`` need ``neighbours``."""
    rule, inline = parse_rule(rule)
    options = {**options, **inline}
    if rule in ("lantern", "gsd"):
        if neighbours is None:
            raise ValueError(f"the {rule} rule needs token neighbourhoods, which only image models with code "
                             "similarity have (model=digits-ar); for text use rule=mars")
        return (LanternVerifier if rule == "lantern" else GroupedVerifier)(sampling, neighbours, **options)
    if rule == "mars":
        return (GreedyMarginVerifier if sampling.greedy else MarginVerifier)(sampling, **options)
    if rule == "auto":
        rule = "greedy" if sampling.greedy else "rejection"
    if rule == "greedy":
        if not sampling.greedy:
            raise ValueError("the greedy rule needs temperature=0; use rule=rejection (or auto) when sampling")
        return GreedyVerifier(sampling)
    if rule == "rejection":
        return RejectionVerifier(sampling)
    if rule == "typical":
        return TypicalVerifier(sampling, **options)
    raise ValueError(f"unknown acceptance rule {rule!r}; choose auto, greedy, rejection, typical, lantern, gsd or mars")
