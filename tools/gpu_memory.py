"""An estimate of the GPU memory of a config's training step, per GPU, computed without a GPU.

    python -m tools.gpu_memory --config_file configs/RGBNT201/MHCF.yml --gpus 1,2,4

The model runs its training forward and losses on fake CUDA tensors (``FakeTensorMode``: shapes, dtypes and
devices, no data) under the config's autocast, with each process's share of SOLVER.IMS_PER_BATCH; every
tensor autograd keeps for the backward pass is counted once (by storage), by the part of the model that
kept it. With MODEL.GRAD_CKPT a checkpointed block (a backbone block, a heat operator) keeps its inputs only,
and the backward pass holds what one block keeps while it is recomputed: the largest is added on its own
line.
Attention runs as a GPU's memory-efficient kernel (which keeps queries, keys, values, output and row
log-sum-exps, no N x N probabilities). Added: parameters (float32), their gradients (float32) and the
optimizer's state (Adam / AdamW: two float32 tensors per parameter; SGD: one). Not counted: the CUDA
context and the cuDNN / cuBLAS workspaces (about 0.5 GiB), the backward pass's transient buffers, the
allocator's fragmentation. An estimate, not a measurement (``python -m tools.benchmark`` measures on a GPU).
"""

import argparse
import unittest.mock
from collections.abc import Sequence
from contextlib import ExitStack

import torch
import torch.utils.checkpoint
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves
from yacs.config import CfgNode

from config import load_config
from datasets import check_batch_split
from loss import make_loss
from model import make_model
from processor.device import autocast_context

from .common import at_least, run_tool, tool_parser

GIB = 2**30
CUDA = torch.device("cuda")
PARTS = ("backbone", "heat", "heads")   # the model's parts, in the order of the forward; the losses count as heads


def efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """``F.scaled_dot_product_attention`` as a CUDA GPU runs it for training: the memory-efficient kernel,
    in the autocast dtype (fake tensors would otherwise take the math path, which keeps the probabilities)."""
    if torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        query, key, value = (t.to(dtype) for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]


def estimate(cfg: CfgNode, samples: int, num_classes: int = 171) -> dict[str, int]:
    """Bytes of the training step's state and of the activations kept for backward, by part, for ``samples``
    samples per process, and their total (see the module's docstring)."""
    model = make_model(cfg, num_classes, load_pretrained=False).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_param = 1 if cfg.SOLVER.OPTIMIZER_NAME == "SGD" else 2
    out = {"parameters": 4 * sum(p.numel() for p in model.parameters()), "gradients": 4 * trainable,
           "optimizer state": 4 * per_param * trainable, **{f"activations: {p}": 0 for p in PARTS},
           "one block recomputed in backward": 0}
    part = [PARTS[0]]
    for name in PARTS:   # a ModuleDict (the heads) is never called itself: its members are
        module = getattr(model, name)
        for member in module.values() if isinstance(module, torch.nn.ModuleDict) else [module]:
            member.register_forward_pre_hook(lambda m, a, name=name: part.__setitem__(0, name))
    counted: set[int] = set()
    alive: list[torch.UntypedStorage] = []   # held, so that no counted storage's address is reused

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in counted:
            counted.add(storage._cdata)
            alive.append(storage)
            out[f"activations: {part[0]}"] += storage.nbytes()
        return t

    def checkpoint_keeping_inputs(fn, *args, **kwargs):
        """A checkpointed block: its inputs are kept; what it would keep is counted apart, as the largest
        recomputation in the backward pass."""
        for t in tree_leaves(args):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                keep(t)
        inside: dict[int, int] = {}

        def keep_inside(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage._cdata not in counted:
                inside[storage._cdata] = storage.nbytes()
                alive.append(storage)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep_inside, lambda t: t):
            result = fn(*args)
        out["one block recomputed in backward"] = max(out["one block recomputed in backward"], sum(inside.values()))
        return result

    with ExitStack() as stack:
        for target, value in (("torch.cuda.amp.common.amp_definitely_not_available", lambda: False),
                              ("torch.cuda.is_bf16_supported", lambda *a, **k: True),
                              ("torch.nn.functional.scaled_dot_product_attention", efficient_attention),
                              ("torch.utils.checkpoint.checkpoint", checkpoint_keeping_inputs)):
            stack.enter_context(unittest.mock.patch(target, value))
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        model.to(CUDA)
        counted.update(p.untyped_storage()._cdata for p in model.parameters())   # counted above, in float32
        batch = {m: torch.empty(samples, 3, *cfg.INPUT.SIZE_TRAIN, device=CUDA) for m in model.modalities}
        k = cfg.DATALOADER.NUM_INSTANCE
        pids = torch.arange(samples // k, device=CUDA).repeat_interleave(k)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t))
        stack.enter_context(autocast_context(CUDA, cfg.SOLVER.AMP))
        outputs = model(batch)
        part[0] = "heads"
        make_loss(cfg, num_classes)(outputs, pids)
    out["total"] = sum(out.values())
    return out


def gpu_counts(text: str) -> list[int]:
    """argparse ``type``: comma-separated numbers of GPUs, e.g. ``1,2,4``."""
    return [at_least(1)(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("gpu_memory", __doc__)
    p.add_argument("--config_file", default="", help="YAML config, e.g. configs/RGBNT201/MHCF.yml")
    p.add_argument("--gpus", type=gpu_counts, default=[1],
                   help="numbers of processes sharing SOLVER.IMS_PER_BATCH, comma-separated, one column each "
                        "(default 1)")
    p.add_argument("--num_classes", type=at_least(1), default=171,
                   help="identities of the classifiers (default 171, RGBNT201's)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def run(args: argparse.Namespace) -> dict[int, dict[str, int]]:
    """The estimate for each number of GPUs, printed as a Markdown table in GiB."""
    cfg = load_config(args.config_file or None, [*args.opts, "MODEL.PRETRAIN_PATH", ""])
    for gpus in args.gpus:
        check_batch_split(cfg, gpus)
    figures = {gpus: estimate(cfg, cfg.SOLVER.IMS_PER_BATCH // gpus, args.num_classes) for gpus in args.gpus}
    print(f"Estimated GPU memory per process (GiB), fake CUDA tensors: {args.config_file or 'the defaults'}, "
          f"{cfg.MODEL.NAME} at {cfg.INPUT.SIZE_TRAIN[0]}x{cfg.INPUT.SIZE_TRAIN[1]}, SOLVER.AMP {cfg.SOLVER.AMP}, "
          f"MODEL.GRAD_CKPT {cfg.MODEL.GRAD_CKPT}, SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}")
    print("| | " + " | ".join(f"{g} GPU{'s' if g > 1 else ''} ({cfg.SOLVER.IMS_PER_BATCH // g} samples each)"
                               for g in args.gpus) + " |")
    print("|---|" + "---:|" * len(args.gpus))
    for row in figures[args.gpus[0]]:
        print(f"| {row} | " + " | ".join(f"{figures[g][row] / GIB:.2f}" for g in args.gpus) + " |")
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
