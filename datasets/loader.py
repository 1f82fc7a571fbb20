"""Torch datasets and loaders over benchmark records."""

import logging
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from utils.errors import UserError

from .bases import MultiModalDataset, Sample
from .samplers import IdentitySampler, ModalityDropout
from .transforms import MultiModalTransform, build_image_transform

logger = logging.getLogger(__name__)


@contextmanager
def _seeded(seed: int):
    """Run the block with python's and torch's generators seeded by ``seed``, then restore them.

    Augmentation then depends only on the item's seed, not on the worker that draws it or on what ran
    before, which makes resumed runs bit-identical.
    """
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: the transforms draw no CUDA numbers
    try:
        yield
    finally:
        random.setstate(py_state)
        torch.set_rng_state(torch_state)


class TransformedSamples(Dataset):
    """Items are dicts ``{modality: 3xHxW uint8 tensor, "pid", "camid", "sceneid", "index"}``, plus ``"erase":
    {modality: box}`` when the transform erases (training; :mod:`datasets.transforms`).

    Indexed by an int, or by ``(index, seed)`` pairs from :class:`IdentitySampler` (seeded augmentation), or
    ``(index, seed, {modality: present})`` when training for missing modalities: the item carries the
    presence as ``"present"`` (the absent modalities' images stay in the item, untouched: the model leaves
    them out).
    With ``cache=True`` every sample is decoded once, up front, and kept in memory (shared with forked
    workers).
    """

    def __init__(self, dataset: MultiModalDataset, samples: Sequence[Sample], transform: MultiModalTransform,
                 cache: bool = False):
        self.dataset = dataset
        self.samples = list(samples)
        self.transform = transform
        self.cache: list[dict[str, Image.Image]] | None = None
        if cache:
            start = time.time()
            self.cache = [dataset.read(s) for s in self.samples]
            logger.info("cached %d decoded samples in %.1f s", len(self.cache), time.time() - start)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple) -> dict:
        index, seed, *present = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        images = self.cache[index] if self.cache is not None else self.dataset.read(sample)
        if seed is None:
            tensors = self.transform(images)
        else:
            with _seeded(seed):
                tensors = self.transform(images)
        out = {**tensors, "pid": sample.pid, "camid": sample.camid, "sceneid": sample.sceneid, "index": index}
        return {**out, "present": present[0]} if present else out


def _loader_kwargs(cfg: CfgNode, pin_memory: bool) -> dict:
    """Worker settings, and the loader's own generator: a DataLoader draws its workers' base seed at every
    iterator creation, from the global torch generator unless given one, which would shift the model's
    random stream (dropout, drop path) differently in a resumed run than in an uninterrupted one."""
    workers = cfg.DATALOADER.NUM_WORKERS
    return {"num_workers": workers, "pin_memory": pin_memory and cfg.DATALOADER.PIN_MEMORY,
            "persistent_workers": workers > 0 and cfg.DATALOADER.PERSISTENT_WORKERS,
            "generator": torch.Generator().manual_seed(cfg.SOLVER.SEED)}


def train_transform(cfg: CfgNode) -> MultiModalTransform:
    """The training transform of every modality (the device finishes it: :class:`processor.device.BatchToDevice`)."""
    transform = build_image_transform(True, cfg.INPUT.SIZE_TRAIN, flip_prob=cfg.INPUT.FLIP_PROB,
                                      padding=cfg.INPUT.PADDING)
    return MultiModalTransform(transform, sync=cfg.INPUT.SYNC_AUG, erase_prob=cfg.INPUT.RE_PROB)


def check_batch_split(cfg: CfgNode, world_size: int) -> None:
    """UserError unless the P identities of a batch split evenly over ``world_size`` processes, at least 2
    each (a process's batch norms and ID losses see its identities only)."""
    batch_size, instances = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    identities = batch_size // instances
    if identities % world_size or identities < 2 * world_size:
        raise UserError(f"SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {batch_size} / {instances} = {identities} "
                        f"identities per batch cannot give each of {world_size} processes the same number, at least "
                        f"2; use a multiple of {2 * world_size} identities (e.g. SOLVER.IMS_PER_BATCH "
                        f"{2 * world_size * instances})")


def make_train_loader(cfg: CfgNode, dataset: MultiModalDataset, rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> DataLoader:
    """P x K loader over ``dataset.train``; each of ``world_size`` processes gets its share of every batch."""
    check_batch_split(cfg, world_size)
    batch_size, instances = cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    identities = batch_size // instances
    if identities > dataset.num_train_pids:
        raise UserError(f"SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {identities} identities per batch, "
                        f"but {dataset.name} has only {dataset.num_train_pids} training identities")
    data = TransformedSamples(dataset, dataset.train, train_transform(cfg), cache=cfg.DATALOADER.CACHE)
    dropout = None
    if cfg.INPUT.MODALITY_DROPOUT > 0:
        dropout = ModalityDropout(tuple(cfg.MODEL.MODALITIES), cfg.INPUT.MODALITY_DROPOUT,
                                  cfg.INPUT.MODALITY_DROPOUT_RAMP)
        logger.info("training for missing modalities: every sample also comes as a copy that lost modalities "
                    "with probability %.2f%s", dropout.prob,
                    f" (reached after a linear ramp of {dropout.ramp_epochs} epochs)" if dropout.ramp_epochs else "")
    sampler = IdentitySampler([s.pid for s in dataset.train], batch_size, instances, seed=cfg.SOLVER.SEED,
                              num_replicas=world_size, rank=rank, dropout=dropout)
    return DataLoader(data, batch_size=sampler.items_per_batch, sampler=sampler, drop_last=True,
                      **_loader_kwargs(cfg, pin_memory))


def make_test_loader(cfg: CfgNode, dataset: MultiModalDataset, samples: Sequence[Sample],
                     pin_memory: bool = False) -> DataLoader:
    """Sequential loader over ``samples`` with the test transform (uint8 images)."""
    transform = build_image_transform(False, cfg.INPUT.SIZE_TEST)
    data = TransformedSamples(dataset, samples, MultiModalTransform(transform), cache=cfg.DATALOADER.CACHE)
    return DataLoader(data, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, **_loader_kwargs(cfg, pin_memory))
