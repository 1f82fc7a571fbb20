"""MHCF: backbone tokens per modality -> heat cycle fusion -> named features -> BNNeck heads.

Missing modalities (a batch's optional ``"present"``: modality -> (B,) bool) are left out of the
computation: their images are not encoded, they neither give nor take heat (:class:`HeatCycle`), and the
slot an absent modality holds in every concatenated feature is filled by :func:`fill_absent`.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .backbone import ClipViT
from .heads import BNNeck
from .heat import HeatCycle, HeatOutput

#: Features concatenated into the test feature, in this order.
TEST_FEATURES = ("ori", "heat_cls", "heat_pat")


def fill_absent(slots: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The slot rule: per sample, an absent modality's slot (B, C) becomes the mean of the present
    modalities' slots. A feature then keeps its size and its scale, and a sample seen in one modality
    compares with one seen in another through the slots they fill alike (cross-modal retrieval)."""
    count = sum(present[m].to(s.dtype) for m, s in slots.items())[:, None]                 # (B, 1), >= 1
    mean = sum(torch.where(present[m][:, None], s, 0.0) for m, s in slots.items()) / count  # (B, C)
    return {m: torch.where(present[m][:, None], s, mean) for m, s in slots.items()}


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

    def presence(self, batch: Mapping) -> dict[str, torch.Tensor] | None:
        """The batch's ``"present"`` masks (B,) bool, or None when nothing is missing. They stay where they
        are: the loader's are on the host, where checking them and finding the present rows costs no wait for
        the device (:meth:`encode`, :meth:`fuse` and the heat cycle copy them to the device)."""
        present = batch.get("present")
        if present is None:
            return None
        present = {m: present[m].to(torch.bool) for m in self.modalities}
        if not bool(sum(p.to(torch.int64) for p in present.values()).min() > 0):
            raise ValueError("every sample needs at least one present modality")
        return None if all(bool(p.all()) for p in present.values()) else present

    def encode(self, batch: Mapping[str, torch.Tensor],
               present: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Backbone tokens (B, 1 + N, C) per modality. With ``present`` only the present images are
        encoded; an absent modality's rows are zeros, which :meth:`fuse` never reads."""
        if present is None:
            if self.shared_backbone:
                images = torch.cat([batch[m] for m in self.modalities])        # (M * B, 3, H, W)
                tokens = self.backbone(images).chunk(len(self.modalities))    # M x (B, 1 + N, C)
                return dict(zip(self.modalities, tokens))
            return {m: self.backbone[m](batch[m]) for m in self.modalities}
        device = batch[self.modalities[0]].device
        found = {m: present[m].nonzero()[:, 0] for m in self.modalities}        # found where the masks live
        rows = {m: r.to(device, non_blocking=True) for m, r in found.items()}
        if self.shared_backbone:
            images = torch.cat([batch[m][rows[m]] for m in self.modalities])   # (present images, 3, H, W)
            encoded = dict(zip(self.modalities, self.backbone(images).split([len(r) for r in found.values()])))
        else:  # a modality absent from the whole batch is not run at all (oneDNN's kernels reject 0 images)
            encoded = {m: self.backbone[m](batch[m][rows[m]]) for m, r in found.items() if len(r)}
        first = next(iter(encoded.values()))                                    # (b, 1 + N, C)
        zeros = first.new_zeros(len(present[self.modalities[0]]), *first.shape[1:])  # (B, 1 + N, C)
        return {m: zeros.index_put((r,), encoded[m]) if m in encoded else zeros for m, r in rows.items()}

    def fuse(self, tokens: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, torch.Tensor], HeatOutput]:
        """Named pre-BN features from backbone tokens, and the heat cycle's full output (for analysis).
        ``present`` (modality -> (B,) bool): absent modalities are left out (module docstring)."""
        heat = self.heat({m: t[:, 0] for m, t in tokens.items()}, {m: t[:, 1:] for m, t in tokens.items()},
                         present)
        slots = {"ori": {m: tokens[m][:, 0] for m in self.modalities},
                 "heat_cls": {m: heat.cls[m] for m in self.modalities},
                 "heat_pat": {m: heat.patches[m].mean(1) for m in self.modalities}}
        if present is not None:
            device = tokens[self.modalities[0]].device
            present = {m: p.to(device, non_blocking=True) for m, p in present.items()}
            slots = {name: fill_absent(per_modality, present) for name, per_modality in slots.items()}
        features = {name: torch.cat([per_modality[m] for m in self.modalities], dim=1)
                    for name, per_modality in slots.items()}
        if self.modality_heads:
            features.update(slots["ori"])
        return features, heat

    def test_feature(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``cat(ori, heat_cls, heat_pat)``, before or after the BNNecks as ``neck_feat`` says."""
        if self.neck_feat == "after":
            return torch.cat([self.heads[name].bn(features[name]) for name in TEST_FEATURES], dim=1)
        return torch.cat([features[name] for name in TEST_FEATURES], dim=1)

    def forward(self, batch: Mapping[str, torch.Tensor]):
        present = self.presence(batch)
        features, heat = self.fuse(self.encode(batch, present), present)
        if self.training:
            logits = {name: head(features[name])[1] for name, head in self.heads.items()}
            return {"features": features, "logits": logits, "heat_stats": heat.summary()}
        return self.test_feature(features)
