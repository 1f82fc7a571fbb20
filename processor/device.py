"""Devices: MODEL.DEVICE resolved, models and batches placed (the CPU fast path applied on CPU), the
numerics of the training step (autocast, TF32)."""

import os
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from yacs.config import CfgNode

from accel import cpu_fast_path
from datasets.transforms import erase, normalise
from utils.errors import UserError

__all__ = ["BatchToDevice", "autocast_context", "prepare_model", "resolve_device", "tf32"]


def resolve_device(name: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """MODEL.DEVICE -> device: "auto" picks CUDA when present. Each of the ``local_world_size`` processes
    of a node (torchrun's LOCAL_RANK, LOCAL_WORLD_SIZE) takes the GPU of its local rank; a launcher that shows
    every process one GPU (SLURM ``--gpus-per-task=1``) gives them all device 0, their own."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"MODEL.DEVICE is {name!r} but CUDA is not available here; use MODEL.DEVICE cpu")
    visible = torch.cuda.device_count()
    if device.index is not None and local_world_size > 1 and visible > 1:
        raise UserError(f"MODEL.DEVICE {name} would put all {local_world_size} processes of this node on one GPU; "
                        f"use MODEL.DEVICE cuda (each process takes the GPU of its LOCAL_RANK)")
    if device.index is None:
        if visible == 1:
            index = 0
        elif local_rank < visible:
            index = local_rank
        else:
            raise UserError(f"LOCAL_RANK {local_rank} but {visible} GPUs are visible to this process "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at "
                            f"most {visible} processes per node, or show each process its own GPU")
        device = torch.device("cuda", index)
    if device.index >= visible:
        raise UserError(f"MODEL.DEVICE {name}: only {visible} GPU(s) are visible to this process")
    torch.cuda.set_device(device)
    return device


def prepare_model(model: nn.Module, cfg: CfgNode, device: torch.device) -> nn.Module:
    """``model`` on ``device``; on CPU with the CPU fast path (:func:`accel.cpu_fast_path`, MODEL.ONEDNN)."""
    return cpu_fast_path(model.to(device), device, kernels=cfg.MODEL.ONEDNN)


class BatchToDevice:
    """``batch -> batch on the device``: the loader's uint8 images of every modality copied (non-blocking
    when the loader pins memory), normalised there and, in training, randomly erased
    (:mod:`datasets.transforms`); the labels (``pid``) copied too; the other entries left on the host."""

    def __init__(self, cfg: CfgNode, device: torch.device):
        self.modalities = list(cfg.MODEL.MODALITIES)
        self.device = device
        self.erasing = cfg.INPUT.RE_PROB > 0
        # made once, here: a tensor built from a Python list on a GPU is a blocking host-to-device copy
        self.mean = torch.tensor(cfg.INPUT.PIXEL_MEAN, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(cfg.INPUT.PIXEL_STD, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k not in self.modalities and k != "erase"}
        if "pid" in batch:
            out["pid"] = batch["pid"].to(self.device, non_blocking=True)
        boxes = batch.get("erase")
        for m in self.modalities:
            images = normalise(batch[m].to(self.device, non_blocking=True), self.mean, self.std)
            if boxes is not None and self.erasing:
                images = erase(images, boxes[m].to(self.device, non_blocking=True))
            out[m] = images
        return out


def autocast_context(device: torch.device, amp: str):
    """Autocast of the training step for SOLVER.AMP ("off", "fp16", "bf16") on ``device``."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


@contextmanager
def tf32(enabled: bool):
    """CUDA float32 matrix products and convolutions in TF32 (``enabled``) or in full float32, restored after
    the block. PyTorch's own default is full float32 for matrix products but TF32 for cuDNN convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
