"""Exact t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008) for the embedding figures.

A few hundred to a few thousand points, exact O(N^2) gradients in float64 numpy: no scikit-learn (and SciPy)
dependency for one figure. The optimisation is the paper's: perplexity-calibrated Gaussian affinities,
symmetrised; Student-t similarities in the embedding; gradient descent with momentum (0.5, then 0.8 after 250
iterations), the delta-bar-delta gains, early exaggeration 12 for the first 250 iterations, and a learning rate
of max(N / 12 / 4, 50) (Belkina et al. 2019, scikit-learn's "auto").
"""

import numpy as np

__all__ = ["conditional_probabilities", "kl_divergence_and_gradient", "tsne"]

_EXAGGERATION_ITERATIONS = 250


def conditional_probabilities(sq_distances: np.ndarray, perplexity: float, tol: float = 1e-5,
                              max_steps: int = 100) -> np.ndarray:
    """``p_{j|i}`` (N, N), rows summing to 1: a Gaussian kernel per row whose precision is found by bisection so
    that the row's entropy is ``log(perplexity)`` (nats); ``p_{i|i} = 0``."""
    n = sq_distances.shape[0]
    target = np.log(perplexity)
    out = np.zeros((n, n))
    for i in range(n):
        d = np.delete(sq_distances[i], i)
        d = d - d.min()                                       # the same row after normalising, no underflow
        beta, low, high = 1.0, 0.0, np.inf
        for _ in range(max_steps):
            p = np.exp(-d * beta)
            total = p.sum()
            p /= total
            entropy = np.log(total) + beta * (d * p).sum()    # H = log(sum e^{-beta d}) + beta <d>_p
            if abs(entropy - target) < tol:
                break
            if entropy > target:                              # too flat: sharpen
                low, beta = beta, beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high, beta = beta, (beta + low) / 2
        out[i, np.arange(n) != i] = p
    return out


def kl_divergence_and_gradient(P: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    """``KL(P || Q)`` of the joint probabilities ``P`` (N, N) and the embedding ``Y`` (N, d), and its gradient
    ``dKL/dy_i = 4 sum_j (p_ij - q_ij)(y_i - y_j) / (1 + |y_i - y_j|^2)``."""
    sq = (Y ** 2).sum(1)
    kernel = 1.0 / (1.0 + np.maximum(sq[:, None] + sq[None, :] - 2 * Y @ Y.T, 0.0))   # (N, N) Student-t
    np.fill_diagonal(kernel, 0.0)
    Q = np.maximum(kernel / kernel.sum(), 1e-300)
    mask = P > 0
    kl = float((P[mask] * np.log(P[mask] / Q[mask])).sum())
    W = (P - Q) * kernel                                                                  # (N, N)
    grad = 4.0 * (W.sum(1)[:, None] * Y - W @ Y)
    return kl, grad


def tsne(x: np.ndarray, dims: int = 2, perplexity: float = 30.0, iterations: int = 1000, seed: int = 0,
         exaggeration: float = 12.0) -> np.ndarray:
    """A ``(N, dims)`` embedding of the rows of ``x`` (N, D). The perplexity is capped at (N - 1) / 3."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    sq = (x ** 2).sum(1)
    sq_distances = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    conditional = conditional_probabilities(sq_distances, perplexity)
    P = np.maximum((conditional + conditional.T) / (2 * n), 1e-12)
    np.fill_diagonal(P, 0.0)
    rng = np.random.default_rng(seed)
    Y = 1e-4 * rng.standard_normal((n, dims))
    velocity, gains = np.zeros_like(Y), np.ones_like(Y)
    rate = max(n / exaggeration / 4, 50.0)
    for it in range(iterations):
        early = it < _EXAGGERATION_ITERATIONS
        _, grad = kl_divergence_and_gradient(P * exaggeration if early else P, Y)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(min=0.01)
        velocity = (0.5 if early else 0.8) * velocity - rate * gains * grad
        Y = Y + velocity
    return Y - Y.mean(0)
