"""Run by tests/processor/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU), before the
distributed training run itself (one launch for all of it):

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.processor.ddp_checks CONFIG OUT

1. ``step``: one training step of 2 processes equals one process on the same global batch: loss and updated
   parameters (batch norms in eval mode, so that only the triplet mining can tell the global batch from a
   process's share; SGD, so that an update is proportional to the gradient; no drop path).
2. ``no_heat``: MODEL.HEAT.NUM_CYCLES 0 trains an epoch under DDP.
3. ``one_identity``: a batch leaving a process one identity stops with a one-line error.

Rank 0 writes the findings to ``OUT/ddp_checks.json``; then ``train(CONFIG)`` runs as train.py would.
"""

import contextlib
import io
import json
import os
import sys

import torch

from config import load_config
from processor.distributed import DistInfo, all_gather, all_reduce_mean, init_distributed
from processor.trainer import Trainer, train
from utils.errors import UserError


def _eval_batch_norms(model: torch.nn.Module) -> None:
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _one_step(trainer: Trainer) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(batch, parameters before, step statistics) of the first step of epoch 1; parameters after are the
    model's."""
    _eval_batch_norms(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.loader.sampler.set_epoch(1)
    batch = next(iter(trainer.loader))
    return batch, before, trainer.train_step(batch)


def step_check(config: str, out: str, info: DistInfo) -> dict | None:
    opts = ["MODEL.DROP_PATH", "0.0", "SOLVER.OPTIMIZER_NAME", "SGD", "SOLVER.BASE_LR", "1.0",
            "SOLVER.WARMUP_FACTOR", "0.1", "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.0"]
    ddp = Trainer(load_config(config, [*opts, "OUTPUT_DIR", os.path.join(out, "step_ddp")]), info)
    batch, before, stats = _one_step(ddp)
    loss = all_reduce_mean(stats["loss"], info).item()              # equal shares: the global mean
    pids = all_gather(batch["pid"], info)
    if not info.is_main:
        return None
    single = Trainer(load_config(config, [*opts, "OUTPUT_DIR", os.path.join(out, "step_single")]), DistInfo())
    single.model.load_state_dict(ddp.model.state_dict())
    with torch.no_grad():
        for name, p in single.model.named_parameters():
            p.copy_(before[name])
    global_batch, _, single_stats = _one_step(single)
    update = {n: (p.detach() - before[n]) for n, p in ddp.model.named_parameters()}
    single_update = {n: (p.detach() - before[n]) for n, p in single.model.named_parameters()}
    worst = max(((update[n] - single_update[n]).abs().max() / single_update[n].abs().max().clamp(min=1e-12)).item()
                for n in update if single_update[n].abs().max() > 0)
    return {"same_batch": torch.equal(pids, global_batch["pid"]),
            "loss": loss, "single_loss": single_stats["loss"].item(),
            "triplet": stats["triplet/ori"].item(), "single_triplet": single_stats["triplet/ori"].item(),
            "worst_update_difference": worst,
            "updated": sum(bool(u.abs().max() > 0) for u in single_update.values()), "parameters": len(update)}


def no_heat_check(config: str, out: str, info: DistInfo) -> dict:
    trainer = Trainer(load_config(config, ["MODEL.HEAT.NUM_CYCLES", "0", "OUTPUT_DIR", os.path.join(out, "no_heat")]),
                      info)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_epoch(1)
    trained = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    return {"operators": len(trainer.model.heat.operators),
            "unchanged": [n for n, p in trained if torch.equal(p, before[n])]}


def one_identity_check(config: str, out: str, info: DistInfo) -> str:
    try:
        Trainer(load_config(config, ["SOLVER.IMS_PER_BATCH", "8", "OUTPUT_DIR", os.path.join(out, "one_id")]), info)
    except UserError as exc:
        return str(exc)
    return "no error"


def main(config: str, out: str) -> None:
    info = init_distributed("cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # the checks' logs; train() below logs as train.py does
        findings = {"step": step_check(config, out, info), "no_heat": no_heat_check(config, out, info),
                    "one_identity": one_identity_check(config, out, info)}
    if info.is_main:
        with open(os.path.join(out, "ddp_checks.json"), "w") as f:
            json.dump(findings, f)
    train(load_config(config))


if __name__ == "__main__":
    main(*sys.argv[1:])
