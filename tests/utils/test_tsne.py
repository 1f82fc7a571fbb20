"""The exact t-SNE of utils/tsne.py: perplexity calibration, the KL gradient against autograd, and an embedding
that keeps well-separated clusters apart."""

import numpy as np
import torch

from utils.tsne import conditional_probabilities, kl_divergence_and_gradient, tsne


def test_every_row_has_the_requested_perplexity():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5))
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    P = conditional_probabilities(sq, perplexity=7.0)
    assert np.allclose(P.sum(1), 1) and np.all(np.diag(P) == 0)
    entropy = -(np.where(P > 0, P * np.log(np.where(P > 0, P, 1)), 0)).sum(1)
    np.testing.assert_allclose(np.exp(entropy), 7.0, rtol=1e-4)


def test_the_gradient_is_the_kl_divergences():
    rng = np.random.default_rng(1)
    P = rng.random((12, 12))
    P = P + P.T
    np.fill_diagonal(P, 0)
    P /= P.sum()
    Y = rng.standard_normal((12, 2))
    kl, grad = kl_divergence_and_gradient(P, Y)

    y = torch.tensor(Y, requires_grad=True)
    p = torch.tensor(P)
    kernel = 1 / (1 + torch.cdist(y, y) ** 2) * (1 - torch.eye(12, dtype=torch.float64))
    q = kernel / kernel.sum()
    off = ~torch.eye(12, dtype=torch.bool)
    reference = (p[off] * torch.log(p[off] / q[off])).sum()
    reference.backward()
    assert abs(kl - reference.item()) < 1e-12
    np.testing.assert_allclose(grad, y.grad.numpy(), atol=1e-12)


def test_separated_clusters_stay_apart():
    rng = np.random.default_rng(2)
    centres = 10 * rng.standard_normal((3, 8))
    labels = np.repeat(np.arange(3), 20)
    x = centres[labels] + rng.standard_normal((60, 8))
    Y = tsne(x, perplexity=10, iterations=500)
    assert Y.shape == (60, 2)
    d = ((Y[:, None] - Y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = labels[d.argsort(1)[:, :5]]
    assert np.all(nearest == labels[:, None])          # every point's 5 nearest share its cluster
