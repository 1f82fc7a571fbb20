"""Model package: :func:`make_model` maps the config onto the MHCF modules."""

import logging

from torch import nn
from yacs.config import CfgNode

from .backbone import ClipViT, build_clip_vit
from .heat import HeatCycle, heat_diffuse
from .mhcf import MHCF
from .onednn import use_onednn

__all__ = ["MHCF", "ClipViT", "HeatCycle", "build_clip_vit", "heat_diffuse", "make_model"]

logger = logging.getLogger(__name__)


def make_model(cfg: CfgNode, num_classes: int, num_cameras: int = 0, load_pretrained: bool = True) -> MHCF:
    """MHCF as the config describes it.

    ``num_cameras`` is accepted for interface compatibility with CLIP-ReID forks; MHCF uses no camera
    embedding. ``load_pretrained=False`` skips the backbone weights (the caller loads a whole model).
    """
    pretrained = cfg.MODEL.PRETRAIN_PATH if load_pretrained else None

    def backbone() -> ClipViT:
        return build_clip_vit(cfg.INPUT.SIZE_TRAIN, pretrained or None, arch=cfg.MODEL.NAME,
                              drop_path=cfg.MODEL.DROP_PATH, grad_ckpt=cfg.MODEL.GRAD_CKPT,
                              cache_dir=cfg.MODEL.PRETRAIN_CACHE or None)

    modalities = list(cfg.MODEL.MODALITIES)
    encoder = backbone() if cfg.MODEL.SHARED_BACKBONE else nn.ModuleDict({m: backbone() for m in modalities})
    first = encoder if cfg.MODEL.SHARED_BACKBONE else encoder[modalities[0]]
    h = cfg.MODEL.HEAT
    heat = HeatCycle(h.ORDER, first.embed_dim, first.grid_size, num_cycles=h.NUM_CYCLES,
                     share_operator=h.SHARE_OPERATOR, diffusion=h.DIFFUSION, alpha=h.ALPHA, beta=h.BETA,
                     tau=h.TAU, learn_tau=h.LEARN_TAU, init_conductivity=h.INIT_CONDUCTIVITY)
    model = MHCF(encoder, heat, modalities, num_classes, direct=cfg.MODEL.DIRECT, neck_feat=cfg.TEST.NECK_FEAT)
    return use_onednn(model) if cfg.MODEL.ONEDNN else model
