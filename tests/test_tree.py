import pytest
import torch

from harness.drafting.tree_shapes import prefix_tree
from harness.engine import tree as T


def test_chain_and_depths():
    assert T.chain_parents(4) == [-1, 0, 1, 2]
    assert T.is_chain([-1, 0, 1])
    assert not T.is_chain([-1, -1])
    assert T.depths([-1, -1, 0, 2, 1]) == [1, 1, 2, 3, 2]


def test_ancestor_mask_matches_definition():
    parents = [-1, -1, 0, 0, 2, 1]
    mask = T.ancestor_mask(parents)
    assert mask.shape == (7, 7)
    for i in range(len(parents)):
        anc = {i}
        p = parents[i]
        while p >= 0:
            anc.add(p)
            p = parents[p]
        expect = [True] + [j in anc for j in range(len(parents))]
        assert mask[i + 1].tolist() == expect
    assert mask[0].tolist() == [True] + [False] * len(parents)


def test_positions_paths_and_trie():
    parents = [-1, -1, 0, 0, 2]
    assert T.positions(parents, 10).tolist() == [10, 11, 11, 12, 12, 13]
    assert sorted(T.paths(parents)) == [[0, 2, 4], [0, 3], [1]]
    trie = prefix_tree([[5, 6, 7], [5, 6, 8], [9]])
    assert trie.tokens == [5, 9, 6, 7, 8] and trie.parents == [-1, -1, 0, 2, 2]
    assert trie.counts == [2, 1, 2, 1, 1]  # a shared prefix is one node, counted once per continuation
    T.validate(trie.parents)
    with pytest.raises(ValueError):
        T.validate([0])


def test_prune_and_subset():
    parents = [-1, 0, 1, -1, 3]
    keep = T.prune_depth(parents, 2)
    assert keep == [0, 1, 3, 4]
    assert T.subset(parents, keep) == [-1, 0, -1, 2]


def test_children():
    kids = T.children([-1, -1, 0])
    assert kids == [[0, 1], [2], [], []]
    assert torch.equal(T.ancestor_mask([]), torch.ones(1, 1, dtype=torch.bool))
