import math

import torch

from lab.evaluate import knn_top1, linear_probe_top1


def test_knn_weighted_vote_by_hand():
    # one test point; train: class 0 at cosine 0.9, class 1 twice at cosine 0.8.
    # T = 0.1: votes e^9 (class 0) vs 2 e^8 (class 1); e > 2, so class 0 wins.
    # T = 1: votes e^0.9 vs 2 e^0.8 = e^0.8 * 2 > e^0.8 * e^0.1, so class 1 wins.
    train = torch.tensor([[0.9, math.sqrt(1 - 0.81)], [0.8, math.sqrt(1 - 0.64)], [0.8, -math.sqrt(1 - 0.64)]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_top1(train, labels, test, torch.tensor([0]), 2, k=3, temperature=0.1) == 100.0  # e^9 > 2e^8
    assert knn_top1(train, labels, test, torch.tensor([1]), 2, k=3, temperature=1.0) == 100.0
    # k = 1: the nearest neighbour alone
    assert knn_top1(train, labels, test, torch.tensor([0]), 2, k=1, temperature=1.0) == 100.0


def test_knn_and_linear_probe_on_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 5
    labels = torch.arange(4).repeat_interleave(50)
    train = centres[labels] + torch.randn(200, 16, generator=g)
    test = centres[labels] + torch.randn(200, 16, generator=g)
    assert knn_top1(train, labels, test, labels, 4, k=20) == 100.0
    assert linear_probe_top1(train, labels, test, labels, 4, epochs=20) == 100.0
    # shuffled labels: near chance
    shuffled = labels[torch.randperm(200, generator=g)]
    assert linear_probe_top1(train, shuffled, test, labels, 4, epochs=20) < 50.0


def test_linear_probe_is_repeatable():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(100, 8, generator=g), torch.randint(0, 3, (100,), generator=g)
    assert linear_probe_top1(x, y, x, y, 3, epochs=3, seed=5) == linear_probe_top1(x, y, x, y, 3, epochs=3, seed=5)
