"""The smollm2-moe testbed's construction (harness/loading/moe_testbed.py, scripts/make_moe.py) on a tiny dense model:
untrained upcycled experts are exactly the dense model whatever the routing, gains make experts differ, the
clustering is balanced and groups neurons that fire together, the fitted routers follow the clusters, training
moves gains and routers, and the routers file round-trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import SpeclabError
from harness.loading.moe_testbed import load_routers, moefy, save_routers
from harness.model.tiny import tiny_model
from scripts.make_moe import balanced_kmeans, cluster_routers, train_experts


@pytest.fixture(scope="module")
def dense():
    return tiny_model(300, layers=2).eval()


def test_upcycled_experts_are_the_dense_model_until_their_gains_differ(dense):
    L, N, H = dense.config.num_hidden_layers, dense.config.intermediate_size, dense.config.hidden_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (1, 24), generator=g)
    moe = moefy(dense, torch.randn(L, 4, H, generator=g), torch.ones(L, 4, N), top_k=2)
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, atol=1e-4, rtol=1e-4)
        gained = moefy(dense, torch.randn(L, 4, H, generator=g), 1 + 0.5 * torch.randn(L, 4, N, generator=g), top_k=2)
        assert (gained(ids).logits - dense(ids).logits).abs().max() > 1e-2


def test_balanced_kmeans_recovers_groups_of_equal_size():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 32, generator=g), dim=1)
    truth = torch.arange(64) % 4
    features = F.normalize(centres[truth] + 0.1 * torch.randn(64, 32, generator=g), dim=1)
    assign = balanced_kmeans(features, 4, iters=5, seed=0)
    assert torch.bincount(assign, minlength=4).tolist() == [16] * 4
    for c in range(4):  # each found cluster is one true group
        assert truth[assign == c].unique().numel() == 1


def test_fitted_routers_follow_the_neuron_clusters(dense):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(512, dense.config.hidden_size, generator=g) for _ in dense.model.layers]
    router = cluster_routers(dense, xs, 4, seed=0)
    assert router.shape == (dense.config.num_hidden_layers, 4, dense.config.hidden_size)
    picked = (xs[0] @ router[0].T).argmax(1)
    assert picked.unique().numel() > 1  # token-dependent, not one expert for all


def test_training_moves_gains_and_routers(dense):
    L, N, H = dense.config.num_hidden_layers, dense.config.intermediate_size, dense.config.hidden_size
    g = torch.Generator().manual_seed(2)
    router0 = torch.randn(L, 4, H, generator=g)
    moe = moefy(dense, router0, torch.ones(L, 4, N), top_k=2)
    moe.config._attn_implementation = "sdpa"
    data = [{"prompt": torch.randint(0, 300, (6,), generator=g).tolist(), "answer": torch.randint(0, 300, (8,), generator=g).tolist()}
            for _ in range(8)]
    router, gains = train_experts(moe, data, batch=4, epochs=2, minutes=1, lr=1e-2, seed=0)
    assert gains.shape == (L, 4, N) and (gains - 1).abs().max() > 1e-3 and (router - router0).abs().max() > 0
    rebuilt = moefy(dense, router, gains, top_k=2)
    ids = torch.tensor([data[0]["prompt"] + data[0]["answer"]])
    with torch.no_grad():  # the trained parametrized model and the one rebuilt from what is saved agree
        torch.testing.assert_close(rebuilt(ids).logits, moe(ids).logits, atol=1e-4, rtol=1e-4)


def test_routers_file_round_trips_and_a_missing_one_names_the_command(tmp_path):
    router, gains = torch.randn(2, 4, 6), torch.rand(2, 4, 8)
    save_routers(tmp_path / "r.safetensors", router, gains, 2, {"note": "test"})
    r2, g2, k = load_routers(tmp_path / "r.safetensors")
    assert k == 2 and torch.equal(r2, router) and torch.equal(g2, gains)
    with pytest.raises(SpeclabError, match="scripts/make_moe.py"):
        load_routers(tmp_path / "missing.safetensors")
