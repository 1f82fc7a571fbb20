"""P x K identity sampling: batch structure, determinism per (seed, epoch), distributed shares, loaders."""

from collections import Counter

import numpy as np
import pytest
import torch

from datasets import make_dataset, make_train_loader
from datasets.samplers import IdentitySampler, ModalityDropout, identity_batches
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


def test_modality_dropout_schedule_and_draws():
    dropout = ModalityDropout(("RGB", "NI", "TI"), 0.6, ramp_epochs=4)
    assert [dropout.rate(e) for e in (1, 2, 4, 9)] == pytest.approx([0.15, 0.3, 0.6, 0.6])
    assert ModalityDropout(("RGB", "NI", "TI"), 0.6).rate(1) == 0.6
    # the kept subsets of the settings r, n, t, rn, rt, nt
    assert dropout.subsets().tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]
    present = dropout.draw(seed=3, epoch=2, shape=(300, 40))                      # (300, 40, 3)
    assert np.array_equal(present, dropout.draw(seed=3, epoch=2, shape=(300, 40)))
    assert not np.array_equal(present, dropout.draw(seed=3, epoch=3, shape=(300, 40)))
    rows = present.reshape(-1, 3)
    assert rows.any(1).all()                                          # never every modality lost
    lost = ~rows.all(1)
    assert lost.mean() == pytest.approx(0.3, abs=0.015)               # rate(2); 4.5 binomial std
    kept = Counter(map(tuple, rows[lost].astype(int).tolist()))
    assert set(kept) == set(map(tuple, dropout.subsets().astype(int).tolist()))
    assert all(abs(n / lost.sum() - 1 / 6) < 0.015 for n in kept.values())  # the six subsets alike


@pytest.mark.parametrize("world_size", [1, 2])
def test_dropout_adds_a_copy_per_sample_and_follows_positions(world_size):
    """Every local batch: its samples complete (the order and augmentation seeds of training without
    dropout), then the same items again as copies with the presence drawn for their global positions."""
    dropout = ModalityDropout(("RGB", "NI", "TI"), 1.0)
    plain = list(IdentitySampler(PIDS, P * K, K, seed=11))
    expected = dropout.draw(11, 0, (len(plain) // (P * K), P * K))               # (batches, P * K, 3)
    local = P * K // world_size
    for rank in range(world_size):
        sampler = IdentitySampler(PIDS, P * K, K, seed=11, num_replicas=world_size, rank=rank, dropout=dropout)
        items = list(sampler)
        assert len(items) == len(sampler) == 2 * len(plain) // world_size and sampler.items_per_batch == 2 * local
        for b in range(len(plain) // (P * K)):
            batch = items[2 * local * b:2 * local * (b + 1)]
            originals, copies = batch[:local], batch[local:]
            mine = plain[P * K * b + rank * local:P * K * b + (rank + 1) * local]
            assert [item[:2] for item in originals] == mine == [item[:2] for item in copies]
            assert all(list(item[2]) == ["RGB", "NI", "TI"] and all(item[2].values()) for item in originals)
            assert [list(item[2].values()) for item in copies] == expected[b, rank * local:(rank + 1) * local].tolist()
    assert not expected.reshape(-1, 3).all(1).any()  # with probability 1 every copy lost something


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
    assert "present" not in first


def test_train_loader_carries_presence_with_modality_dropout(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path), "INPUT.MODALITY_DROPOUT", "1.0")
    dataset = make_dataset("Synthetic", tiny_root)
    loader = make_train_loader(cfg, dataset)
    batch = next(iter(loader))
    present = torch.stack([batch["present"][m] for m in ("RGB", "NI", "TI")], 1)   # (32, 3)
    assert present.dtype == torch.bool and present.shape == (32, 3)
    assert present[:16].all() and present[16:].any(1).all() and not present[16:].all(1).any()
    items = list(loader.sampler)[:32]
    assert present.tolist() == [list(item[2].values()) for item in items]
    for key in ("RGB", "NI", "TI", "index", "pid"):  # the copies: the same samples, augmented alike
        assert torch.equal(batch[key][16:], batch[key][:16]), key
    plain = next(iter(make_train_loader(tiny_config(tiny_root, str(tmp_path)), dataset)))
    for key in ("RGB", "NI", "TI", "index"):  # the complete half is the batch of training without copies
        assert torch.equal(batch[key][:16], plain[key]), key
