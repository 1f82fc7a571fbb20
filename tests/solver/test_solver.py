import io
import math
import os

import pytest
import torch

from config import load_config
from solver import Schedule, make_optimizer, make_scheduler
from tests.conftest import REPO

RGBNT201 = os.path.join(REPO, "configs", "RGBNT201", "MHCF_released.yml")

# The authors' learning rates (weights / biases) of the RGBNT201 recipe, printed to the digits shown
AUTHORS_TABLE = {1: (7.28e-6, 1.428e-5), 2: (1.421e-5, 2.821e-5), 5: (3.3669e-5, 6.7337e-5),
                 6: (3.3095e-5, 6.6187e-5), 20: (1.75175e-5, 3.50175e-5), 39: (8.889e-8, 1.4284e-7),
                 40: (3.5e-8, 3.5e-8)}


def timm_cosine_lr(t: int, base_value: float, *, lr_min: float, warmup_lr_init: float, warmup_t: int,
                   t_initial: int) -> float:
    """timm's ``CosineLRScheduler._get_lr`` (t_mul 1, decay_rate 0.1, cycle_limit 1, no warm-up prefix, no
    noise) for one parameter group, transcribed independently of solver/."""
    if t < warmup_t:
        return warmup_lr_init + t * (base_value - warmup_lr_init) / warmup_t
    i = t // t_initial
    t_curr = t - t_initial * i
    if i < 1:
        return lr_min + 0.5 * (base_value - lr_min) * (1 + math.cos(math.pi * t_curr / t_initial))
    return lr_min


def authors_lrs(epoch: int, base_lr: float = 3.5e-5, bias_factor: float = 2.0) -> tuple[float, float]:
    """The authors' rates of training epoch ``epoch``: their scheduler is stepped with the epoch number
    (1..40) before the epoch; warmup_lr_init = 0.01 x BASE_LR and lr_min = 0.001 x BASE_LR for every group."""
    kw = dict(lr_min=0.001 * base_lr, warmup_lr_init=0.01 * base_lr, warmup_t=5, t_initial=40)
    return timm_cosine_lr(epoch, base_lr, **kw), timm_cosine_lr(epoch, base_lr * bias_factor, **kw)


def _significant(x: float, digits: int) -> float:
    return float(f"{x:.{digits - 1}e}")


def test_transcription_gives_the_authors_table():
    for epoch, printed in AUTHORS_TABLE.items():
        for value, shown in zip(authors_lrs(epoch), printed):
            digits = len(f"{shown:e}".split("e")[0].rstrip("0").replace(".", ""))
            assert _significant(value, digits) == shown, (epoch, value, shown)


def _rgbnt201_run(resume_at: int | None = None) -> list[list[float]]:
    """The rate of every parameter group at the start of each training epoch 1..MAX_EPOCHS, from the real
    optimizer and scheduler of the RGBNT201 recipe, stepped as the trainer does (scheduler after each
    epoch); ``resume_at``: optimizer and scheduler rebuilt before that epoch from their saved states."""
    cfg = load_config(RGBNT201)

    def build():
        model = torch.nn.Linear(3, 2)
        optimizer = make_optimizer(cfg, model)
        return model, optimizer, make_scheduler(cfg, optimizer)

    model, optimizer, scheduler = build()
    rates = []
    for epoch in range(1, cfg.SOLVER.MAX_EPOCHS + 1):
        if epoch == resume_at:
            buffer = io.BytesIO()
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
            buffer.seek(0)
            state = torch.load(buffer, weights_only=True)
            model, optimizer, scheduler = build()
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        rates.append([group["lr"] for group in optimizer.param_groups])
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return rates


@pytest.mark.parametrize("resume_at", [None, 7])
def test_rgbnt201_recipe_trains_at_the_authors_rates(resume_at):
    rates = _rgbnt201_run(resume_at)
    assert len(rates) == 40
    for epoch, (weights, biases) in enumerate(rates, 1):
        expected = authors_lrs(epoch)
        assert weights == pytest.approx(expected[0], rel=1e-9, abs=0), epoch
        assert biases == pytest.approx(expected[1], rel=1e-9, abs=0), epoch


def test_schedule_variants():
    """The other settings of the keys: relative warm-up start and floor, epoch 1 at t = 0, multistep."""
    kw = dict(scheduler="cosine", base_lr=1.0, max_epochs=40, warmup_epochs=5, warmup_factor=0.01,
              cosine_min_factor=0.002)
    group = Schedule(**kw, warmup_of="group", cosine_min_of="group")
    assert group.lr(0, 2.0) == pytest.approx(0.02)
    assert group.lr(4, 2.0) == pytest.approx(2 * (0.01 + 0.99 * 4 / 5))
    assert group.lr(5, 2.0) == pytest.approx(2 * (0.002 + 0.499 * (1 + math.cos(math.pi * 5 / 40))))
    assert group.lr(40, 2.0) == group.lr(45, 2.0) == pytest.approx(0.004)
    base = Schedule(**kw, warmup_of="base", cosine_min_of="base")
    assert base.lr(0, 2.0) == pytest.approx(0.01) and base.lr(40, 2.0) == pytest.approx(0.002)
    values = [base.lr(t, 2.0) for t in range(5, 41)]
    assert all(a > b for a, b in zip(values, values[1:]))
    multistep = Schedule(scheduler="multistep", base_lr=1.0, max_epochs=60, warmup_epochs=0, warmup_factor=0.1,
                         warmup_of="base", cosine_min_factor=0.0, cosine_min_of="base", steps=(20, 50), gamma=0.1)
    assert [multistep.lr(t, 1.0) for t in (0, 19, 20, 49, 50)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_a_zero_learning_rate_stays_zero():
    """SOLVER.BASE_LR 0 (allowed: it keeps the initial weights) gives every group rate 0 in every epoch."""
    cfg = load_config(RGBNT201, ["SOLVER.BASE_LR", "0"])
    optimizer = make_optimizer(cfg, torch.nn.Linear(3, 2))
    scheduler = make_scheduler(cfg, optimizer)
    for _ in range(3):
        assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0]
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name, cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW),
                                       ("SGD", torch.optim.SGD)])
def test_optimizer_groups(name, cls):
    cfg = load_config(None, ["SOLVER.OPTIMIZER_NAME", name, "SOLVER.BASE_LR", "0.01", "SOLVER.BIAS_LR_FACTOR", "2",
                             "SOLVER.WEIGHT_DECAY", "0.1", "SOLVER.WEIGHT_DECAY_BIAS", "0.0",
                             "SOLVER.SCHEDULE_START", "0", "SOLVER.WARMUP_FACTOR_OF", "group"])
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].bias.requires_grad_(False)
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, cls)
    weights, biases = opt.param_groups
    assert {id(p) for p in weights["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert {id(p) for p in biases["params"]} == {id(model[0].bias)}
    assert (weights["lr"], weights["weight_decay"], biases["lr"], biases["weight_decay"]) == (0.01, 0.1, 0.02, 0.0)
    sched = make_scheduler(cfg, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.01)  # epoch 1 at t = 0: the warm-up's start
    opt.step()  # no gradients: a no-op that keeps the scheduler call order
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.02 * (0.01 + 0.99 / 5))
