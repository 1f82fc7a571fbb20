import torch
import torch.nn.functional as F

from model import make_model
from tests.conftest import tiny_config
from utils.flops import count_flops, format_costs, model_costs


def test_count_flops_of_linear_convolution_and_cpu_attention():
    x = torch.randn(5, 7)
    assert count_flops(F.linear, x, torch.randn(3, 7))[0] == 2 * 5 * 7 * 3
    images = torch.randn(2, 3, 16, 8)
    assert count_flops(F.conv2d, images, torch.randn(4, 3, 4, 4), stride=4)[0] == 2 * (2 * 4 * 2) * 4 * (3 * 4 * 4)
    q, k, v = (torch.randn(2, 3, 6, 8, requires_grad=True) for _ in range(3))
    flops, out = count_flops(F.scaled_dot_product_attention, q, k, v)
    assert flops == 2 * (2 * 2 * 3 * 6 * 6 * 8)  # Q K^T and A V
    assert count_flops(lambda: out.sum().backward())[0] == 5 * (2 * 2 * 3 * 6 * 6 * 8)  # as torch counts GPU kernels


def _vit_forward_flops(tokens: int, dim: int, depth: int, patch: int) -> int:
    """One image through a CLIP ViT: patch projection, then per block qkv, attention, proj and the MLP."""
    patches = tokens - 1
    embed = 2 * patches * dim * 3 * patch * patch
    block = 2 * tokens * dim * (3 * dim + dim + 8 * dim) + 2 * 2 * tokens * tokens * dim
    return embed + depth * block


def test_model_costs_of_the_tiny_model(tmp_path):
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"))
    model = make_model(cfg, num_classes=10).train()
    costs = model_costs(model, cfg.INPUT.SIZE_TRAIN)
    assert model.training
    h, w = cfg.INPUT.SIZE_TRAIN
    tokens = (h // 8) * (w // 8) + 1
    assert costs["backbone"].flops == 3 * _vit_forward_flops(tokens, 128, 4, 8)  # ViT-Mini-8, 3 modalities
    assert costs["heads"].flops == 3 * 2 * (3 * 128) * 10                          # three bias-free classifiers
    assert costs["heads"].params == sum(p.numel() for p in model.heads.parameters())
    assert costs["heads"].trainable == costs["heads"].params - 3 * 3 * 128         # frozen BN biases
    assert costs["backbone"].params == sum(p.numel() for p in model.backbone.parameters())
    model.eval()
    batch = {m: torch.zeros(1, 3, h, w) for m in model.modalities}
    with torch.no_grad():
        assert count_flops(model, batch)[0] == costs["backbone"].flops + costs["heat fusion"].flops
    table = format_costs(costs)
    assert "backbone" in table and "heat fusion" in table and "total" in table
