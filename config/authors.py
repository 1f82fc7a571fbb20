"""Configs written for the authors' repository (and the CLIP-ReID / TOP-ReID family it builds on), read here.

Their YAML files use names and spellings this project does not: ``MODEL.DIRECT: 1`` (= no per-modality heads),
``'yes'`` / ``'no'`` for booleans, ``('RGBNT201')`` for a string, ``(20, 50)`` for a list, and keys that
configure what this project does in one fixed way (``METRIC_LOSS_TYPE: 'triplet'``, ``SAMPLER:
'softmax_triplet'``). :func:`translate` maps one of their settings onto ours and says what it did:

- a renamed key (:data:`ALIASES`) is set under our name, its value converted;
- a value in their spelling (:func:`their_value`) is read as the value it stands for;
- a key without a counterpart (:data:`NO_COUNTERPART`) is accepted when its value asks for what this project
  does anyway (it is then left out, with the reason), and refused otherwise, saying what to set instead.

The config loader (``config/__init__.py``) keeps the notes, so the runners log what was mapped, and refuses a
file in one message listing every setting that does not map.
"""

import ast
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ALIASES", "NO_COUNTERPART", "Mapped", "Unmapped", "their_value", "translate"]


class Unmapped(Exception):
    """A setting of the authors' configs that has no meaning here; the message says what to do instead."""


@dataclass(frozen=True)
class Mapped:
    """How one setting was read: ``key`` (ours, or None when it was left out) is set to ``value``; ``note``
    says what was done, for the log (``"MODEL.DIRECT 1 -> MODEL.MODALITY_HEADS False"``)."""

    key: str | None
    value: object
    note: str | None = None


def _same(value):
    return value


def _negate(value):
    return not value


def _smoothing(value: bool) -> float:
    return 0.1 if value else 0.0  # their CrossEntropyLabelSmooth uses epsilon 0.1


#: authors' key -> (our key, function from their value to ours)
ALIASES: dict[str, tuple[str, Callable]] = {
    "MODEL.DIRECT": ("MODEL.MODALITY_HEADS", _negate),
    "MODEL.NO_MARGIN": ("MODEL.SOFT_MARGIN", _same),
    "INPUT.PROB": ("INPUT.FLIP_PROB", _same),
    # their scheduler (timm's CosineLRScheduler, t_in_epochs=True) counts the warm-up in epochs
    "SOLVER.WARMUP_ITERS": ("SOLVER.WARMUP_EPOCHS", _same),
    "MODEL.IF_LABELSMOOTH": ("MODEL.LABEL_SMOOTHING", _smoothing),
}

#: The type each alias's value must have in their spelling (bool keys accept 'on'/'off', 'yes'/'no', 0/1).
_ALIAS_TYPES = {"MODEL.DIRECT": bool, "MODEL.NO_MARGIN": bool, "MODEL.IF_LABELSMOOTH": bool}

_ANY = None  # NO_COUNTERPART: every value is harmless

#: authors' key -> (the values that ask for what this project does anyway, or _ANY; why they are harmless;
#: what to do instead when the value is another one)
NO_COUNTERPART: dict[str, tuple[tuple | None, str, str]] = {
    "MODEL.PRETRAIN_CHOICE": (("imagenet",), "the backbone starts from MODEL.PRETRAIN_PATH (OpenAI's CLIP)",
                              "to start from a whole trained model set MODEL.INIT_WEIGHTS <checkpoint>"),
    "MODEL.METRIC_LOSS_TYPE": (("triplet",), "ID + triplet losses, as here", "only the triplet loss exists here"),
    "MODEL.IF_WITH_CENTER": ((False,), "no center loss, as here", "there is no center loss here"),
    "MODEL.NECK": (("bnneck",), "BNNeck heads, as here", "the heads are BNNecks here"),
    "MODEL.ID_LOSS_TYPE": (("softmax",), "softmax cross-entropy ID loss, as here",
                           "the ID loss is softmax cross-entropy here"),
    "MODEL.STRIDE_SIZE": (([16, 16],), "non-overlapping 16-pixel patches, as ViT-B-16 here",
                          "overlapping patches are not supported"),
    "MODEL.DEVICE_ID": (("0",), "MODEL.DEVICE 'auto' uses cuda:0 when there is a GPU",
                        "set MODEL.DEVICE cuda:N for GPU N (one process) or launch with torchrun (several)"),
    "MODEL.DIST_TRAIN": (_ANY, "distributed training starts when train.py is launched with torchrun", ""),
    "DATALOADER.SAMPLER": (("softmax_triplet",), "the P x K identity sampler, as here",
                           "only the P x K identity sampler exists here"),
    "SOLVER.WARMUP_METHOD": (("linear",), "linear warm-up, as here", "the warm-up is linear here"),
    "SOLVER.LARGE_FC_LR": ((False,), "one learning rate for the classifiers, as here",
                           "the classifiers use SOLVER.BASE_LR here"),
    "SOLVER.CENTER_LR": (_ANY, "a center-loss setting; there is no center loss", ""),
    "SOLVER.CENTER_LOSS_WEIGHT": (_ANY, "a center-loss setting; there is no center loss", ""),
    "SOLVER.COSINE_MARGIN": (_ANY, "used by the arcface / cosface ID losses only, not by softmax", ""),
    "SOLVER.COSINE_SCALE": (_ANY, "used by the arcface / cosface ID losses only, not by softmax", ""),
}

_BOOLEAN_WORDS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}

#: Values of string keys in their spelling -> ours.
_VALUES = {
    "DATASETS.NAMES": {"Market1501-MM": "Market-MM"},
    "TEST.MISS": {"nothing": "none", "None": "none"},
}
#: Our bool keys that their configs write as 'yes' / 'no' (or 0 / 1).
_BOOLEAN_KEYS = ("TEST.RE_RANKING", "TEST.FEAT_NORM")


def _tuple_string(value):
    """``"('RGBNT201')"`` -> ``'RGBNT201'``, ``"(20, 50)"`` -> ``[20, 50]`` (yacs reads these Python literals;
    YAML gives them as strings); anything else unchanged."""
    if isinstance(value, str) and value.startswith("(") and value.endswith(")"):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(parsed, tuple):
            return list(parsed)
        if isinstance(parsed, (str, int, float)):
            return parsed
    return value


def _as_bool(value):
    """Their spellings of a boolean ('yes' / 'no', 'on' / 'off', 0 / 1) as a bool; anything else unchanged."""
    if isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    return value


def their_value(key: str, value, expects_bool: bool = False):
    """``value`` of ``key`` read in the authors' spelling (tuple strings, 'yes' / 'no' for the keys they write so,
    their dataset and TEST.MISS names); ``value`` itself when it is already ours."""
    value = _tuple_string(value)
    if expects_bool or key in _BOOLEAN_KEYS:
        value = _as_bool(value)
    if isinstance(value, str):
        value = _VALUES.get(key, {}).get(value, value)
    return value


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def translate(key: str, value) -> Mapped | None:
    """How one of the authors' settings is read here: a :class:`Mapped` (``key`` None: left out, harmless), or
    None when ``key`` is not one of theirs (it is then read as ours). Raises :class:`Unmapped` for a value that
    would ask for something this project does not do."""
    if key in NO_COUNTERPART:
        accepted, why, instead = NO_COUNTERPART[key]
        read = their_value(key, value, expects_bool=accepted is not _ANY and isinstance(accepted[0], bool))
        if accepted is _ANY or read in accepted:
            return Mapped(None, None, f"{key} {_show(value)} left out: {why}")
        raise Unmapped(f"{key} {_show(value)}: {instead}")
    alias = ALIASES.get(key)
    if alias is None:
        return None
    ours, convert = alias
    read = their_value(key, value, expects_bool=_ALIAS_TYPES.get(key) is bool)
    if _ALIAS_TYPES.get(key) is bool and not isinstance(read, bool):
        raise Unmapped(f"{key} must be a boolean (True / False, 'yes' / 'no', 1 / 0), got {_show(value)}")
    converted = convert(read)
    return Mapped(ours, converted, f"{key} {_show(value)} -> {ours} {_show(converted)}")
