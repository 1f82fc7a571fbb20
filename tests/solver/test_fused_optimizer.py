import pytest
import torch

from config import load_config
from solver import make_optimizer


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_cpu_optimizers_are_fused_and_step_as_the_formula(name):
    cfg = load_config(None, ["SOLVER.OPTIMIZER_NAME", name, "SOLVER.BASE_LR", "0.1", "SOLVER.BIAS_LR_FACTOR", "1",
                             "SOLVER.WEIGHT_DECAY", "0.01", "SOLVER.WEIGHT_DECAY_BIAS", "0.01",
                             "SOLVER.MOMENTUM", "0.9"])
    layer = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in layer.parameters()]
    opt = make_optimizer(cfg, layer)
    assert all(group["fused"] for group in opt.param_groups)
    grads = [torch.linspace(-1, 1, p.numel()).reshape(p.shape) for p in layer.parameters()]
    for p, g in zip(layer.parameters(), grads):
        p.grad = g.clone()
    opt.step()
    lr, wd = 0.1, 0.01
    for p, p0, g in zip(layer.parameters(), start, grads):
        if name == "SGD":  # first step: the momentum buffer is the (decayed) gradient
            expected = p0 - lr * (g + wd * p0)
        elif name == "Adam":  # first step: bias-corrected m / sqrt(v) = g / (|g| + eps)
            gd = g + wd * p0
            expected = p0 - lr * gd / (gd.abs() + 1e-8)
        else:
            expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-6)
