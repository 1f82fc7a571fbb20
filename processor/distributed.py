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

__all__ = ["DistInfo", "MainProcessFailed", "all_gather", "all_gather_with_grad", "all_reduce_mean", "cleanup",
           "differing_replicas", "gather_rows", "init_distributed", "main_process_first", "run_on_main"]

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

    @property
    def is_local_main(self) -> bool:
        """The first process of its node."""
        return self.local_rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
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
    """The first process of each node runs the block first (e.g. generating data or downloading weights
    into node-local storage); the others follow once every node's first process has succeeded, and stop at
    once (MainProcessFailed) if one failed. (Writers into shared storage must tolerate a concurrent writer
    from another node: the dataset generator and the weight download both write a temporary and rename.)"""
    if not info.distributed:
        yield
        return
    if info.is_local_main:
        try:
            yield
        except BaseException:
            _all_ok(info, False)
            raise
        _all_ok(info, True)
    else:
        if not _all_ok(info, True):
            raise MainProcessFailed("the first process of a node failed (its error is above); stopping")
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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered tensor and returns this
    process's slice (fast-reid's GatherLayer): a loss computed alike on every process over the gathered
    batch then gives, after DDP's gradient average, the gradient of one process computing it on that batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        summed = torch.stack(grads)
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (same shape everywhere), concatenated along dim 0 in rank order, differentiable."""
    return torch.cat(_GatherWithGrad.apply(x))


def all_gather(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every process's ``x`` (same shape everywhere), concatenated along dim 0 in rank order."""
    if not info.distributed:
        return x
    out = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def gather_rows(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The rows of every process's ``x`` (N_r, ...) concatenated in rank order, on every process; the row
    counts may differ (padded for the collective). Collectives run on ``info.device``; the result is on
    ``x``'s device."""
    if not info.distributed:
        return x
    counts = all_gather(torch.tensor([len(x)], device=info.device), info).tolist()
    padded = x.new_zeros((max(counts), *x.shape[1:]), device=info.device)
    padded[:len(x)] = x
    parts = all_gather(padded, info).split(max(counts))
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(x.device)


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
