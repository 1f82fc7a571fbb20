"""Batch-hard triplet loss (Hermans et al., 2017) on Euclidean distances."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision values (autocast) as float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@contextmanager
def _no_tf32() -> Iterator[None]:
    """CUDA float32 matrix products in full float32 for the block, whatever the caller allowed (TF32 keeps 10
    mantissa bits, as float16 does)."""
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def batch_hard_triplet(features: torch.Tensor, pids: torch.Tensor, margin: float | None,
                       groups: torch.Tensor | None = None) -> torch.Tensor:
    """For every anchor: its farthest positive and nearest negative in the batch.

    ``margin`` None gives the soft margin ``log(1 + exp(d_ap - d_an))``; else ``max(0, d_ap - d_an + m)``.
    Averaged over anchors. With ``groups`` (B,) both are mined among the anchor's own group only (training
    for missing modalities: the samples that keep the same modalities, :func:`loss.presence_groups`); an
    anchor without a negative in its group contributes 0 (an anchor is always its own positive).

    Computed in float32 (float64 features stay float64) with autocast and TF32 off, whatever the caller's
    settings: the distances are small differences of large squared norms (post-LayerNorm features share a
    large common component), which half precision (and TF32's products) rounds away, and mining then picks
    the wrong positives and negatives.
    """
    with torch.autocast(device_type=features.device.type, enabled=False), _no_tf32():
        x = at_least_float32(features)
        sq = x.pow(2).sum(1)
        dist = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp(min=1e-12).sqrt()   # (B, B)
        same = pids[:, None] == pids[None, :]
        other = ~same
        if groups is not None:
            together = groups[:, None] == groups[None, :]
            same, other = same & together, other & together
        d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
        d_an = dist.masked_fill(~other, float("inf")).amin(1)
        if margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + margin).mean()
