"""The missing-modality vocabulary of ``TEST.MISS``, in one place.

A setting names the modalities that are missing by their initials, lower case: with RGB / NI / TI, ``"r"``
removes RGB, ``"nt"`` removes NI and TI (RGB alone is left), ``"none"`` removes nothing. ``"all"`` stands for
the sweep over ``"none"`` and every proper subset (at least one modality is left). Everything that reads or
writes a setting goes through these functions.

A missing modality is handled by one of two protocols (``TEST.MISS_PROTOCOL``):

- ``"zero"``: its normalised image is all zeros and the model runs as usual (DeMo, TOP-ReID and IDEA
  evaluate so; comparable with their tables);
- ``"drop"``: it is left out of the model's computation (not encoded, no heat to or from it, its feature
  slots filled from the present modalities; ``model/mhcf.py``), as in training with
  ``INPUT.MODALITY_DROPOUT``.
"""

from collections.abc import Sequence
from itertools import combinations

__all__ = ["ALL", "DROP", "NONE", "PROTOCOLS", "ZERO", "initial", "kept_modalities", "miss_settings",
           "missing_modalities", "setting_error"]

NONE, ALL = "none", "all"
ZERO, DROP = "zero", "drop"
#: The missing-modality protocols, in the order the sweep reports them.
PROTOCOLS = (ZERO, DROP)


def initial(modality: str) -> str:
    """The letter that names ``modality`` in a setting (``"RGB"`` -> ``"r"``)."""
    return modality[0].lower()


def miss_settings(modalities: Sequence[str]) -> list[str]:
    """``["none", "r", "n", "t", "rn", "rt", "nt"]`` for RGB / NI / TI: ``"none"``, then every proper subset of
    the modalities' initials that can be missing, by size."""
    initials = [initial(m) for m in modalities]
    return [NONE] + ["".join(c) for size in range(1, len(initials)) for c in combinations(initials, size)]


def missing_modalities(setting: str, modalities: Sequence[str]) -> list[str]:
    """The modalities a setting removes (``"rn"`` -> ``["RGB", "NI"]``)."""
    return [] if setting == NONE else [m for m in modalities if initial(m) in setting]


def kept_modalities(missing: Sequence[str], modalities: Sequence[str]) -> str:
    """``"NI+TI"`` for RGB missing out of RGB / NI / TI: the name of the modalities a setting keeps."""
    return "+".join(m for m in modalities if m not in missing)


def setting_error(setting: str, modalities: Sequence[str], allow_all: bool = True) -> str | None:
    """Why ``setting`` is not a valid TEST.MISS value for ``modalities`` (None when it is)."""
    if setting == NONE or (allow_all and setting == ALL):
        return None
    initials = {initial(m) for m in modalities}
    if set(setting) <= initials and len(set(setting)) == len(setting) and 0 < len(setting) < len(modalities):
        return None
    choices = ", ".join(([ALL] if allow_all else []) + miss_settings(modalities))
    return (f"must be one of {choices} (the initials of the missing modalities, in any order, at least one "
            f"modality left); got {setting!r}")
