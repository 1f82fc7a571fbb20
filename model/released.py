"""Weight conversion of the authors' released MHCF checkpoints to this implementation's names.

Their checkpoints are bare state dicts of their ``MHCF`` module (possibly behind ``module.``):

==========================================  ===============================================================
theirs                                      ours
==========================================  ===============================================================
``image_encoder.*`` (OpenAI's CLIP layout)  ``backbone.*`` (timm's names, timm's converter)
``heat.heat_conductor.alpha_cls``, ``beta``  ``heat.operators.0.alpha``, ``beta``
``...conductivity_predictor.{0,2,4}``       ``heat.operators.0.conductivity_mlp.{0,2,4}``
``...cls_patch_gate.{0,2}``                 ``heat.operators.0.interaction_gate_mlp.{0,2}``
``...patch_spatial_gate.{0,2}``             ``heat.operators.0.spatial_gate_mlp.{0,2}``
``bottleneck``, ``classifier``              ``heads.ori.bn``, ``heads.ori.classifier``
``bn_heat_cls``, ``fc_heat_cls``            ``heads.heat_cls.bn``, ``heads.heat_cls.classifier``
``bn_heat_pat``, ``fc_heat_pat``            ``heads.heat_pat.bn``, ``heads.heat_pat.classifier``
``bn_r/n/t``, ``fc_r/n/t`` (vehicles)       ``heads.{RGB,NI,TI}.bn``, ``heads.{RGB,NI,TI}.classifier``
==========================================  ===============================================================

Their operator is ours with ``MODEL.HEAT.DIFFUSION stencil`` (docs/heat_operator.md); the per-modality heads
exist with ``MODEL.MODALITY_HEADS True`` (their ``MODEL.DIRECT False``). Keys without a counterpart are listed
in :data:`RELEASED_IGNORED_KEYS`.
"""

import logging

import torch

from utils.errors import UserError

from .clip.convert import openai_to_timm
from .heat import stencil_average
from .mhcf import MHCF

logger = logging.getLogger(__name__)

#: Key prefixes that identify the authors' released checkpoints (possibly behind "module.").
_RELEASED_MARKERS = ("image_encoder.", "heat.heat_conductor.")

#: Released keys without a counterpart here: ``alpha_patch`` is a parameter their operator never uses; the
#: adjacency is a buffer we compute (it is checked against ours, which also checks the token grid).
#: ``image_encoder.proj`` (OpenAI's image-text projection) is dropped by :func:`~model.clip.convert.openai_to_timm`.
RELEASED_IGNORED_KEYS = ("heat.heat_conductor.alpha_patch", "heat.heat_conductor.spatial_adjacency")

_ADJACENCY_KEY = "heat.heat_conductor.spatial_adjacency"
_POSITIONS_KEY = "image_encoder.positional_embedding"

_OPERATOR_PREFIX = "heat.heat_conductor."
#: Their operator's parameter names -> ours (names ending in "." match as prefixes).
_OPERATOR_NAMES = {
    "alpha_cls": "alpha",
    "beta": "beta",
    "conductivity_predictor.": "conductivity_mlp.",
    "cls_patch_gate.": "interaction_gate_mlp.",
    "patch_spatial_gate.": "spatial_gate_mlp.",
}

#: Their modality order and per-modality head suffixes.
_MODALITIES = {"RGB": "r", "NI": "n", "TI": "t"}

#: Their head modules -> ours.
_HEADS = {
    "bottleneck.": "heads.ori.bn.", "classifier.": "heads.ori.classifier.",
    "bn_heat_cls.": "heads.heat_cls.bn.", "fc_heat_cls.": "heads.heat_cls.classifier.",
    "bn_heat_pat.": "heads.heat_pat.bn.", "fc_heat_pat.": "heads.heat_pat.classifier.",
    **{f"bn_{s}.": f"heads.{m}.bn." for m, s in _MODALITIES.items()},
    **{f"fc_{s}.": f"heads.{m}.classifier." for m, s in _MODALITIES.items()},
}


def _rename(name: str, table: dict[str, str]) -> str | None:
    """``name`` renamed by the first matching entry of ``table`` (keys ending in "." match as prefixes)."""
    for old, new in table.items():
        if name == old or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old):]
    return None


def strip_module_prefix(state: dict) -> dict:
    """``state`` without the ``module.`` prefix that (Distributed)DataParallel adds to every key."""
    return {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in state.items()}


def is_released_state_dict(state: dict) -> bool:
    """True for a state dict in the authors' released layout (``image_encoder.*``, ``heat.heat_conductor.*``)."""
    keys = strip_module_prefix({k: None for k in state if isinstance(k, str)})
    return any(k.startswith(_RELEASED_MARKERS[0]) for k in keys) and any(
        k.startswith(_RELEASED_MARKERS[1]) for k in keys)


def released_num_classes(state: dict) -> int | None:
    """Training identities of a released checkpoint (rows of its ``classifier``), None when absent."""
    weight = strip_module_prefix(state).get("classifier.weight")
    return None if weight is None else int(weight.shape[0])


def stencil_adjacency(height: int, width: int) -> torch.Tensor:
    """The dense ``N x N`` matrix of our :func:`~model.heat.stencil_average` on an ``height x width`` grid
    (row i: the weights of token i's neighbours), obtained by applying it to the identity."""
    n = height * width
    basis = torch.eye(n).reshape(1, height, width, n)  # channel c = indicator of token c
    return stencil_average(basis)[0].reshape(n, n)


def _grid_of_adjacency(adjacency: torch.Tensor) -> tuple[int, int] | None:
    """The grid ``(H, W)`` whose stencil adjacency equals ``adjacency``, if any."""
    n = adjacency.shape[0]
    for h in range(1, n + 1):
        if n % h == 0 and torch.allclose(adjacency.float(), stencil_adjacency(h, n // h), atol=1e-6):
            return h, n // h
    return None


def _check_config(state: dict[str, torch.Tensor], model: MHCF, path: str) -> None:
    """One-line UserErrors telling which config key to change for this checkpoint."""
    op = model.heat.operators[0]
    if op.diffusion != "stencil":
        raise UserError(f"{path} is one of the authors' released checkpoints: load it with "
                        f"MODEL.HEAT.DIFFUSION stencil (their heat operator), not {op.diffusion!r}; see the README, "
                        f"'Reproduce the paper with the released checkpoints'")
    if list(model.modalities) != list(_MODALITIES):
        raise UserError(f"{path} is one of the authors' released checkpoints: it needs MODEL.MODALITIES "
                        f"{list(_MODALITIES)}, got {list(model.modalities)}")
    per_modality = any(k.startswith(("bn_r.", "fc_r.")) for k in state)
    if per_modality and not model.modality_heads:
        raise UserError(f"{path} is one of the authors' vehicle checkpoints, with per-modality heads "
                        f"(bn_r/fc_r, ...): set MODEL.MODALITY_HEADS True (their MODEL.DIRECT False)")
    if not per_modality and model.modality_heads:
        raise UserError(f"{path} is one of the authors' checkpoints without per-modality heads (bn_r/fc_r, ...): "
                        f"set MODEL.MODALITY_HEADS False (their MODEL.DIRECT True)")
    h, w = op.grid
    ph, pw = model.encoder(model.modalities[0]).patch_embed.patch_size
    if _POSITIONS_KEY in state and state[_POSITIONS_KEY].shape[0] - 1 != h * w:
        raise UserError(f"{path} was trained on a grid of {state[_POSITIONS_KEY].shape[0] - 1} tokens; "
                        f"INPUT.SIZE_TRAIN gives {h}x{w} = {h * w} (persons: [256, 128], vehicles: [128, 256])")
    if _ADJACENCY_KEY in state and state[_ADJACENCY_KEY].shape == (h * w, h * w):
        trained = _grid_of_adjacency(state[_ADJACENCY_KEY])
        if trained is None:
            raise UserError(f"{path}: {_ADJACENCY_KEY} is not the 8-neighbour adjacency of any token grid")
        if trained != (h, w):
            raise UserError(f"{path} was trained on a {trained[0]}x{trained[1]} token grid (input "
                            f"[{ph * trained[0]}, {pw * trained[1]}]); INPUT.SIZE_TRAIN gives {h}x{w}")
    if model.heat.num_cycles != 3 or model.heat.order != list(_MODALITIES):
        logger.warning("the released checkpoints were trained with 3 heat cycles RGB->NI->TI->RGB; this model runs "
                       "%d cycles over %s", model.heat.num_cycles, "->".join(model.heat.order))


def convert_released_state_dict(state: dict[str, torch.Tensor], model: MHCF,
                                path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The released checkpoint's weights under the names of ``model`` (built from the config), after checking
    that the config fits the checkpoint. Unknown keys are an error, ignored ones are
    :data:`RELEASED_IGNORED_KEYS`. A shared encoder or operator is copied to each per-modality encoder or
    per-edge operator when the config asks for separate ones (identical weights, identical function)."""
    state = strip_module_prefix(state)
    _check_config(state, model, path)
    out: dict[str, torch.Tensor] = {}
    first = model.modalities[0]
    encoder = openai_to_timm(state, model.encoder(first), prefix="image_encoder.", path=path)
    backbone_prefixes = ["backbone."] if model.shared_backbone else [f"backbone.{m}." for m in model.modalities]
    for prefix in backbone_prefixes:
        out.update({prefix + k: v for k, v in encoder.items()})
    unknown = []
    for key, value in state.items():
        if key.startswith("image_encoder.") or key in RELEASED_IGNORED_KEYS:
            continue
        if key.startswith(_OPERATOR_PREFIX):
            name = _rename(key[len(_OPERATOR_PREFIX):], _OPERATOR_NAMES)
            targets = [f"heat.operators.{i}.{name}" for i in range(len(model.heat.operators))] if name else []
        else:
            name = _rename(key, _HEADS)
            targets = [name] if name else []
        if not targets:
            unknown.append(key)
        out.update({target: value for target in targets})
    if unknown:
        raise UserError(f"{path}: {len(unknown)} keys unknown in the authors' released format "
                        f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''})")
    return out
