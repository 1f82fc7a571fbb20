"""The CPU fast path: kernels and allocator settings that make training and inference fast on CPU.

Nothing here changes what the model computes (same numbers up to float rounding); it changes how fast a
CPU computes it. The runners apply it after moving the model to its device, on CPU only
(:func:`cpu_fast_path`): GPU users see timm's own modules.

- :mod:`accel.onednn`: oneDNN linear layers and a fused QuickGELU MLP (``MODEL.ONEDNN``);
- :mod:`accel.attention`: the ViT's multi-head attention as oneDNN batched products (``MODEL.ONEDNN``);
- :mod:`accel.allocator`: glibc ``malloc`` kept from returning activation buffers to the kernel;
- :mod:`accel.flops`: FLOP formulas of the oneDNN operators, for ``torch.utils.flop_counter``.
"""

import torch
from torch import nn

from .allocator import tune_glibc_malloc
from .attention import FastAttention, fast_attention_available
from .onednn import OneDNNLinear, QuickGELUMlp, onednn_available

__all__ = ["cpu_fast_path", "onednn_available", "tune_glibc_malloc", "use_cpu_kernels"]


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap, in place, every QuickGELU ``Mlp`` for a :class:`~accel.onednn.QuickGELUMlp`, every other
    ``nn.Linear`` for a :class:`~accel.onednn.OneDNNLinear` and every plain timm ``Attention`` for a
    :class:`~accel.attention.FastAttention` (parameters shared, state-dict names unchanged); returns ``model``.
    A no-op when oneDNN is unavailable or fails its probe."""
    if not onednn_available():
        return model
    swaps = [(QuickGELUMlp.fits, QuickGELUMlp), (OneDNNLinear.fits, OneDNNLinear.from_linear)]
    if fast_attention_available():  # after the linear layers: FastAttention takes the swapped qkv and proj
        swaps.append((FastAttention.fits, FastAttention))
    for fits, make in swaps:
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if fits(child):
                    setattr(parent, name, make(child))
    return model


def cpu_fast_path(model: nn.Module, device: torch.device, kernels: bool = True) -> nn.Module:
    """On a CPU ``device``: glibc ``malloc`` tuned for reuse of large blocks, and, with ``kernels``
    (``MODEL.ONEDNN``), the oneDNN modules swapped in. Elsewhere ``model`` is returned untouched."""
    if device.type != "cpu":
        return model
    tune_glibc_malloc()
    return use_cpu_kernels(model) if kernels else model
