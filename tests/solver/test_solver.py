import math

import pytest
import torch

from config import load_config
from solver import lr_factor, make_optimizer, make_scheduler


def test_cosine_schedule_with_warmup():
    kw = dict(scheduler="cosine", max_epochs=40, warmup_epochs=5, warmup_factor=0.01, cosine_min_factor=0.002)
    assert lr_factor(0, **kw) == pytest.approx(0.01)
    assert lr_factor(4, **kw) == pytest.approx(0.01 + 0.99 * 4 / 5)
    assert lr_factor(5, **kw) == pytest.approx(0.002 + 0.499 * (1 + math.cos(math.pi * 5 / 40)))
    assert lr_factor(40, **kw) == pytest.approx(0.002)
    values = [lr_factor(e, **kw) for e in range(5, 41)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_multistep_schedule():
    kw = dict(scheduler="multistep", max_epochs=60, warmup_epochs=0, warmup_factor=0.1, steps=(20, 50), gamma=0.1)
    assert [lr_factor(e, **kw) for e in (0, 19, 20, 49, 50)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize("name, cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW),
                                       ("SGD", torch.optim.SGD)])
def test_optimizer_groups(name, cls):
    cfg = load_config(None, ["SOLVER.OPTIMIZER_NAME", name, "SOLVER.BASE_LR", "0.01", "SOLVER.BIAS_LR_FACTOR", "2",
                             "SOLVER.WEIGHT_DECAY", "0.1", "SOLVER.WEIGHT_DECAY_BIAS", "0.0"])
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].bias.requires_grad_(False)
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, cls)
    weights, biases = opt.param_groups
    assert {id(p) for p in weights["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert {id(p) for p in biases["params"]} == {id(model[0].bias)}
    assert (weights["lr"], weights["weight_decay"], biases["lr"], biases["weight_decay"]) == (0.01, 0.1, 0.02, 0.0)
    sched = make_scheduler(cfg, opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.01)  # warm-up starts at WARMUP_FACTOR
    opt.step()  # no gradients: a no-op that keeps the scheduler call order
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.02 * (0.01 + 0.99 / 5))
