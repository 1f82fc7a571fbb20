"""P x K identity samplers: every batch holds P identities with K instances each.

The epoch order is a pure function of (seed, epoch), so an interrupted run resumes exactly and every
process of a distributed run agrees on it. Each yielded item is ``(dataset index, augmentation seed)``.
"""

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


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
    epoch.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
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
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.num_replicas

    def _local_items(self) -> list[tuple[int, int]]:
        """This rank's ``(index, augmentation seed)`` pairs: its slice of every global batch.

        Seeds are drawn per position of the global epoch order and sliced like the indices, so the sample
        at a given position gets the same augmentation whatever the number of processes.
        """
        batches = identity_batches(self.pids, self.batch_size, self.num_instances, self.seed, self.epoch)
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31 - 1,
                                                                           (len(batches), self.batch_size))
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        return [(index, int(seed)) for batch, batch_seeds in zip(batches, seeds)
                for index, seed in zip(batch[lo:hi], batch_seeds[lo:hi])]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._local_items())

    def __len__(self) -> int:
        batches = identity_batches(self.pids, self.batch_size, self.num_instances, self.seed, self.epoch)
        return len(batches) * self.local_batch_size
