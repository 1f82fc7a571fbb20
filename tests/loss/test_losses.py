import itertools

import pytest
import torch
import torch.nn.functional as F

from loss import batch_hard_triplet, presence_groups, reid_losses


def reference_triplet(x, pids, margin):
    """Loop over anchors: hardest positive / negative by explicit Euclidean distances."""
    terms = []
    for a in range(len(x)):
        d = [float(torch.dist(x[a], x[j]).detach()) for j in range(len(x))]
        d_ap = max(d[j] for j in range(len(x)) if pids[j] == pids[a])
        d_an = min(d[j] for j in range(len(x)) if pids[j] != pids[a])
        terms.append(torch.log1p(torch.exp(torch.tensor(d_ap - d_an))) if margin is None
                     else max(0.0, d_ap - d_an + margin))
    return sum(float(t) for t in terms) / len(terms)


@pytest.mark.parametrize("margin", [None, 0.3, 5.0])
def test_batch_hard_triplet(margin):
    torch.manual_seed(0)
    x = torch.randn(8, 5, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    assert float(batch_hard_triplet(x, pids, margin)) == pytest.approx(reference_triplet(x, pids, margin), rel=1e-5)


@pytest.mark.parametrize("margin", [None, 0.3])
def test_batch_hard_triplet_within_groups(margin):
    """With groups every group is its own batch: the groups' triplet losses weighted by their sizes; an anchor
    whose group holds no negative contributes 0."""
    torch.manual_seed(1)
    x = torch.randn(14, 5, dtype=torch.float64).requires_grad_(True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2] * 2 + [3, 3])
    groups = torch.tensor([7] * 6 + [1] * 6 + [4] * 2)        # the last group: one identity, no negative
    first, second = reference_triplet(x[:6], pids[:6], margin), reference_triplet(x[6:12], pids[6:12], margin)
    expected = (6 * first + 6 * second) / 14
    loss = batch_hard_triplet(x, pids, margin, groups)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(batch_hard_triplet(x.detach(), pids, margin)) != pytest.approx(expected, rel=1e-3)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[12:] == 0)


def test_presence_groups_code_the_kept_modalities():
    present = {"RGB": torch.tensor([1, 1, 0, 1]), "NI": torch.tensor([1, 0, 1, 0]), "TI": torch.tensor([1, 1, 1, 0])}
    assert presence_groups(present, ["RGB", "NI", "TI"]).tolist() == [7, 5, 6, 1]
    assert presence_groups(None, ["RGB", "NI", "TI"]) is None


def test_named_losses_with_label_smoothing_and_weights():
    torch.manual_seed(0)
    logits = {h: torch.randn(4, 3) for h in ("ori", "heat_cls")}
    feats = {h: torch.randn(4, 6) for h in logits}
    pids = torch.tensor([0, 0, 2, 2])
    losses = reid_losses({"logits": logits, "features": feats}, pids, margin=0.5, label_smoothing=0.1,
                         id_weight=2.0, triplet_weight=0.5)
    assert set(losses) == {f"{k}/{h}" for k, h in itertools.product(("id", "triplet"), logits)}
    for h, z in logits.items():
        target = F.one_hot(pids, 3).float() * 0.9 + 0.1 / 3  # smoothed one-hot, written out
        ce = -(target * F.log_softmax(z, 1)).sum(1).mean()
        assert float(losses[f"id/{h}"]) == pytest.approx(2.0 * float(ce), rel=1e-6)
        assert float(losses[f"triplet/{h}"]) == pytest.approx(0.5 * reference_triplet(feats[h], pids, 0.5), rel=1e-5)


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_mining_is_float32_under_bf16_autocast(margin):
    """Post-LayerNorm features share a large common component: their distances are small differences of
    large squared norms, which bf16 rounds away (the loss came out as 16.6 instead of 1.1 before the fix)."""
    gen = torch.Generator().manual_seed(0)
    shared = 10 * torch.randn(256, generator=gen)
    x = shared + 0.3 * torch.randn(32, 256, generator=gen)
    pids = torch.arange(8).repeat_interleave(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = float(batch_hard_triplet(x, pids, margin))
    assert got == pytest.approx(reference_triplet(x.double(), pids, margin), rel=1e-3)
