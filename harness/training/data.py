"""The training data every trainer reads: the target's own greedy answers to the training prompts.

Prompts come from ``$SPECLAB_DATA/train_prompts/prompts.jsonl`` (never an evaluation prompt: any prompt
sharing a word 8-gram with a task is dropped). Answers are generated in batches; in the same batch loop
one teacher-forced forward over prompt + answer captures what the trainers need, so no trainer runs the
target again:

* ``hidden[layer]``: fp16 [tokens, H] for each requested layer: ``"final"`` is the post-norm state fed
  to the LM head (EAGLE-1, Medusa, Hydra), an integer i is the *input* of decoder layer i, i.e.
  transformers' ``hidden_states[i]`` (EAGLE-3's low/mid/high features);
* ``top_idx`` / ``top_p``: the target's top-k next-token probabilities at every answer position (draft
  distillation).

Each batch is one shard file under a folder keyed by everything that changes its content, written
atomically, so an interrupted run resumes at the first missing shard; a run on more prompts takes the
answers a run on fewer already made, by prompt id, and generates only the rest.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.core.errors import SpeclabError
from harness.model.target import TargetModel
from harness.training.loop import PRECISIONS

NON_COMMERCIAL = ("alpacaeval", "wizardlm", "codealpaca")  # CC BY-NC sources in train_prompts/SOURCES.md


def prompts_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("SPECLAB_DATA", "../shared/data")) / "train_prompts" / "prompts.jsonl"


def training_prompts(path: Path, n: int, seed: int = 0, include_noncommercial: bool = False) -> list[dict]:
    """Up to ``n`` training prompts (shuffled by ``seed``) that share no word 8-gram with any evaluation prompt."""
    from harness.training.overlap import evaluation_texts, overlapping

    if not path.is_file():
        raise SpeclabError(f"training prompts {path} not found; pass --prompts-file or set SPECLAB_DATA")
    rows = [json.loads(line) for line in open(path) if line.strip()]
    if not include_noncommercial:
        rows = [r for r in rows if not r["id"].startswith(NON_COMMERCIAL)]
    evals = [t for texts in evaluation_texts().values() for t in texts]
    bad = set(overlapping([r["prompt"] for r in rows], evals))
    rows = [r for i, r in enumerate(rows) if i not in bad]
    random.Random(seed).shuffle(rows)
    print(f"{len(rows)} training prompts after dropping {len(bad)} that share an 8-gram with evaluation prompts", file=sys.stderr)
    return rows[:n]


@dataclass(frozen=True)
class AnswerSpec:
    """What a shard folder holds; its name is derived from these fields, so different settings never mix."""

    gen_tokens: int = 128
    max_prompt_tokens: int = 256
    batch: int = 16
    topk: int = 0  # 0: no top-k probabilities
    layers: tuple[int | str, ...] = ()  # hidden states to keep (see module docstring)
    seed: int = 0

    def folder_name(self, n_prompts: int | str) -> str:
        layers = "-".join(str(x) for x in self.layers) or "none"
        return f"gen-p{n_prompts}-t{self.gen_tokens}-m{self.max_prompt_tokens}-b{self.batch}-k{self.topk}-h{layers}-s{self.seed}"


def head_answer_spec(target: TargetModel, gen_tokens: int = 128, max_prompt_tokens: int = 256, batch: int = 32,
                     seed: int = 0) -> AnswerSpec:
    """The answers the head trainers share (the final state and EAGLE-3's three layers captured): one cache
    serves EAGLE-1/3, Medusa/Hydra and the default retrieval datastore."""
    from harness.drafting.heads.eagle_checkpoints import default_layers

    return AnswerSpec(gen_tokens=gen_tokens, max_prompt_tokens=max_prompt_tokens, batch=batch,
                      layers=("final", *default_layers("eagle3", target.num_layers)), seed=seed)


def training_work_dir(target: TargetModel) -> Path:
    """Where a target's training caches live unless a script is given ``--work``."""
    from harness.core.diskcache import cache_dir

    return cache_dir() / "training" / f"{target.info.name}-{target.info.weights_hash}"


def head_answers(target: TargetModel, prompts_file: str | None, n_prompts: int, work: str | Path | None = None,
                 seed: int = 0, gen_tokens: int = 128, max_prompt_tokens: int = 256, batch: int = 32,
                 max_minutes: float | None = None, include_noncommercial: bool = False) -> list[dict]:
    """The shared answer cache of the head trainers (:func:`head_answer_spec`), generated where missing."""
    prompts = training_prompts(prompts_path(prompts_file), n_prompts, seed, include_noncommercial)
    spec = head_answer_spec(target, gen_tokens, max_prompt_tokens, batch, seed)
    return answer_shards(target, prompts, Path(work) if work else training_work_dir(target), spec, max_minutes)


def add_head_trainer_arguments(p, prompts: int = 640, batch: int = 8, epochs: float = 4.0,
                               train_minutes: float = 20.0) -> None:
    """The options every head trainer on the shared answer cache takes (scripts/train_eagle.py, train_medusa.py):
    the answers, the hold-out, the schedule, the held-out tau and where things go."""
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or gemma3-270m (the packaged models), tiny-llama (tests) or an HF id/folder")
    p.add_argument("--prompts-file", default=None, help="JSONL with 'id' and 'prompt' (default: $SPECLAB_DATA/train_prompts/prompts.jsonl)")
    p.add_argument("--prompts", type=int, default=prompts, help="training prompts to answer")
    p.add_argument("--gen-tokens", type=int, default=128, help="answer length per prompt")
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--gen-minutes", type=float, default=None,
                   help="stop generating answers after this long and train on the shards so far (a rerun adds more)")
    p.add_argument("--holdout", type=float, default=0.04, help="share of prompts held out to measure tau")
    p.add_argument("--draft-vocab", type=int, default=8192, help="draft vocabulary: most frequent answer tokens")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--epochs", type=float, default=epochs)
    p.add_argument("--train-minutes", type=float, default=train_minutes, help="stop training after this long")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: the training matmuls in bfloat16 autocast (weights and optimiser stay fp32); 1.4-1.8x "
                        "faster a step on a CPU with AMX")
    p.add_argument("--eval-every", type=int, default=0, help="measure held-out tau every N steps (0: at the end only)")
    p.add_argument("--eval-prompts", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=64)
    p.add_argument("--include-noncommercial", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="cache folder for answers and checkpoints")
    p.add_argument("--out", required=True, help="output head folder")


def answers_for(args) -> tuple[TargetModel, Path, list[dict], float]:
    """(target, work folder, cached answers, minutes spent reading or making them) for a head trainer's options."""
    from harness.loading.sources import load_named

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    target = load_named(args.model)
    # the heads train against a frozen target; left trainable, every backward through the shared embedding
    # (EAGLE, Hydra) also builds, and throws away, a dense gradient of the whole embedding table
    target.model.requires_grad_(False)
    work = Path(args.work) if args.work else training_work_dir(target)
    samples = head_answers(target, args.prompts_file, args.prompts, work, args.seed, args.gen_tokens,
                           args.max_prompt_tokens, args.gen_batch, args.gen_minutes, args.include_noncommercial)
    return target, work, samples, (time.time() - t0) / 60


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def _teacher_forced(target: TargetModel, seqs: list[list[int]], prompt_lens: list[int], spec: AnswerSpec) -> list[dict]:
    """Hidden states and top-k probabilities of ``seqs`` (prompt + answer), right-padded in one forward."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    want_layers = any(layer != "final" for layer in spec.layers)
    out = target.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=want_layers, use_cache=False)
    rows = []
    for r, (s, n_prompt) in enumerate(zip(seqs, prompt_lens)):
        item: dict = {"hidden": {}}
        for layer in spec.layers:
            h = out.last_hidden_state if layer == "final" else out.hidden_states[int(layer)]
            item["hidden"][layer] = h[r, : len(s)].half().clone()
        if spec.topk:
            # position j predicts token j + 1: the answer tokens are predicted from n_prompt - 1 .. len - 2
            logits = target.lm_head(out.last_hidden_state[r, n_prompt - 1 : len(s) - 1]).float()
            top = logits.softmax(-1).topk(spec.topk, dim=-1)
            item["top_idx"] = top.indices.to(torch.int32)
            item["top_p"] = top.values.half()
        rows.append(item)
    return rows


@torch.inference_mode()
def answer_shards(target: TargetModel, prompts: Sequence[dict], work: Path, spec: AnswerSpec,
                  max_minutes: float | None = None) -> list[dict]:
    """The target's greedy answers to ``prompts`` with the captured tensors, one cached shard per batch.

    Every sample: ``id``, ``prompt`` (token ids, chat template applied, at most ``max_prompt_tokens``),
    ``answer`` (cut after the first stop token), plus ``hidden`` / ``top_idx`` / ``top_p`` as the spec asks.
    Batches hold prompts of similar length but are generated in a seeded random order, so with
    ``max_minutes`` (stop generating after that long; a rerun continues) the shards so far are an unbiased
    sample of the prompts.
    """
    from harness.model.kernels import apply_kernel

    folder = Path(work) / spec.folder_name(len(prompts))
    folder.mkdir(parents=True, exist_ok=True)
    tok = target.tokenizer
    model = target.model
    attention = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"  # padded batches need the stock attention with a padding mask
    apply_kernel(model, "onednn")
    encoded = [target.encode_chat([{"role": "user", "content": r["prompt"]}])[-spec.max_prompt_tokens :] for r in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    batches = [order[i : i + spec.batch] for i in range(0, len(order), spec.batch)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    visit = list(range(len(batches)))
    random.Random(spec.seed).shuffle(visit)
    reuse: dict[str, dict] | None = None  # read on the first missing shard only
    samples: list[dict] = []
    start = time.time()
    try:
        for b in tqdm(visit, desc="target answers", unit="batch"):
            idx = batches[b]
            shard = folder / f"gen_{b:04d}.pt"
            if shard.is_file():
                samples += torch.load(shard)
                continue
            if max_minutes is not None and time.time() - start > max_minutes * 60:
                continue  # out of time: later shards come with a rerun
            if reuse is None:
                reuse = _answered_elsewhere(work, spec, folder)
            ids = [prompts[i].get("id", str(i)) for i in idx]
            known = {i: reuse[k] for i, k in zip(idx, ids) if k in reuse and reuse[k]["prompt"] == encoded[i]}
            todo = [i for i in idx if i not in known]
            made = dict(zip(todo, _answer_batch(target, [encoded[i] for i in todo], spec, pad))) if todo else {}
            batch = [{**(known[i] if i in known else made[i]), "id": k} for i, k in zip(idx, ids)]
            _save_atomic(batch, shard)
            samples += batch
    finally:
        model.config._attn_implementation = attention
    return samples


def _answered_elsewhere(work: Path, spec: AnswerSpec, folder: Path) -> dict[str, dict]:
    """Samples already answered under the same spec for another prompt count, by prompt id: a run on more
    prompts answers only the new ones (the seeded shuffle puts a smaller run's prompts first)."""
    found: dict[str, dict] = {}
    for other in sorted(Path(work).glob(spec.folder_name("*"))):
        if other == folder or not other.is_dir():
            continue
        for shard in sorted(other.glob("gen_*.pt")):
            for sample in torch.load(shard):
                found.setdefault(sample["id"], sample)
    if found:
        print(f"{len(found)} answers reused from other prompt counts under {work}", file=sys.stderr)
    return found


def _answer_batch(target: TargetModel, encoded: list[list[int]], spec: AnswerSpec, pad: int) -> list[dict]:
    """Greedy answers to left-padded ``encoded`` prompts, each with the tensors ``spec`` captures."""
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :] = torch.tensor(e)
        mask[row, width - len(e) :] = 1
    out = target.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=spec.gen_tokens, do_sample=False,
                                pad_token_id=pad)
    stops = target.stop_ids
    answers = []
    for row in range(len(encoded)):
        answer = out[row, width:].tolist()
        end = next((j + 1 for j, t in enumerate(answer) if t in stops), len(answer))
        answers.append(answer[:end])
    captured = _teacher_forced(target, [e + a for e, a in zip(encoded, answers)], [len(e) for e in encoded], spec)
    return [{"prompt": e, "answer": a, **c} for e, a, c in zip(encoded, answers, captured)]


def split_holdout(samples: list[dict], share: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(held-out, train) by a hash of each prompt's id: held-out prompts judge a trainer and never train it,
    and a prompt stays on its side however many shards exist."""
    def held(s: dict) -> bool:
        return zlib.crc32(f"{seed}|{s['id']}".encode()) % 10000 < share * 10000

    return [s for s in samples if held(s)], [s for s in samples if not held(s)]
