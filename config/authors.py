"""Key names of the authors' configs accepted as aliases of clearer ones here.

The authors' YAML files (and those of the CLIP-ReID forks they build on) use names that need the reader's
memory: ``MODEL.DIRECT: True`` means *no* per-modality heads. This project names the keys for what they do
and reads the authors' names as aliases, so their configs and command lines keep working.
"""

from collections.abc import Callable

__all__ = ["ALIASES", "resolve_alias"]


def _same(value):
    return value


def _negate(value):
    return not value


#: authors' key -> (our key, function from their value to ours)
ALIASES: dict[str, tuple[str, Callable]] = {
    "MODEL.DIRECT": ("MODEL.MODALITY_HEADS", _negate),
    "MODEL.NO_MARGIN": ("MODEL.SOFT_MARGIN", _same),
    "INPUT.PROB": ("INPUT.FLIP_PROB", _same),
}


def resolve_alias(key: str) -> tuple[str, Callable] | None:
    """``(our key, value conversion)`` when ``key`` is one of the authors' names, else None."""
    return ALIASES.get(key)
