"""Model package: the MHCF method and its weight I/O.

:func:`make_model` maps the config onto the MHCF modules; :func:`load_model` builds the configured model and
loads a checkpoint of ours or of the authors' release into it (:mod:`model.checkpoint`). The modules are
plain PyTorch / timm modules on every device; the CPU fast path lives in :mod:`accel`.
"""

import logging

from torch import nn
from yacs.config import CfgNode

from utils.errors import UserError

from .backbone import ARCHS, ClipViT, build_clip_vit
from .checkpoint import Checkpoint, checkpoint_record, read_checkpoint
from .heat import HeatCycle, heat_diffuse
from .mhcf import MHCF

__all__ = ["MHCF", "Checkpoint", "ClipViT", "HeatCycle", "build_clip_vit", "checkpoint_record", "heat_diffuse",
           "load_model", "make_model", "read_checkpoint"]

logger = logging.getLogger(__name__)


def make_model(cfg: CfgNode, num_classes: int, num_cameras: int = 0, load_pretrained: bool = True) -> MHCF:
    """MHCF as the config describes it, with ``num_classes`` training identities.

    ``num_cameras`` is part of the interface of CLIP-ReID forks; MHCF has no camera embedding and ignores it.
    The weights: the whole model from ``MODEL.INIT_WEIGHTS`` when it is set (fine-tuning: the classifiers are
    re-initialised when its identities differ), else the backbone's CLIP weights from ``MODEL.PRETRAIN_PATH``.
    ``load_pretrained=False`` loads neither (the caller loads a whole model, or wants random weights).
    """
    patch = ARCHS[cfg.MODEL.NAME]["patch_size"]
    if any(side % patch for side in cfg.INPUT.SIZE_TRAIN):
        raise UserError(f"INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)} must be multiples of the patch size {patch} "
                        f"of {cfg.MODEL.NAME}: the backbone would cut off the rest of every image")
    init = cfg.MODEL.INIT_WEIGHTS if load_pretrained else ""
    pretrained = cfg.MODEL.PRETRAIN_PATH if load_pretrained and not init else None

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
                     tau=h.TAU, learn_tau=h.LEARN_TAU, init_conductivity=h.INIT_CONDUCTIVITY,
                     grad_ckpt=cfg.MODEL.GRAD_CKPT)
    model = MHCF(encoder, heat, modalities, num_classes, modality_heads=cfg.MODEL.MODALITY_HEADS,
                 neck_feat=cfg.TEST.NECK_FEAT)
    if init:
        logger.info("MODEL.INIT_WEIGHTS: %s", read_checkpoint(init, "MODEL.INIT_WEIGHTS").init_model(model))
    return model


def load_model(cfg: CfgNode, checkpoint: Checkpoint) -> MHCF:
    """The configured model with the weights of ``checkpoint`` (ours or the authors' release), on the CPU."""
    model = make_model(cfg, checkpoint.num_classes, load_pretrained=False)
    checkpoint.load_into(model)
    return model
