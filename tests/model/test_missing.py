"""Missing modalities in the model: an absent modality neither gives nor takes heat, is never encoded, and its
feature slots follow the documented rule; with nothing missing the computation is the plain one, bit for bit."""

import pytest
import torch

from model import make_model
from model.heat import HeatCycle
from model.mhcf import fill_absent
from tests.conftest import tiny_config

ORDER = ["RGB", "NI", "TI"]


def _tokens(b: int, n: int, c: int, seed: int, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    cls = {m: torch.randn(b, c, generator=gen).requires_grad_(requires_grad) for m in ORDER}
    pat = {m: torch.randn(b, n, c, generator=gen).requires_grad_(requires_grad) for m in ORDER}
    return cls, pat


def _mask(**columns) -> dict[str, torch.Tensor]:
    return {m: torch.tensor(v, dtype=torch.bool) for m, v in columns.items()}


@pytest.mark.parametrize("diffusion", ["dct", "stencil"])
def test_absent_tokens_neither_give_nor_take_heat(diffusion, one_thread):
    """Per-sample masks: the gradient of everything a sample's present modalities output with respect to its
    absent modalities' input tokens is exactly zero (they give no heat), and absent tokens come out as they
    went in (they take none). The present ones do exchange heat (non-zero gradients)."""
    torch.manual_seed(0)
    cycle = HeatCycle(ORDER, 16, (2, 2), num_cycles=2, diffusion=diffusion)
    present = _mask(RGB=[1, 1, 0, 1], NI=[1, 0, 1, 0], TI=[1, 1, 1, 0])
    cls, pat = _tokens(4, 4, 16, 1, requires_grad=True)
    out = cycle(cls, pat, present)
    for m in ORDER:
        absent = ~present[m]
        assert torch.equal(out.cls[m][absent], cls[m][absent]) and torch.equal(out.patches[m][absent], pat[m][absent])
    # everything the present modalities output, summed with random weights
    gen = torch.Generator().manual_seed(2)
    total = sum(((out.cls[m] * torch.randn(out.cls[m].shape, generator=gen)).sum(1)
                 + (out.patches[m] * torch.randn(out.patches[m].shape, generator=gen)).sum((1, 2)))[present[m]].sum()
                for m in ORDER)
    total.backward(retain_graph=True)
    for m in ORDER:
        assert torch.all(cls[m].grad[~present[m]] == 0) and torch.all(pat[m].grad[~present[m]] == 0), m
        assert torch.all(cls[m].grad[present[m]].abs().sum(1) > 0), m
    # sample 2 has NI and TI only: RGB's output is untouched, NI's depends on TI's input (the ring NI <-> TI)
    probe = torch.autograd.grad(out.cls["NI"][2].sum(), pat["TI"])[0]
    assert probe[2].abs().sum() > 0 and probe[[0, 1, 3]].abs().sum() == 0


@pytest.mark.parametrize("diffusion", ["dct", "stencil"])
@pytest.mark.parametrize("kept", [["RGB", "TI"], ["RGB"], ["TI"]])
def test_present_modalities_form_a_shorter_ring(diffusion, kept):
    """A modality missing from every sample: the cycle equals the cycle of a model built for the present
    modalities alone (same operator weights); a lone modality conducts with itself."""
    torch.manual_seed(0)
    full = HeatCycle(ORDER, 16, (2, 2), num_cycles=3, diffusion=diffusion)
    sub = HeatCycle(kept, 16, (2, 2), num_cycles=3, diffusion=diffusion)
    missing = sub.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys
    cls, pat = _tokens(3, 4, 16, 3)
    present = {m: torch.full((3,), m in kept) for m in ORDER}
    got, expected = full(cls, pat, present), sub({m: cls[m] for m in kept}, {m: pat[m] for m in kept})
    for m in kept:
        torch.testing.assert_close(got.cls[m], expected.cls[m], rtol=0, atol=1e-6)
        torch.testing.assert_close(got.patches[m], expected.patches[m], rtol=0, atol=1e-6)
    assert set(got.summary()) == {f"{s}->{t}/{k}" for s, t in zip(ORDER, ORDER[1:] + ORDER[:1])
                                  if s in kept and t in kept for k in ("kappa", "gate", "spatial_gate")}


def test_slot_rule_fills_absent_slots_with_the_mean_of_the_present_ones():
    slots = {"RGB": torch.tensor([[1.0, 2.0], [5.0, 5.0]]), "NI": torch.tensor([[3.0, 6.0], [7.0, 9.0]]),
             "TI": torch.tensor([[8.0, 8.0], [0.0, 1.0]])}
    filled = fill_absent(slots, _mask(RGB=[1, 0], NI=[1, 0], TI=[0, 1]))
    assert torch.equal(filled["TI"][0], torch.tensor([2.0, 4.0]))                     # mean of RGB and NI
    assert torch.equal(filled["RGB"][1], slots["TI"][1]) and torch.equal(filled["NI"][1], slots["TI"][1])
    assert torch.equal(filled["RGB"][0], slots["RGB"][0]) and torch.equal(filled["TI"][1], slots["TI"][1])


def _batch(cfg, b: int = 4, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.INPUT.SIZE_TRAIN
    return {m: torch.randn(b, 3, h, w, generator=gen) for m in ORDER}


@pytest.mark.parametrize("opts", [[], ["MODEL.HEAT.DIFFUSION", "stencil", "MODEL.SHARED_BACKBONE", "False",
                                       "MODEL.DIRECT", "False"]])
def test_absent_images_are_not_encoded(tmp_path, opts, one_thread):
    """Through the whole model: the gradient reaches no absent image, and an absent image's content does not
    change any output; every slot of an absent modality holds the mean of the present ones."""
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"), *opts)
    torch.manual_seed(0)
    model = make_model(cfg, num_classes=5).train()
    present = _mask(RGB=[1, 0, 1, 1], NI=[0, 1, 1, 0], TI=[1, 1, 0, 0])
    batch = {**_batch(cfg), "present": present}
    for m in ORDER:
        batch[m].requires_grad_(True)
    outputs = model(batch)
    sum(v.sum() for v in outputs["logits"].values()).backward()
    for m in ORDER:
        grad = batch[m].grad.abs().sum((1, 2, 3))
        assert torch.all(grad[~present[m]] == 0) and torch.all(grad[present[m]] > 0), m
    model.eval()
    other = {**batch, **{m: torch.where(present[m][:, None, None, None], batch[m], 7.0) for m in ORDER}}
    with torch.no_grad():
        assert torch.equal(model(batch), model(other))
        features, _ = model.fuse(model.encode(batch, present), present)
    dim = model.encoder("RGB").embed_dim
    ori = features["ori"].reshape(4, 3, dim)
    torch.testing.assert_close(ori[0, 1], (ori[0, 0] + ori[0, 2]) / 2)  # sample 0: NI slot = mean(RGB, TI)
    torch.testing.assert_close(ori[3, 1], ori[3, 0])                    # sample 3: RGB alone fills NI, TI
    torch.testing.assert_close(ori[3, 2], ori[3, 0])


@pytest.mark.parametrize("diffusion", ["dct", "stencil"])
def test_nothing_missing_is_the_plain_computation_bit_for_bit(tmp_path, diffusion, one_thread):
    """An all-present mask takes the plain path: the same features, bit for bit (the released operator included),
    in training and in evaluation."""
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"), "MODEL.HEAT.DIFFUSION", diffusion)
    torch.manual_seed(0)
    model = make_model(cfg, num_classes=5)
    batch = _batch(cfg)
    everything = {**batch, "present": {m: torch.ones(4, dtype=torch.bool) for m in ORDER}}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(everything))
    model.train()
    torch.manual_seed(1)
    plain = model(batch)
    torch.manual_seed(1)
    masked = model(everything)
    for name in plain["features"]:
        assert torch.equal(plain["features"][name], masked["features"][name]), name
    assert plain["heat_stats"].keys() == masked["heat_stats"].keys()


def test_gradient_checkpointing_of_the_masked_cycle_gives_the_same_gradients(one_thread, monkeypatch):
    """MODEL.GRAD_CKPT recomputes each heat operator in backward: with modalities missing (a different mask
    per sample) the gradients of every parameter equal those of the plain cycle, bit for bit."""
    torch.manual_seed(0)
    plain = HeatCycle(ORDER, 16, (2, 2), num_cycles=2, diffusion="dct")
    checkpointed = HeatCycle(ORDER, 16, (2, 2), num_cycles=2, diffusion="dct", grad_ckpt=True)
    checkpointed.load_state_dict(plain.state_dict())
    present = _mask(RGB=[1, 1, 0, 1], NI=[1, 0, 1, 0], TI=[1, 1, 1, 0])
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    grads = []
    for cycle in (plain, checkpointed):
        cls, pat = _tokens(4, 4, 16, 1, requires_grad=True)
        out = cycle(cls, pat, present)
        loss = sum(out.cls[m].pow(2).sum() + out.patches[m].pow(2).sum() for m in ORDER)
        loss.backward()
        grads.append({**{n: p.grad for n, p in cycle.named_parameters()},
                      **{f"cls/{m}": cls[m].grad for m in ORDER}, **{f"patches/{m}": pat[m].grad for m in ORDER}})
    assert len(calls) == 2 * 3  # the checkpointed cycle only: 2 cycles x 3 edges, every target present somewhere
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[0].values())
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
