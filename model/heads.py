"""BNNeck heads: batch norm with a frozen bias, then a bias-free classifier."""

import torch
from torch import nn


class BNNeck(nn.Module):
    """``feature -> (bn(feature), classifier(bn(feature)))``; classifier initialised with std 0.001."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.bn(feature)
        return normed, self.classifier(normed)
