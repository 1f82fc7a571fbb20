"""P x K identity sampling: batch structure, determinism per (seed, epoch), distributed shares, loaders."""

from collections import Counter

import pytest
import torch

from datasets import make_dataset, make_train_loader
from datasets.samplers import IdentitySampler, identity_batches
from tests.conftest import tiny_config
from utils.errors import UserError

# 12 identities with 1 to 13 samples each (ids 3 and 9 have fewer than K = 4), in a shuffled order
PIDS = [pid for pid, n in [(5, 9), (3, 2), (11, 13), (0, 4), (7, 6), (9, 1), (2, 8), (8, 5), (1, 7), (4, 12),
                           (6, 4), (10, 10)] for _ in range(n)]
PIDS = [PIDS[i] for i in torch.randperm(len(PIDS), generator=torch.Generator().manual_seed(0)).tolist()]
P, K = 4, 4


def _check_batch(batch: list[int], p: int, k: int) -> None:
    assert len(batch) == p * k
    groups = [batch[i:i + k] for i in range(0, len(batch), k)]
    group_pids = [{PIDS[i] for i in g} for g in groups]
    assert all(len(g) == 1 for g in group_pids)  # each group of K is one identity
    assert len({next(iter(g)) for g in group_pids}) == p  # P different identities


def test_every_batch_is_p_identities_times_k_instances():
    batches = identity_batches(PIDS, P * K, K, seed=1, epoch=0)
    assert len(batches) >= 3
    for batch in batches:
        _check_batch(batch, P, K)
    used = Counter(i for b in batches for i in b)
    by_pid = Counter(PIDS)
    for index, count in used.items():
        # samples are drawn without replacement within an epoch, except for ids with fewer than K
        assert count == 1 or by_pid[PIDS[index]] < K


def test_identities_with_fewer_than_k_samples_are_padded():
    batches = identity_batches(PIDS, P * K, K, seed=3, epoch=0)
    groups = [b[i:i + K] for b in batches for i in range(0, len(b), K)]
    for pid in (3, 9):  # 2 samples and 1 sample
        own = [g for g in groups if PIDS[g[0]] == pid]
        assert len(own) == 1  # one padded group of K per epoch
        assert len(own[0]) == K
        # its own samples, drawn with replacement (as the reference sampler)
        assert set(own[0]) <= {i for i, p in enumerate(PIDS) if p == pid}


def test_deterministic_for_seed_and_epoch():
    assert identity_batches(PIDS, P * K, K, seed=5, epoch=2) == identity_batches(PIDS, P * K, K, seed=5, epoch=2)
    assert identity_batches(PIDS, P * K, K, seed=5, epoch=2) != identity_batches(PIDS, P * K, K, seed=5, epoch=3)
    assert identity_batches(PIDS, P * K, K, seed=5, epoch=2) != identity_batches(PIDS, P * K, K, seed=6, epoch=2)


def test_sampler_epochs():
    sampler = IdentitySampler(PIDS, P * K, K, seed=7)
    first = list(sampler)
    assert list(sampler) == first and len(sampler) == len(first)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and len(sampler) == len(second)
    assert [i for i, _ in first] == [i for b in identity_batches(PIDS, P * K, K, 7, 0) for i in b]
    assert len({s for _, s in first}) == len(first)  # one augmentation seed per drawn item


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_shares_are_disjoint_slices_of_one_order(world_size):
    single = list(IdentitySampler(PIDS, P * K, K, seed=11))
    shares = []
    for rank in range(world_size):
        sampler = IdentitySampler(PIDS, P * K, K, seed=11, num_replicas=world_size, rank=rank)
        sampler.set_epoch(0)
        shares.append(list(sampler))
        assert len(sampler) == len(shares[-1]) == len(single) // world_size
    local = P * K // world_size
    # rank r holds positions [r*local, (r+1)*local) of every global batch: disjoint, and together, batch by
    # batch, exactly the single-process order with the same augmentation seeds
    rebuilt = [item for b in range(len(single) // (P * K)) for share in shares
               for item in share[b * local:(b + 1) * local]]
    assert rebuilt == single
    for share in shares:  # every local batch holds whole groups of K instances of one identity
        for b in range(0, len(share), local):
            _check_batch([i for i, _ in share[b:b + local]], P // world_size, K)


def test_invalid_batch_shapes():
    with pytest.raises(ValueError, match="not a multiple of num_instances"):
        IdentitySampler(PIDS, 18, 4)
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        IdentitySampler(PIDS, 16, 4, num_replicas=3)


def test_train_loader_config_errors(tiny_root, tmp_path):
    dataset = make_dataset("Synthetic", tiny_root)  # 8 training identities
    with pytest.raises(UserError, match="12 identities per batch, but Synthetic has only 8 training identities"):
        make_train_loader(tiny_config(tiny_root, str(tmp_path), "SOLVER.IMS_PER_BATCH", "48"), dataset)
    for world_size in (3, 4):  # uneven; even, but one identity per process
        with pytest.raises(UserError, match=f"= 4 identities per batch cannot give each of {world_size} processes the "
                                            f"same number, at least 2; use a multiple of {2 * world_size} identities"):
            make_train_loader(tiny_config(tiny_root, str(tmp_path)), dataset, rank=0, world_size=world_size)


def test_train_loader_batches_reproducible_and_split_over_ranks(tiny_root, tmp_path):
    """Same seed -> the same augmented batch; two ranks' batches together are the single-process batch."""
    cfg = tiny_config(tiny_root, str(tmp_path), "INPUT.SYNC_AUG", "True")
    dataset = make_dataset("Synthetic", tiny_root)
    first = next(iter(make_train_loader(cfg, dataset)))
    again = next(iter(make_train_loader(cfg, dataset)))
    assert first["RGB"].shape == (16, 3, 64, 32)
    pids = first["pid"].tolist()
    assert [pids[i] for i in range(0, 16, 4)] == [pids[i] for i in range(3, 16, 4)] and len(set(pids)) == 4
    for key in ("RGB", "NI", "TI", "pid", "index"):
        assert torch.equal(first[key], again[key]), key
    halves = [next(iter(make_train_loader(cfg, dataset, rank=r, world_size=2))) for r in range(2)]
    for key in ("RGB", "NI", "TI", "pid", "camid", "index"):
        assert torch.equal(torch.cat([h[key] for h in halves]), first[key]), key
    for m in ("RGB", "NI", "TI"):  # the erased boxes and the keys of their values too
        assert torch.equal(torch.cat([h["erase"][m] for h in halves]), first["erase"][m]), m

