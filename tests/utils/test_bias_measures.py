"""Modal-bias computations on hand-made inputs with known answers."""

import math

import numpy as np
import pytest
import torch

from utils.bias_measures import (
    RunningMean,
    energy_shares,
    flatten_scalars,
    kept_modalities,
    mean_spatial_gates,
    modality_gap,
    patch_change,
    ranked_lists,
    retrieval_by_modalities,
    retrieval_summary,
    variance_shares,
)
from utils.metrics import RankResult

MODS = ["RGB", "NI", "TI"]


def test_gap_removes_the_common_component():
    # a large offset c shared by every token; around it NI copies RGB and TI mirrors it, and the three
    # modalities have the same centroid (c)
    c = torch.tensor([0.0, 0.0, 0.0, 100.0])
    u = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    gap = modality_gap({"RGB": c + u, "NI": c + u, "TI": c - u})
    assert gap["sample"]["RGB-NI"] == pytest.approx(0.0, abs=1e-12)
    assert gap["sample"]["RGB-TI"] == pytest.approx(2.0)
    assert gap["sample"]["NI-TI"] == pytest.approx(2.0)
    assert gap["sample"]["mean"] == pytest.approx(4 / 3)
    assert gap["centroid"] == pytest.approx({"RGB-NI": 0.0, "RGB-TI": 0.0, "NI-TI": 0.0, "mean": 0.0}, abs=1e-12)
    assert gap["modality_share"] == pytest.approx(0.0, abs=1e-12)


def test_gap_of_modality_offsets():
    # RGB = c + 3 e1 + v_i, NI = c - 3 e1 + v_i, TI = c + v_i with v_i = ±e2: within-modality spread 1,
    # centroids 6, 3 and 3 apart; variance 6 between (9 + 9 + 0) / 3 and 1 within -> share 6/7
    c = torch.tensor([5.0, 0.0, 40.0])
    e1, v = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    gap = modality_gap({"RGB": c + 3 * e1 + v, "NI": c - 3 * e1 + v, "TI": c + v})
    assert gap["centroid"] == pytest.approx({"RGB-NI": 6.0, "RGB-TI": 3.0, "NI-TI": 3.0, "mean": 4.0})
    assert gap["modality_share"] == pytest.approx(6 / 7)
    # (3 e1 + v).(-3 e1 + v) / 10 = -0.8; (±3 e1 + v).v / sqrt(10) = 1 / sqrt(10)
    assert gap["sample"]["RGB-NI"] == pytest.approx(1.8)
    assert gap["sample"]["RGB-TI"] == pytest.approx(1 - 1 / math.sqrt(10))
    assert gap["sample"]["NI-TI"] == pytest.approx(1 - 1 / math.sqrt(10))


def test_gap_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(23, 8, generator=g) * (i + 1) + i for i, m in enumerate(MODS)}
    gap = modality_gap(feats)
    x = {m: f.numpy().astype(np.float64) for m, f in feats.items()}
    mu = np.concatenate(list(x.values())).mean(0)
    spread = np.sqrt(np.mean([np.sum((v - v.mean(0)) ** 2, axis=1).mean() for v in x.values()]))
    for a, b in (("RGB", "NI"), ("RGB", "TI"), ("NI", "TI")):
        expected = np.mean([1 - (x[a][i] - mu) @ (x[b][i] - mu)
                            / np.linalg.norm(x[a][i] - mu) / np.linalg.norm(x[b][i] - mu) for i in range(23)])
        assert gap["sample"][f"{a}-{b}"] == pytest.approx(expected, rel=1e-9)
        assert gap["centroid"][f"{a}-{b}"] == pytest.approx(np.linalg.norm(x[a].mean(0) - x[b].mean(0)) / spread,
                                                            rel=1e-9)
    total = np.mean(np.sum((np.concatenate(list(x.values())) - mu) ** 2, axis=1))
    between = np.mean([np.sum((v.mean(0) - mu) ** 2) for v in x.values()])
    assert gap["modality_share"] == pytest.approx(between / total, rel=1e-9)


def test_energy_shares_by_hand():
    # 2 parts x 3 modalities x 2 channels. Energies: RGB 25 + 0 = 25, NI 0 + 50 = 50, TI 25 + 0 = 25.
    part0 = [3.0, 4.0, 0.0, 0.0, 0.0, 5.0]
    part1 = [0.0, 0.0, 5.0, 5.0, 0.0, 0.0]
    feature = torch.tensor([part0 + part1, [1.0] * 12])
    shares = energy_shares(feature, num_modalities=3, num_parts=2)
    assert shares[0].tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert shares[1].tolist() == pytest.approx([1 / 3] * 3)
    # one part: the blocks are consecutive thirds
    one = energy_shares(torch.tensor([[1.0, 0.0, 2.0]]), num_modalities=3)
    assert one[0].tolist() == pytest.approx([0.2, 0.0, 0.8])
    with pytest.raises(ValueError):
        energy_shares(torch.ones(1, 10), num_modalities=3)


def test_variance_shares_by_hand():
    # one channel per modality: RGB {1, 3} variance 1, NI {5, 5} variance 0, TI {0, 2 sqrt 3} variance 3
    feature = torch.tensor([[1.0, 5.0, 0.0], [3.0, 5.0, 2 * math.sqrt(3)]])
    assert variance_shares(feature, 3).tolist() == pytest.approx([0.25, 0.0, 0.75])
    # two parts: the second part's blocks add to the same modalities; a constant offset changes nothing
    both = torch.cat([feature, feature * 0 + 7.0, feature], dim=1)[:, :6] + 100.0
    assert variance_shares(both, 3, num_parts=2).tolist() == pytest.approx([0.25, 0.0, 0.75])
    with pytest.raises(ValueError):
        variance_shares(torch.ones(2, 4), 3)


def test_running_mean_weights_by_samples():
    mean = RunningMean()
    mean.update({"a": torch.tensor([1.0, 2.0, 3.0]), "b": 4.0}, 3)
    mean.update({"a": 10.0, "b": torch.tensor([0.0])}, 1)
    out = mean.compute()
    assert out["a"] == pytest.approx(16 / 4)
    assert out["b"] == pytest.approx(12 / 4)


def _result(mAP: float) -> RankResult:
    return RankResult(mAP=mAP, mINP=mAP / 2, cmc=np.full(50, mAP), num_valid=10)


def test_retrieval_by_modalities_and_summary():
    maps = {"none": 0.9, "r": 0.7, "n": 0.85, "t": 0.8, "rn": 0.6, "rt": 0.3, "nt": 0.5}
    missing = {"none": [], "r": ["RGB"], "n": ["NI"], "t": ["TI"], "rn": ["RGB", "NI"], "rt": ["RGB", "TI"],
               "nt": ["NI", "TI"]}
    by = retrieval_by_modalities({s: _result(v) for s, v in maps.items()}, missing, MODS)
    assert by["RGB+NI+TI"]["mAP"] == pytest.approx(90.0)
    assert by["TI"]["mAP"] == pytest.approx(60.0)   # RGB and NI missing
    assert by["NI"]["mAP"] == pytest.approx(30.0)   # RGB and TI missing
    assert by["NI+TI"]["Rank-1"] == pytest.approx(70.0)
    summary = retrieval_summary(by, MODS)
    assert summary["single"] == pytest.approx({"RGB": 50.0, "NI": 30.0, "TI": 60.0})
    assert summary["best_single"] == "TI" and summary["worst_single"] == "NI"
    assert summary["single_spread"] == pytest.approx(30.0)
    assert summary["fusion_gain"] == pytest.approx(30.0)
    assert summary["drop_without"] == pytest.approx({"RGB": 20.0, "NI": 5.0, "TI": 10.0})
    assert kept_modalities(["NI"], MODS) == "RGB+TI"


def test_ranked_lists_apply_the_protocol():
    # query pid 1 camera 0; gallery items 0 and 4 share pid and camera -> removed (camera rule)
    g_pids, g_cams = [1, 1, 2, 2, 1, 3], [0, 1, 0, 1, 0, 2]
    dist = np.array([[0.0, 0.5, 0.2, 0.5, 0.1, 0.9]])
    out = ranked_lists(dist, [1], g_pids, [0], g_cams, topk=3)[0]
    assert out["index"] == [2, 1, 3]          # 0.2, then 0.5 twice in gallery order
    assert out["match"] == [False, True, False]
    assert out["distance"] == pytest.approx([0.2, 0.5, 0.5])
    # scene rule: same pid and scene removed, cameras ignored
    out = ranked_lists(dist, [1], g_pids, [0], g_cams, q_sceneids=[7], g_sceneids=[7, 8, 7, 7, 8, 7], topk=10)[0]
    assert out["index"] == [4, 2, 1, 3, 5]
    assert out["match"] == [True, False, True, False, False]


def test_patch_change_on_the_grid():
    before = torch.zeros(2, 6, 4)
    after = torch.zeros(2, 6, 4)
    after[0, :, 0] = torch.arange(6.0)          # patch i moved by i
    after[1, 5] = torch.tensor([3.0, 4.0, 0.0, 0.0])
    maps = patch_change(before, after, (3, 2))
    assert maps.shape == (2, 3, 2)
    assert maps[0].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]   # row-major token order
    assert maps[1, 2, 1].item() == pytest.approx(5.0)
    assert maps[1].sum().item() == pytest.approx(5.0)


def test_mean_spatial_gates_average_the_cycles_into_each_target():
    def g(v: float) -> dict:
        return {"spatial_gate": torch.full((1, 4), v), "kappa": torch.ones(1), "gate": torch.ones(1)}

    stats = {(0, "RGB", "NI"): g(0.2), (0, "NI", "TI"): g(0.4), (0, "TI", "RGB"): g(0.6),
             (1, "RGB", "NI"): g(0.4), (1, "NI", "TI"): g(0.8), (1, "TI", "RGB"): g(1.0)}
    gates = mean_spatial_gates(stats, (2, 2))
    assert gates["NI"].shape == (1, 2, 2)
    assert gates["NI"].flatten().tolist() == pytest.approx([0.3] * 4)
    assert gates["TI"].flatten().tolist() == pytest.approx([0.6] * 4)
    assert gates["RGB"].flatten().tolist() == pytest.approx([0.8] * 4)


def test_flatten_scalars():
    tree = {"a": {"b": 1, "c": {"d": 2.5}}, "name": "x", "flag": True, "e": math.pi}
    assert flatten_scalars(tree) == {"a/b": 1.0, "a/c/d": 2.5, "e": math.pi}
