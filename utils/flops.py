"""Model size and cost: parameters and FLOPs (``torch.utils.flop_counter``, 2 FLOPs per multiply-add)."""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from accel.flops import flop_formulas

__all__ = ["PartCost", "count_flops", "format_costs", "model_costs"]

_aten = torch.ops.aten


def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


@functools.cache
def _register_formulas() -> None:
    """Teach the counter the operators it does not know: PyTorch's CPU attention kernel behind
    ``F.scaled_dot_product_attention`` (counted as torch counts the GPU ones) and the oneDNN operators of the
    CPU fast path (:mod:`accel.flops`). Once per process."""
    formulas = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
                _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flop,
                **flop_formulas()}
    for op, formula in formulas.items():
        if op not in flop_registry:
            register_flop_formula(op)(formula)


def count_flops(fn: Callable, *args, **kwargs) -> tuple[int, object]:
    """``(FLOPs, result)`` of ``fn(*args, **kwargs)``, counting the matrix products, convolutions and
    attention that run inside it (including any backward pass it runs)."""
    _register_formulas()
    counter = FlopCounterMode(display=False)
    with counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


@dataclass
class PartCost:
    params: int      # parameters
    trainable: int   # parameters with requires_grad
    flops: int       # forward FLOPs of one sample (every modality)


def _params(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@torch.no_grad()
def model_costs(model: nn.Module, image_size: Sequence[int]) -> dict[str, PartCost]:
    """Parameters and forward FLOPs per sample of MHCF's backbone, heat fusion and heads, from one forward
    of a blank sample (in eval mode, on the model's device; the training mode is restored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        batch = {m: torch.zeros(1, 3, *image_size, device=device) for m in model.modalities}
        backbone_flops, tokens = count_flops(model.encode, batch)
        heat_flops, (features, _) = count_flops(model.fuse, tokens)
        heads_flops, _ = count_flops(lambda: [head(features[name]) for name, head in model.heads.items()])
    finally:
        model.train(was_training)
    parts = {"backbone": (model.backbone, backbone_flops), "heat fusion": (model.heat, heat_flops),
             "heads": (model.heads, heads_flops)}
    return {name: PartCost(*_params(module), flops) for name, (module, flops) in parts.items()}


def format_costs(costs: dict[str, PartCost]) -> str:
    """A small table: parameters (total, trainable) and forward GFLOPs per sample of each part, and the sum."""
    total = PartCost(*(sum(getattr(c, f) for c in costs.values()) for f in ("params", "trainable", "flops")))
    lines = ["model (forward FLOPs of one sample with every modality; 1 multiply-add = 2 FLOPs):"]
    for name, c in {**costs, "total": total}.items():
        lines.append(f"  {name:<12} {c.params / 1e6:9.3f} M parameters ({c.trainable / 1e6:.3f} M trainable)  "
                     f"{c.flops / 1e9:9.3f} GFLOPs")
    return "\n".join(lines)
