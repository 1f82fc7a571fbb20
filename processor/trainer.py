"""The training loop of ``train.py``: resumable, distributed (torchrun), optionally mixed precision."""

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from yacs.config import CfgNode

from config import saved_values
from config.validate import resume_conflict
from datasets import check_batch_split, make_dataset, make_train_loader
from loss import make_loss, presence_groups
from model import MHCF, Checkpoint, checkpoint_record, make_model, read_checkpoint
from model.checkpoint import BEST_ON_TEST_KEY, TRAINING_KEYS
from solver import make_optimizer, make_scheduler
from utils.errors import UserError
from utils.files import atomic_save, atomic_write_text
from utils.flops import format_costs, model_costs
from utils.logger import open_held_log_file, setup_logging
from utils.metrics import RankResult
from utils.modalities import NONE, ZERO

from .cli import Terminated, log_mapped_settings
from .device import BatchToDevice, autocast_context, prepare_model, tf32
from .distributed import (
    DistInfo,
    all_gather,
    all_gather_with_grad,
    all_reduce_mean,
    cleanup,
    differing_replicas,
    init_distributed,
    main_process_first,
    run_on_main,
)
from .evaluation import evaluation_features, score_features
from .modal_bias import analyse_modal_bias, log_modal_bias
from .results import BEST_ON_TEST, METRICS, format_results, results_record, write_results
from .state import device_rng_state, remove_stale_temporaries, rng_state, set_rng_state

__all__ = ["Trainer", "parameter_summary", "seed_everything", "train"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parameter_summary(model: MHCF, image_size: Sequence[int]) -> str:
    """Parameters (total / trainable) and forward FLOPs per sample of the backbone, the heat fusion and the
    heads, for images of ``image_size`` (H, W)."""
    return format_costs(model_costs(model, image_size))


def train(cfg: CfgNode) -> dict | None:
    """``train.py``: train, save ``model_final.pth``, evaluate the final epoch, write ``test_results.json``."""
    info = init_distributed(cfg.MODEL.DEVICE)
    try:
        return Trainer(cfg, info).run()
    finally:
        cleanup(info)


class Trainer:
    def __init__(self, cfg: CfgNode, info: DistInfo):
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.out = cfg.OUTPUT_DIR
        resume = self._resume_checkpoint()  # checked before anything is written into the folder
        # a resumed run's train.log (an earlier run's record) is only appended to once start-up went through;
        # a new run's gets its start-up errors too
        setup_logging(self.out, "train.log", info.is_main, hold_file=resume is not None)
        log_mapped_settings(cfg)
        if cfg.TEST.WEIGHT:
            logger.warning("train.py does not read TEST.WEIGHT (%s; test.py evaluates it): to start training from a "
                           "whole checkpoint, set MODEL.INIT_WEIGHTS", cfg.TEST.WEIGHT)
        logger.info("device %s, %d process(es)", self.device, info.world_size)
        check_batch_split(cfg, info.world_size)
        if cfg.SOLVER.RESUME and resume is None:
            logger.warning("SOLVER.RESUME is True but %s does not exist: starting from scratch", self.last_path)
        seed_everything(cfg.SOLVER.SEED)
        with main_process_first(info):  # the first process generates / downloads what the others then read
            self.dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES)
            self.num_classes = self.dataset.num_train_pids
            logger.info("running with config:\n%s", cfg.dump())  # after the dataset's one-line errors, if any
            # a resumed model gets its weights from last.pth: the initial ones are not even read
            self.model = prepare_model(make_model(cfg, self.num_classes, load_pretrained=resume is None), cfg,
                                       self.device)
        logger.info("%s", parameter_summary(self.model, cfg.INPUT.SIZE_TRAIN))
        self.optimizer = make_optimizer(cfg, self.model)
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.SOLVER.AMP == "fp16")
        # SOLVER.EVAL_PERIOD: the best evaluation so far, {"epoch", figures in percent}, chosen on the test set
        self.best: dict | None = None
        self.start_epoch = self._restore(resume) if resume is not None else 0
        self.saved_epoch = self.start_epoch  # the epoch last.pth holds (0: none yet)
        self.train_model = self._wrap(self.model)
        self.loader = make_train_loader(cfg, self.dataset, info.rank, info.world_size,
                                        pin_memory=self.device.type == "cuda")
        self.to_device = BatchToDevice(cfg, self.device)
        # under torchrun, triplets are mined over the features of every process (the global batch)
        self.loss_fn = make_loss(cfg, self.num_classes, gather=all_gather_with_grad if info.distributed else None)
        self.writer = SummaryWriter(os.path.join(self.out, "tensorboard")) if info.is_main else None
        if info.is_main:  # start-up went through: only now is the folder's record of the run written
            open_held_log_file()
            atomic_write_text(os.path.join(self.out, "config.yaml"), cfg.dump())
            for name in remove_stale_temporaries(self.out):
                logger.info("removed %s, left by a run killed while saving", name)

    # --- set-up -----------------------------------------------------------------------------------------
    def _wrap(self, model: MHCF) -> torch.nn.Module:
        if self.info.distributed:
            if self.cfg.MODEL.SYNC_BN and self.device.type != "cuda":
                raise UserError("MODEL.SYNC_BN needs GPUs (torch's SyncBatchNorm does not run on CPU); "
                                "set MODEL.SYNC_BN False")
            if self.cfg.MODEL.SYNC_BN:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            # the graph is the same at every step (every parameter used, no branch on the data): static
            model = DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True, static_graph=True)
        if self.cfg.MODEL.COMPILE:
            model = torch.compile(model)
        return model

    @property
    def last_path(self) -> str:
        return os.path.join(self.out, "last.pth")

    def _resume_checkpoint(self) -> Checkpoint | None:
        """With SOLVER.RESUME, the checkpoint last.pth, checked against the config: a one-line UserError for a
        setting a resume may not change (config/validate.py) or a missing training state."""
        if not self.cfg.SOLVER.RESUME:
            return None
        if not os.path.isfile(self.last_path):
            return None
        checkpoint = read_checkpoint(self.last_path)
        training = checkpoint.training or {}
        missing = [k for k in TRAINING_KEYS if not isinstance(training.get(k), dict)]
        if not isinstance(checkpoint.epoch, int) or missing:
            lacks = ", ".join(missing) if missing else "its epoch"
            raise UserError(f"{self.last_path} cannot be resumed: it lacks {lacks}")
        if checkpoint.config:
            conflict = resume_conflict(self.cfg, saved_values(checkpoint.config), checkpoint.epoch, self.last_path)
            if conflict:
                raise UserError(conflict)
        return checkpoint

    def _restore(self, checkpoint: Checkpoint) -> int:
        """Load the model and training state of ``checkpoint``; the epoch to continue after."""
        checkpoint.load_into(self.model)
        training = checkpoint.training
        try:
            self.optimizer.load_state_dict(training["optimizer"])
            self.scheduler.load_state_dict(training["scheduler"])
            if training["scaler"]:
                self.scaler.load_state_dict(training["scaler"])
            elif self.scaler.is_enabled():  # saved with SOLVER.AMP off or bf16: no scale yet
                logger.info("%s holds no fp16 gradient scale: it starts at its initial value", self.last_path)
            set_rng_state(training["rng"], self.device, self.info.rank, self.info.world_size)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.last_path}: its training state does not fit this run ({reason})") from None
        self.best = training.get(BEST_ON_TEST_KEY)
        logger.info("resumed from %s after epoch %d", self.last_path, checkpoint.epoch)
        return int(checkpoint.epoch)

    def _device_rng_states(self) -> list[torch.Tensor] | None:
        """Every process's accelerator generator state, by rank (None on CPU); a collective."""
        state = device_rng_state(self.device)
        if state is None:
            return None
        return list(all_gather(state.to(self.device)[None], self.info).cpu())

    def _save_last(self, epoch: int, device_states: list[torch.Tensor] | None) -> None:
        state = checkpoint_record(self.model, self.num_classes, self.cfg.dump(), epoch)
        state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     scaler=self.scaler.state_dict(), rng=rng_state(device_states),
                     **{BEST_ON_TEST_KEY: self.best})
        atomic_save(state, self.last_path)
        self.saved_epoch = epoch
        period = self.cfg.SOLVER.CHECKPOINT_PERIOD
        if period and epoch % period == 0:
            atomic_save(checkpoint_record(self.model, self.num_classes, self.cfg.dump(), epoch),
                        os.path.join(self.out, f"model_epoch{epoch:03d}.pth"))

    # --- loop ---------------------------------------------------------------------------------------------
    def run(self) -> dict | None:
        cfg, info = self.cfg, self.info
        max_epochs = cfg.SOLVER.MAX_EPOCHS
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch + 1, max_epochs + 1):
                self.train_epoch(epoch)
                self.scheduler.step()
                period = cfg.SOLVER.EVAL_PERIOD
                if period and epoch % period == 0 and epoch < max_epochs:   # before last.pth, which keeps the best
                    self._evaluate(epoch, progress=False, then=self._log_intermediate)
                device_states = self._device_rng_states()
                run_on_main(info, lambda epoch=epoch, states=device_states: self._save_last(epoch, states))
            if info.distributed:
                differing = differing_replicas(self.model, info)
                if differing:
                    raise RuntimeError(f"the {info.world_size} processes ended with different weights: "
                                       f"{', '.join(differing[:5])}")
                logger.info("parameters identical on all %d processes", info.world_size)
            final = os.path.join(self.out, "model_final.pth")
            run_on_main(info, lambda: self._save_final(final))
            return self._evaluate(max_epochs, then=lambda _, results: self._finish(results, final))
        except KeyboardInterrupt as stop:
            kept = f"{self.last_path} holds epoch {self.saved_epoch}" if self.saved_epoch else "no checkpoint yet"
            logger.warning("stopped by %s in epoch %d; %s; continue with SOLVER.RESUME True",
                           "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C", max(epoch, 1), kept)
            raise

    def _log_intermediate(self, epoch: int, results: dict) -> None:
        """Main process: an evaluation of SOLVER.EVAL_PERIOD, kept if the best so far and logged with it."""
        figures = self._keep_best(epoch, results[NONE])
        logger.info("epoch %d: mAP %.1f%% (evaluated on the test set; best so far epoch %d, %.1f%% -- "
                    "chosen on the test set, not a reportable result)", epoch, figures["mAP"],
                    self.best["epoch"], self.best["mAP"])

    def _keep_best(self, epoch: int, result: RankResult) -> dict[str, float]:
        """Keep ``result`` of ``epoch`` as the best evaluation when its mAP is at least the best's (a tie goes
        to the later epoch, as in the authors' code); returns its figures (percent)."""
        figures = result.as_percent()
        if self.best is None or figures["mAP"] >= self.best["mAP"]:
            self.best = {"epoch": epoch, **figures}
        return figures

    def _save_final(self, final: str) -> None:
        atomic_save(checkpoint_record(self.model, self.num_classes, self.cfg.dump(), self.cfg.SOLVER.MAX_EPOCHS),
                    final)
        logger.info("saved %s", final)

    def _finish(self, results: dict, final: str) -> dict:
        """Main process: the final epoch's results (the reported result) logged and written, with the best
        epoch chosen on the test set when SOLVER.EVAL_PERIOD evaluated others."""
        cfg, max_epochs = self.cfg, self.cfg.SOLVER.MAX_EPOCHS
        record = results_record({ZERO: results}, NONE, extra={"command": "train.py", "dataset": self.dataset.name,
                                                             "weight": final, "epoch": max_epochs,
                                                             "modalities": list(cfg.MODEL.MODALITIES),
                                                             "re_ranking": cfg.TEST.RE_RANKING})
        logger.info("final epoch %d on %s (the reported result):\n%s", max_epochs, self.dataset.name,
                    format_results(results))
        if cfg.SOLVER.EVAL_PERIOD:
            self._keep_best(max_epochs, results[NONE])
            record[BEST_ON_TEST] = self.best
            logger.info("best epoch chosen on the test set (the authors' protocol, not the reported result): "
                        "epoch %d, %s", self.best["epoch"],
                        ", ".join(f"{k} {self.best[k]:.1f}" for k in METRICS))
        logger.info("wrote %s", write_results(self.out, record))
        self.writer.close()
        return record

    def _evaluate(self, epoch: int, then: Callable[[int, dict], T], progress: bool = True) -> T | None:
        """Evaluate on the test set: every process encodes its share of the samples, then the main process
        scores them, logs them to TensorBoard (with the modal-bias report when TEST.MODAL_BIAS) and returns
        ``then(epoch, results)``; None on the other processes."""
        features = evaluation_features(self.cfg, self.model, self.dataset, self.device, progress=progress,
                                       info=self.info)

        def score():
            results = score_features(self.cfg, self.dataset, features, self.device)
            for key, value in results[NONE].as_percent().items():
                self.writer.add_scalar(f"eval/{key}", value, epoch)
            if self.cfg.TEST.MODAL_BIAS:
                report = analyse_modal_bias(self.cfg, self.model, self.dataset, self.device, progress=progress)
                log_modal_bias(self.writer, report, epoch)
            return then(epoch, results)

        return run_on_main(self.info, score)

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimisation step on this process's share of a batch. Returns the step's statistics as
        device tensors (no wait for the device): the loss and its named terms, the ID accuracy of the ``ori``
        head and the heat operators' κ, g and G per edge."""
        batch = self.to_device(batch)
        pids = batch["pid"]
        with tf32(self.cfg.MODEL.TF32), autocast_context(self.device, self.cfg.SOLVER.AMP):
            outputs = self.train_model(batch)
            groups = presence_groups(batch.get("present"), self.model.modalities)  # None: nothing dropped
            groups = None if groups is None else groups.to(self.device, non_blocking=True)
            losses = self.loss_fn(outputs, pids, groups)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        with tf32(self.cfg.MODEL.TF32):
            self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        accuracy = (outputs["logits"]["ori"].argmax(1) == pids).float().mean()
        return {"loss": total.detach(), **{name: v.detach() for name, v in losses.items()}, "acc": accuracy,
                **{f"heat/{key}": v for key, v in outputs["heat_stats"].items()}}

    def train_epoch(self, epoch: int) -> None:
        """One epoch. The statistics stay on the device and reach the host once per SOLVER.LOG_PERIOD (one
        all-reduce over the processes, one copy): then a non-finite loss, on any process, stops the run on
        every process with one line naming its first iteration; last.pth, saved at the end of the previous
        epoch, is intact."""
        cfg, info = self.cfg, self.info
        self.loader.sampler.set_epoch(epoch)
        self.model.train()
        steps = len(self.loader)
        start = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(self.loader, total=steps, desc=f"epoch {epoch}/{cfg.SOLVER.MAX_EPOCHS}",
                   disable=not (info.is_main and sys.stderr.isatty()), leave=False)
        names: list[str] = []
        pending: list[torch.Tensor] = []   # (S,) per step since the last sync, on the device
        sums: list[float] = []
        for it, batch in enumerate(bar, 1):
            stats = self.train_step(batch)
            names = list(stats)
            pending.append(torch.stack([v.float() for v in stats.values()]))
            if it % cfg.SOLVER.LOG_PERIOD and it != steps:
                continue
            rows = all_reduce_mean(torch.stack(pending), info).tolist()   # the sync: (steps since, S)
            first = it - len(pending) + 1
            pending.clear()
            for i, row in enumerate(rows):
                if not math.isfinite(row[0]):
                    last = (f"the last good checkpoint is {self.last_path} (epoch {self.saved_epoch})"
                            if self.saved_epoch else "no checkpoint was written yet")
                    raise UserError(f"non-finite loss ({row[0]}) at epoch {epoch}, iteration {first + i}/{steps}; "
                                    f"{last}; lower SOLVER.BASE_LR or use SOLVER.AMP bf16")
            sums = [sum(column) for column in zip(*rows, *([sums] if sums else []))]
            mean = {name: total / it for name, total in zip(names, sums)}
            bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['acc']:.3f}")
            logger.info("epoch %d iter %d/%d: loss %.3f, acc %.3f, lr %.2e, %.1f samples/s", epoch, it, steps,
                        mean["loss"], mean["acc"], lr, it * cfg.SOLVER.IMS_PER_BATCH / (time.time() - start))
        means = {name: total / steps for name, total in zip(names, sums)}
        if self.writer is not None:
            for name, value in means.items():
                prefix = "train/" if name in ("loss", "acc") else "" if name.startswith("heat/") else "loss/"
                self.writer.add_scalar(prefix + name, value, epoch)
            for key, value in self.model.heat.parameter_stats().items():
                self.writer.add_scalar(f"heat/{key}", value, epoch)
            self.writer.add_scalar("train/lr", lr, epoch)
        logger.info("epoch %d done in %.1f s: %s", epoch, time.time() - start,
                    ", ".join(f"{k} {v:.3f}" for k, v in means.items() if not k.startswith("heat/")))
