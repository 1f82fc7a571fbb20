"""FLOP formulas of the oneDNN operators this package calls, for ``torch.utils.flop_counter``.

Counted as PyTorch counts the operations they replace (2 FLOPs per multiply-add), so a model's FLOPs are the
same with and without the CPU kernels. :func:`utils.flops.count_flops` registers them.
"""

import math

import torch
from torch.utils.flop_counter import conv_flop_count

__all__ = ["flop_formulas"]


def _linear_pointwise_flop(x_shape, w_shape, *args, **kwargs) -> int:
    """oneDNN's ``x @ w.T``, counted as ``aten.mm``."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _linear_backward_weights_flop(grad_shape, x_shape, *args, **kwargs) -> int:
    """oneDNN's ``grad.T @ x`` (the bias sum is not counted, as for ``aten.addmm``)."""
    return 2 * math.prod(x_shape[:-1]) * grad_shape[-1] * x_shape[-1]


def _convolution_pointwise_flop(x_shape, w_shape, *args, out_shape, **kwargs) -> int:
    """oneDNN's convolution, counted as ``aten.convolution``: :func:`accel.attention.batched_matmul` then
    counts as the batched product it computes."""
    return conv_flop_count(x_shape, w_shape, out_shape)


def flop_formulas() -> dict:
    """``{operator: formula}`` for the oneDNN operators present in this PyTorch build."""
    wanted = {("mkldnn", "_linear_pointwise"): _linear_pointwise_flop,
              ("aten", "mkldnn_linear_backward_weights"): _linear_backward_weights_flop,
              ("mkldnn", "_convolution_pointwise"): _convolution_pointwise_flop}
    if not torch.backends.mkldnn.is_available():
        return {}
    return {getattr(getattr(torch.ops, ns), name): formula for (ns, name), formula in wanted.items()
            if hasattr(getattr(torch.ops, ns), name)}
