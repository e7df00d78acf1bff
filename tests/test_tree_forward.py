"""One forward over a draft tree gives every path the logits (and KV) of decoding it sequentially."""

import random

import torch

from harness.engine import tree as T


def _sequential_logits(target, prefix, path_tokens):
    cache = target.new_cache(64)
    out = target.forward(cache, prefix + path_tokens)
    return out.logits[len(prefix) - 1 :]  # predictions after root, then after each path node


def test_tree_logits_equal_sequential(tiny_target, tiny_prompts):
    rng = random.Random(0)
    for prompt in tiny_prompts[:3]:
        prefix, root = prompt[:-1], prompt[-1]
        parents = [-1, -1, 0, 0, 1, 2, 2, 5, -1]
        tokens = [rng.randrange(tiny_target.vocab_size) for _ in parents]
        cache = tiny_target.new_cache(64)
        tiny_target.forward(cache, prefix)
        start = cache.length
        out = tiny_target.forward(cache, [root] + tokens, positions=T.positions(parents, start), tree=T.ancestor_mask(parents))
        for path in T.paths(parents):
            seq = _sequential_logits(tiny_target, prompt, [tokens[i] for i in path])
            rows = [0] + [i + 1 for i in path]
            torch.testing.assert_close(out.logits[rows], seq, rtol=1e-4, atol=1e-4)


def test_cache_after_acceptance_equals_reencoding(tiny_target, tiny_prompts):
    prompt = tiny_prompts[1]
    prefix, root = prompt[:-1], prompt[-1]
    parents = [-1, -1, 0, 1, 2, 3, 3]
    tokens = [7, 8, 9, 10, 11, 12, 13]
    for accepted in ([], [0], [1, 3], [0, 2, 4, 6]):
        if accepted and any(parents[b] != a for a, b in zip([-1] + accepted, accepted)):
            continue
        cache = tiny_target.new_cache(16)  # small on purpose: the buffer must grow
        tiny_target.forward(cache, prefix)
        start = cache.length
        tiny_target.forward(cache, [root] + tokens, positions=T.positions(parents, start), tree=T.ancestor_mask(parents))
        cache.keep(start, [0] + [i + 1 for i in accepted])
        committed = prompt + [tokens[i] for i in accepted]
        ref = tiny_target.new_cache(64)
        tiny_target.forward(ref, committed)
        assert cache.length == ref.length == len(committed)
        for layer in range(tiny_target.num_layers):
            k, v = cache.kv(layer)
            rk, rv = ref.kv(layer)
            torch.testing.assert_close(k, rk, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v, rv, rtol=1e-5, atol=1e-5)


def test_hidden_states_follow_the_tree(tiny_target, tiny_prompts):
    prompt = tiny_prompts[0]
    cache = tiny_target.new_cache(64)
    tiny_target.forward(cache, prompt[:-1])
    parents = [-1, 0, -1]
    out = tiny_target.forward(cache, [prompt[-1], 5, 6, 7], positions=T.positions(parents, cache.length),
                              tree=T.ancestor_mask(parents), hidden_layers=("final", 1))
    assert out.hidden["final"].shape == (4, tiny_target.config.hidden_size)
    assert out.hidden[1].shape == (4, tiny_target.config.hidden_size)
    ref = tiny_target.new_cache(64)
    seq = tiny_target.forward(ref, prompt + [7], hidden_layers=("final",))
    torch.testing.assert_close(out.hidden["final"][3], seq.hidden["final"][-1], rtol=1e-4, atol=1e-4)
