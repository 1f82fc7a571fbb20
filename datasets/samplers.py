"""P x K identity samplers: every batch holds P identities with K instances each.

The epoch order is a pure function of (seed, epoch), so an interrupted run resumes exactly and every
process of a distributed run agrees on it. Each yielded item is ``(dataset index, augmentation seed)``;
when training for missing modalities (:class:`ModalityDropout`) every sample comes twice,
``(dataset index, augmentation seed, {modality: present})``, complete and as a copy that lost modalities,
drawn as a pure function of (seed, epoch, position) as well.
"""

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from utils.modalities import miss_settings, missing_modalities


@dataclass(frozen=True)
class ModalityDropout:
    """Training for missing modalities. Every sample of a batch also comes as a copy (same images, same
    augmentation). In epoch e (1-based) the copy has lost modalities with probability ``rate(e) = prob *
    min(1, e / ramp_epochs)`` (``prob`` throughout when ``ramp_epochs`` is 0): it keeps one of the proper,
    non-empty subsets of ``modalities``, all equally likely (never none, never all); otherwise it keeps
    them all. The complete samples keep the standard training signal; the copies teach the model to do
    without the lost modalities."""

    modalities: tuple[str, ...]
    prob: float
    ramp_epochs: int = 0

    def rate(self, epoch: int) -> float:
        return self.prob * (min(1.0, epoch / self.ramp_epochs) if self.ramp_epochs > 0 else 1.0)

    def subsets(self) -> np.ndarray:
        """(S, M) bool: the subsets a copy may keep, one per missing-modality setting (``r``, ..., ``nt``)."""
        return np.array([[m not in missing_modalities(s, self.modalities) for m in self.modalities]
                         for s in miss_settings(self.modalities)[1:]], dtype=bool)

    def draw(self, seed: int, epoch: int, shape: tuple[int, ...]) -> np.ndarray:
        """(*shape, M) bool: the modalities the copy of every position of the epoch keeps, from its own random
        stream."""
        rng = np.random.default_rng([seed, epoch, 2])
        drop = rng.random(shape) < self.rate(epoch)
        subsets = self.subsets()
        kept = subsets[rng.integers(0, len(subsets), shape)]                 # (*shape, M)
        return np.where(drop[..., None], kept, True)


def identity_batches(pids: Sequence[int], batch_size: int, num_instances: int, seed: int,
                     epoch: int) -> list[list[int]]:
    """The epoch's batches (lists of dataset indices) for a P x K sampler.

    Every identity's samples are shuffled and cut into groups of K (an identity with fewer than K
    samples is padded by sampling with replacement; a last partial group is dropped, as the reference
    sampler). Batches are filled by drawing P identities at random among those with groups left.
    """
    rng = np.random.default_rng([seed, epoch])
    by_pid: dict[int, list[int]] = defaultdict(list)
    for index, pid in enumerate(pids):
        by_pid[pid].append(index)
    groups: dict[int, list[list[int]]] = {}
    for pid in sorted(by_pid):
        idxs = np.array(by_pid[pid])
        if len(idxs) < num_instances:
            idxs = rng.choice(idxs, size=num_instances, replace=True)
        idxs = rng.permutation(idxs)
        groups[pid] = [idxs[i:i + num_instances].tolist()
                       for i in range(0, len(idxs) - num_instances + 1, num_instances)]
    per_batch = batch_size // num_instances
    available = [pid for pid in sorted(groups) if groups[pid]]
    batches = []
    while len(available) >= per_batch:
        chosen = rng.choice(len(available), size=per_batch, replace=False)
        batch = []
        for c in chosen:
            batch.extend(groups[available[c]].pop())
        batches.append(batch)
        available = [pid for pid in available if groups[pid]]
    return batches


class IdentitySampler(Sampler):
    """P x K sampler; with ``num_replicas > 1`` each rank takes a disjoint share of every global batch.

    A global batch of P identities is split by identity: rank r gets identities r*P/R .. (r+1)*P/R - 1 with
    all their K instances, so every rank's triplets stay well-formed. Call :meth:`set_epoch` before each
    epoch. With ``dropout`` every sample comes twice, complete and as a copy (:class:`ModalityDropout`).
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, dropout: ModalityDropout | None = None):
        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} is not a multiple of num_instances {num_instances}")
        if (batch_size // num_instances) % num_replicas:
            raise ValueError(f"{batch_size // num_instances} identities per batch cannot be split over "
                             f"{num_replicas} processes")
        self.pids = list(pids)
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.dropout = dropout
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.num_replicas

    @property
    def items_per_batch(self) -> int:
        """Items of one local batch: its samples, and as many copies with ``dropout``."""
        return self.local_batch_size * (1 if self.dropout is None else 2)

    def _local_items(self) -> list[tuple]:
        """This rank's items: its slice of every global batch, ``(index, augmentation seed)`` pairs; with
        ``dropout``, each local batch's samples complete and then their copies, ``(index, seed, presence)``.

        Seeds and presence are drawn per position of the global epoch order and sliced like the indices, so
        the sample at a given position gets the same augmentation and copy whatever the number of processes.
        """
        batches = identity_batches(self.pids, self.batch_size, self.num_instances, self.seed, self.epoch)
        shape = (len(batches), self.batch_size)
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31 - 1, shape)
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        local = [[(index, int(seed)) for index, seed in zip(batch[lo:hi], batch_seeds[lo:hi])]
                 for batch, batch_seeds in zip(batches, seeds)]
        if self.dropout is None:
            return [item for batch in local for item in batch]
        modalities = self.dropout.modalities
        present = self.dropout.draw(self.seed, self.epoch, shape)[:, lo:hi]        # (batches, local, M)
        items = []
        for batch, rows in zip(local, present):
            items += [(*item, dict.fromkeys(modalities, True)) for item in batch]
            items += [(*item, dict(zip(modalities, map(bool, row)))) for item, row in zip(batch, rows)]
        return items

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._local_items())

    def __len__(self) -> int:
        batches = identity_batches(self.pids, self.batch_size, self.num_instances, self.seed, self.epoch)
        return len(batches) * self.items_per_batch
