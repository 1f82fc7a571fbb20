"""MHCF: backbone tokens per modality -> heat cycle fusion -> named features -> BNNeck heads."""

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .backbone import ClipViT
from .heads import BNNeck
from .heat import HeatCycle, HeatOutput

#: Features concatenated into the test feature, in this order.
TEST_FEATURES = ("ori", "heat_cls", "heat_pat")


class MHCF(nn.Module):
    """Multi-modal Heat Cycle Fusion.

    ``backbone`` is one encoder shared by all modalities (run as one batch) or a ModuleDict with one per
    modality. In training ``forward(batch)`` returns ``{"features": {name: (B, D)}, "logits": {name: (B,
    classes)}, "heat_stats": {edge/stat: scalar}}`` with names ``ori``, ``heat_cls``, ``heat_pat`` (+ one per
    modality with ``modality_heads``); in eval it returns the test feature ``cat(ori, heat_cls, heat_pat)``
    (B, 3 * M * C), taken before or after the BNNecks (``neck_feat``).
    """

    def __init__(self, backbone: ClipViT | nn.ModuleDict, heat: HeatCycle, modalities: Sequence[str],
                 num_classes: int, modality_heads: bool = False, neck_feat: str = "before"):
        super().__init__()
        self.modalities = list(modalities)
        self.backbone = backbone
        self.heat = heat
        self.modality_heads = modality_heads
        self.neck_feat = neck_feat
        dim = self.encoder(self.modalities[0]).embed_dim
        fused = len(self.modalities) * dim
        heads = {name: BNNeck(fused, num_classes) for name in TEST_FEATURES}
        if modality_heads:
            heads.update({m: BNNeck(dim, num_classes) for m in self.modalities})
        self.heads = nn.ModuleDict(heads)
        self.feature_dim = len(TEST_FEATURES) * fused

    @property
    def shared_backbone(self) -> bool:
        return not isinstance(self.backbone, nn.ModuleDict)

    def encoder(self, modality: str) -> ClipViT:
        return self.backbone if self.shared_backbone else self.backbone[modality]

    def encode(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backbone tokens (B, 1 + N, C) per modality."""
        if self.shared_backbone:
            images = torch.cat([batch[m] for m in self.modalities])        # (M * B, 3, H, W)
            tokens = self.backbone(images).chunk(len(self.modalities))    # M x (B, 1 + N, C)
            return dict(zip(self.modalities, tokens))
        return {m: self.backbone[m](batch[m]) for m in self.modalities}

    def fuse(self, tokens: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], HeatOutput]:
        """Named pre-BN features from backbone tokens, and the heat cycle's full output (for analysis)."""
        heat = self.heat({m: t[:, 0] for m, t in tokens.items()}, {m: t[:, 1:] for m, t in tokens.items()})
        features = {
            "ori": torch.cat([tokens[m][:, 0] for m in self.modalities], dim=1),
            "heat_cls": torch.cat([heat.cls[m] for m in self.modalities], dim=1),
            "heat_pat": torch.cat([heat.patches[m].mean(1) for m in self.modalities], dim=1),
        }
        if self.modality_heads:
            features.update({m: tokens[m][:, 0] for m in self.modalities})
        return features, heat

    def test_feature(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``cat(ori, heat_cls, heat_pat)``, before or after the BNNecks as ``neck_feat`` says."""
        if self.neck_feat == "after":
            return torch.cat([self.heads[name].bn(features[name]) for name in TEST_FEATURES], dim=1)
        return torch.cat([features[name] for name in TEST_FEATURES], dim=1)

    def forward(self, batch: Mapping[str, torch.Tensor]):
        features, heat = self.fuse(self.encode(batch))
        if self.training:
            logits = {name: head(features[name])[1] for name, head in self.heads.items()}
            return {"features": features, "logits": logits, "heat_stats": heat.summary()}
        return self.test_feature(features)
