"""Process-group set-up for ``torchrun`` (NCCL on GPUs, gloo on CPU) and the helpers the runner needs."""

import datetime
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from .device import resolve_device

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device)


class MainProcessFailed(RuntimeError):
    """Raised on the other processes when the main process failed in a block they were waiting for."""


def _all_ok(info: DistInfo, ok: bool) -> bool:
    """Whether every process reports ``ok`` (a barrier that also carries the outcome)."""
    flag = torch.tensor([int(ok)], device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@contextmanager
def main_process_first(info: DistInfo):
    """The main process runs the block first (e.g. generating data or downloading weights); the others
    follow once it has succeeded, and stop at once (MainProcessFailed) if it failed."""
    if not info.distributed:
        yield
        return
    if info.is_main:
        try:
            yield
        except BaseException:
            _all_ok(info, False)
            raise
        _all_ok(info, True)
    else:
        if not _all_ok(info, True):
            raise MainProcessFailed("the main process failed (its error is above); stopping")
        yield


def run_on_main(info: DistInfo, fn: Callable[[], T]) -> T | None:
    """``fn()`` on the main process only (evaluation, saving) while the others wait; returns its result
    there and None elsewhere. If it raises, the error propagates on the main process and every other
    process stops with MainProcessFailed instead of waiting at a barrier until the timeout."""
    if not info.distributed:
        return fn()
    if not info.is_main:
        if not _all_ok(info, True):
            raise MainProcessFailed("the main process failed (its error is above); stopping")
        return None
    try:
        result = fn()
    except BaseException:
        _all_ok(info, False)
        raise
    _all_ok(info, True)
    return result


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes (a copy; the input is left as it is)."""
    if not info.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / info.world_size


@torch.no_grad()
def differing_replicas(module: torch.nn.Module, info: DistInfo) -> list[str]:
    """Names of the parameters that differ from rank 0's on some process (empty when every replica is
    identical, as data-parallel training must keep them). Buffers are left out: DDP copies rank 0's at each
    forward, so the batch-norm statistics of the last step legitimately differ until the next one (rank
    0's are the ones saved). Costs one broadcast of the parameters."""
    if not info.distributed:
        return []
    params = dict(module.named_parameters())
    names = list(params)
    differs = torch.zeros(len(names), device=info.device)
    for i, tensor in enumerate(params.values()):
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        differs[i] = float(not torch.equal(reference, tensor))
    dist.all_reduce(differs)
    return [name for name, d in zip(names, differs.tolist()) if d]


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
