"""Devices: MODEL.DEVICE resolved, models and batches placed (the CPU fast path applied on CPU), the
autocast of the training step."""

from contextlib import nullcontext

import torch
from torch import nn
from yacs.config import CfgNode

from accel import cpu_fast_path
from utils.errors import UserError

__all__ = ["autocast_context", "batch_to", "prepare_model", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """MODEL.DEVICE -> device: "auto" picks CUDA when present; under torchrun each process takes the CUDA
    device of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"MODEL.DEVICE is {name!r} but CUDA is not available here; use MODEL.DEVICE cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def prepare_model(model: nn.Module, cfg: CfgNode, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CPU with the CPU fast path (:func:`accel.cpu_fast_path`, MODEL.ONEDNN)."""
    return cpu_fast_path(model.to(device), device, kernels=cfg.MODEL.ONEDNN)


def batch_to(batch: dict, modalities, device: torch.device) -> dict:
    """The batch with its images on ``device`` (non-blocking when the loader pins memory)."""
    return {k: (v.to(device, non_blocking=True) if k in modalities else v) for k, v in batch.items()}


def autocast_context(device: torch.device, amp: str):
    """Autocast of the training step for SOLVER.AMP ("off", "fp16", "bf16") on ``device``."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
