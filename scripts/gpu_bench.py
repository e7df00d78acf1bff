#!/usr/bin/env python
"""System speed of the engine on a GPU with random weights at real shapes (issue 15), no network needed.

For each shape (Llama-2-7B = Vicuna-7B, SmolLM2-135M) it builds a random-weight Llama from its config and
measures, in one process on one GPU:

* the verify cost c(k), k = 1..128, of the engine's static path (CUDA graphs) and of its eager path;
* tokens/s of ``ar`` (static path), ``ar`` eager, ``hf_generate`` (transformers' eager generate),
  ``hf_compiled`` (static cache + torch.compile), and of ``pld`` and ``eagle2`` with synthetic acceptance
  (harness/bench/synthetic.py: random weights accept nothing, so per-depth rates stand in; the defaults give the tau
  Spec-Bench publishes for them on Vicuna-7B, PLD 1.75 and EAGLE-2 4.34), every side generating the same
  number of tokens with stop tokens ignored, interleaved prompt by prompt;
* greedy equivalence of real (not synthetic) ``pld`` with ``ar`` through the static path, the first divergence's
  top-1/top-2 logit margin where they differ (near ties are expected in bf16, never in fp32).

    python scripts/gpu_bench.py --out results/gpu_check                   # on a GPU (scripts/gpu_check.sh)
    python scripts/gpu_bench.py --shapes tiny --device cpu --tokens 12    # a smoke run anywhere (tests)

Writes ``gpu_bench.json`` and ``gpu_bench.md`` (tables) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
}
# conditional acceptance per draft depth giving Spec-Bench's published tau on Vicuna-7B (A100, greedy):
# PLD 1.75 over 10-token chains, EAGLE-2 4.34 over its depth-5 tree
RATES = {"pld": [0.3, 0.55, 0.6, 0.65, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], "eagle2": [0.92, 0.87, 0.83, 0.8, 0.78]}
SYNTHETIC = tuple(RATES)  # the sides whose acceptance is synthetic: their tables say so
EAGLE2_SHAPE = dict(depth=5, top_k=10, total_tokens=60)  # Spec-Bench's EAGLE-2 setting


def random_target(shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-weight Llama of ``shape`` as an engine target (static path on), and a stock copy sharing its
    weights with transformers' default attention (for the peers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.model import cuda_graphs
    from harness.model.target import ModelInfo, TargetModel
    from harness.model.tiny import byte_tokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], rope_theta=10000.0)
    config._attn_implementation = "speclab"
    with torch.device(device):  # built in its dtype (rotary frequencies stay fp32), no fp32 copy of a 7B first
        model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    tok = byte_tokenizer()
    info = ModelInfo(f"random-{shape}", f"random:{shape}:seed={seed}", f"random-{shape}-{seed}", str(dtype).split(".")[-1],
                     sum(p.numel() for p in model.parameters()))
    target = TargetModel(model, tok, info)
    cuda_graphs.enable(target, "on", [*cuda_graphs.DEFAULT_WIDTHS, 128])  # c(k) is measured up to 128
    stock_config = LlamaConfig(**SHAPES[shape], rope_theta=10000.0)
    stock_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        stock_model = LlamaForCausalLM(stock_config)
    stock_model.load_state_dict(model.state_dict(), assign=True)  # the same weight tensors, no second copy
    stock_model.model.rotary_emb = model.model.rotary_emb  # its buffers are not in the state dict
    stock = TargetModel(stock_model.eval(), tok, info)
    return target, stock


def prompts_for(vocab: int, n: int, length: int, seed: int = 1) -> list[list[int]]:
    """Random prompts with repeated spans (so real prompt lookup finds something to copy)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        base = torch.randint(3, vocab, (length // 4,), generator=g).tolist()
        out.append((base * 4)[:length])
    return out


def attempt(result: dict, name: str, fn):
    """``fn()``, or None with the error kept in ``result["errors"]``: on a lent GPU one failing part must not cost
    the figures of the others."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        result.setdefault("errors", {})[name] = "".join(traceback.format_exception_only(e)).strip()[-2000:]
        return None


def bench_shape(shape: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    from harness.bench.equivalence import equivalence
    from harness.bench.synthetic import SyntheticDrafter, SyntheticVerifier
    from harness.drafting.heads.eagle_checkpoints import new_head
    from harness.drafting.heads.eagle_drafter import HeadDrafter, TreeShape
    from harness.engine import cost_curve
    from harness.engine.decoder import Decoder
    from harness.engine.drafter import NoDraft
    from harness.engine.sampling import Sampling
    from harness.engine.verifiers import GreedyVerifier
    from methods.hf_peers import HFCompiledGenerator, HFGenerator
    from methods.pld import PLDConfig, PromptLookup

    target, stock = random_target(shape, device, dtype)
    greedy = Sampling()
    prompts = prompts_for(target.vocab_size, args.prompts, args.prompt_len)
    result: dict = {"shape": shape, "dtype": str(dtype).split(".")[-1], "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}

    # -- c(k): static path vs eager, on one cache of prompt_len tokens
    ks = [k for k in args.ks if k <= max(target.static.widths)]
    static = target.static
    result["ck_static_ms"] = attempt(result, "ck_static", lambda: cost_curve.measure(target, ks, cache_len=args.prompt_len,
                                                                            repeats=args.repeats)) or {}
    target.static = None
    result["ck_eager_ms"] = attempt(result, "ck_eager", lambda: cost_curve.measure(target, args.ks, cache_len=args.prompt_len,
                                                                          repeats=args.repeats)) or {}
    target.static = static

    # -- tokens/s: every side generates args.tokens tokens on the same prompts, interleaved
    def engine(drafter, synthetic: bool) -> Decoder:
        verifier = GreedyVerifier(greedy)
        return Decoder(target, SyntheticVerifier(verifier) if synthetic else verifier, stop_ids=set())

    head = new_head("eagle", target).to(device=device, dtype=dtype)
    sides = {
        "ar": (engine(None, False), NoDraft()),
        "pld": (engine(None, True), SyntheticDrafter(PromptLookup(PLDConfig(num_draft=10, max_ngram=3), set()), RATES["pld"])),
        "eagle2": (engine(None, True), SyntheticDrafter(HeadDrafter(head, TreeShape("dynamic", **EAGLE2_SHAPE), greedy),
                                                         RATES["eagle2"])),
    }
    peers = {"hf_generate": HFGenerator("hf_generate", stock, greedy, {}).without_stop_tokens(),
             "hf_compiled": HFCompiledGenerator("hf_compiled", stock, greedy, args.compile_mode, 512).without_stop_tokens()}

    def run_side(name: str, prompt: list[int]) -> tuple[float, int]:
        """(seconds, tokens) of one generation; every side times itself with device synchronisation."""
        if name == "ar_eager":
            target.static = None
            try:
                res = engine(None, False).generate(prompt, NoDraft(), args.tokens)
            finally:
                target.static = static
        elif name in peers:
            res = peers[name].generate(prompt, args.tokens, None)
        else:
            decoder, drafter = sides[name]
            res = decoder.generate(prompt, drafter, args.tokens)
        return res.wall_time, res.new_tokens

    def warm(name: str) -> bool:
        """Graphs recorded, torch.compile traced (every static cache size the timed calls meet), allocator grown."""
        if name == "hf_compiled":
            length = args.prompt_len + args.tokens
            peers[name].warm_up(prompts[0], args.tokens, None, (length, length))
        run_side(name, prompts[0])
        return True

    # a side that fails, in its warm-up or in any timed generation, is left out and reported; the others go on
    names = [n for n in ["ar", "ar_eager", "hf_generate", "hf_compiled", "pld", "eagle2"]
             if attempt(result, n, lambda n=n: warm(n)) is not None]
    tps: dict[str, list[float]] = {n: [] for n in names}
    for i, prompt in enumerate(prompts):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            if name not in tps:
                continue
            timed = attempt(result, name, lambda name=name: run_side(name, prompt))
            if timed is None:
                del tps[name]
            else:
                tps[name].append(timed[1] / timed[0])
    result["tokens_per_s"] = {n: statistics.median(v) for n, v in tps.items()}
    result["synthetic"] = {n: RATES[n] for n in SYNTHETIC if n in tps}

    # -- greedy equivalence: real pld (no synthetic acceptance) against ar, both through the static path
    def pld_against_ar(prompt: list[int]) -> dict:
        a = engine(None, False).generate(prompt, NoDraft(), args.tokens)
        b = engine(None, False).generate(prompt, PromptLookup(PLDConfig(), set()), args.tokens)
        eq = equivalence(target, prompt, b.token_ids, a.token_ids, a.top2)
        return {"identical": eq["equivalent"], "first_divergence": eq["first_divergence"],
                "margin": eq["divergence_margin"], "near_tie": eq["near_tie"], "accepted": sum(b.accepted)}

    result["pld_equivalence"] = attempt(result, "pld_equivalence", lambda: [pld_against_ar(p) for p in prompts]) or []
    return result


def tables(results: list[dict]) -> str:
    lines = []
    for r in results:
        ck_s, ck_e = r["ck_static_ms"], r["ck_eager_ms"]
        lines += [f"### {r['shape']} ({r['dtype']}, {r['gpu'] or r['device']})", "",
                  "| k | static ms | static c(k) | eager ms | eager c(k) |", "|---|---|---|---|---|"]
        def cell(curve: dict, k) -> str:
            ms, one = curve.get(k), curve.get(1)
            return "- | -" if ms is None or one is None else f"{ms:.2f} | {ms / one:.2f}"

        for k in sorted(set(ck_s) | set(ck_e), key=int):
            lines.append(f"| {k} | {cell(ck_s, k)} | {cell(ck_e, k)} |")
        tps = r["tokens_per_s"]
        lines += ["", "| side | acceptance | tokens/s (median) | over ar | over hf_compiled |", "|---|---|---|---|---|"]
        ref = {k: tps.get(k, float("nan")) for k in ("ar", "hf_compiled")}
        for name, v in tps.items():
            rates = r.get("synthetic", {}).get(name)
            kind = f"SYNTHETIC (rates {', '.join(f'{x:g}' for x in rates)})" if rates else "real"
            lines.append(f"| {name} | {kind} | {v:.1f} | {v / ref['ar']:.2f} | {v / ref['hf_compiled']:.2f} |")
        for name, err in r.get("errors", {}).items():
            lines.append(f"| {name} | | failed: {err.splitlines()[-1][:200]} | | |")
        eq = r["pld_equivalence"] or []
        lines += ["", f"pld vs ar, greedy: {sum(e['identical'] for e in eq)}/{len(eq)} identical; divergence margins "
                  f"{[round(e['margin'], 4) for e in eq if e['margin'] is not None]}; drafts accepted "
                  f"{[e['accepted'] for e in eq]}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="smollm2-135m,llama2-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--ks", default="1,2,4,8,16,32,64,128")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--out", default="results/gpu_check")
    args = p.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for shape in args.shapes.split(","):
        print(f"[gpu_bench] {shape} ...", flush=True)
        try:
            results.append(bench_shape(shape, args, device, dtype))
        except Exception:  # noqa: BLE001  (the next shape still runs)
            traceback.print_exc()
            failed.append(shape)
            continue
        finally:
            if device.type == "cuda":  # the shape's models are gone with bench_shape's frame
                torch.cuda.empty_cache()
        (out / "gpu_bench.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_bench.md").write_text(tables(results))
        print(tables(results[-1:]), flush=True)
    errors = failed + [f"{r['shape']}:{side}" for r in results for side in r.get("errors", {})]
    if errors:
        print(f"[gpu_bench] failed: {', '.join(errors)}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
