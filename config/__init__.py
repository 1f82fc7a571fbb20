"""Configuration: yacs defaults (``config/defaults.py``) merged with a YAML file and ``KEY VALUE`` pairs."""

import ast
import os

import yaml
from yacs.config import CfgNode as CN

from utils.errors import UserError
from utils.modalities import initial, setting_error

from .authors import Unmapped, their_value, translate
from .defaults import _C

__all__ = ["get_default_config", "load_config", "mapped_settings", "merge_overrides"]

#: Where a loaded config keeps the notes of the settings read under the authors' names or spellings (an
#: attribute, not a key: yacs keeps its own flags the same way, and clone() copies it).
_MAPPED = "_mapped_settings"

# Keys whose value must be one of a fixed set (checked after merging, so errors name the key).
_CHOICES = {
    "MODEL.HEAT.DIFFUSION": ("dct", "stencil"),
    "MODEL.NAME": ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336px", "ViT-Mini-8"),  # model/backbone.py ARCHS
    "SOLVER.OPTIMIZER_NAME": ("Adam", "AdamW", "SGD"),
    "SOLVER.SCHEDULER": ("cosine", "multistep"),
    "SOLVER.WARMUP_FACTOR_OF": ("base", "group"),
    "SOLVER.COSINE_MIN_FACTOR_OF": ("base", "group"),
    "SOLVER.AMP": ("off", "fp16", "bf16"),
    "TEST.NECK_FEAT": ("before", "after"),
}


def get_default_config() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


class _Problem(Exception):
    """A setting that cannot be set; collected, then reported with the others in one UserError."""


def _coerce(value, default, key: str):
    """Return ``value`` converted to the type of ``default``, or raise a _Problem naming ``key``."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, str):  # a single element written without brackets
            value = [value]
        if isinstance(value, (list, tuple)):
            if default and value:
                return [_coerce(v, default[0], key) for v in value]
            return list(value)
    raise _Problem(f"{key} must be {type(default).__name__} (like {default!r}), got {value!r}")


def _set(root: CN, key: str, value) -> str | None:
    """Set the leaf ``key`` (dotted) to ``value``, converted to the type of its default. A setting of the
    authors' configs is read as ours (config/authors.py); the note of what was done is returned. A _Problem
    naming ``key`` otherwise."""
    try:
        mapped = translate(key, value)
    except Unmapped as exc:
        raise _Problem(str(exc)) from None
    if mapped is not None and mapped.key is None:
        return mapped.note                      # a key without a counterpart, harmless: left out
    if mapped is not None:
        key, read, note = mapped.key, mapped.value, mapped.note
    else:
        read = their_value(key, value)
        same = type(read) is type(value) and read == value
        note = None if same else f"{key} {value!r} -> {read!r}"
    node = root
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], CN):
            raise _Problem(f"unknown config key {'.'.join(parents[: i + 1])}")
        node = node[part]
    if leaf not in node:
        raise _Problem(f"unknown config key {key}")
    if isinstance(node[leaf], CN):
        raise _Problem(f"{key} is a section, got {value!r}")
    node[leaf] = _coerce(read, node[leaf], key)
    return note


def _set_all(root: CN, settings: list[tuple[str, object]], origin: str) -> None:
    """Set every ``(key, value)``; one UserError listing every setting that cannot be set (never one per run).
    The notes of the settings read under the authors' names or spellings are kept on ``root``."""
    problems, notes = [], []
    for key, value in settings:
        try:
            note = _set(root, key, value)
        except _Problem as exc:
            problems.append(str(exc))
            continue
        if note:
            notes.append(f"{origin}: {note}")
    if len(problems) == 1:
        raise UserError(f"{origin}: {problems[0]}")
    if problems:
        raise UserError(f"{origin}: {len(problems)} settings do not map onto this project's config "
                        f"(config/defaults.py; the authors' names read here: config/authors.py): "
                        f"{'; '.join(problems)}")
    root.__dict__[_MAPPED] = [*root.__dict__.get(_MAPPED, []), *notes]


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A YAML mapping (sections of sections of values) as ``(dotted key, value)`` pairs."""
    out = []
    for name, value in values.items():
        key = f"{prefix}{name}"
        out += _flatten(value, key + ".") if isinstance(value, dict) else [(key, value)]
    return out


def mapped_settings(cfg: CN) -> list[str]:
    """What was read under the authors' names or spellings (``"<file>: MODEL.DIRECT 1 -> MODEL.MODALITY_HEADS
    False"``), in the order it was read; empty for a config in this project's own terms."""
    return list(cfg.__dict__.get(_MAPPED, []))


def _parse_value(text: str):
    """A command-line value: a Python literal when it is one (numbers, booleans, lists), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def merge_overrides(cfg: CN, opts: list[str]) -> None:
    """Merge ``["KEY", "VALUE", ...]`` pairs from the command line into ``cfg`` (in place)."""
    if len(opts) % 2:
        raise UserError(f"command line: overrides come as KEY VALUE pairs, {opts[-1]!r} has no value")
    _set_all(cfg, [(key, _parse_value(text)) for key, text in zip(opts[0::2], opts[1::2])], "command line")


def _validate(cfg: CN) -> None:
    for key, allowed in _CHOICES.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        if node not in allowed:
            raise UserError(f"config: {key} must be one of {', '.join(allowed)}; got {node!r}")
    mods = list(cfg.MODEL.MODALITIES)
    if len(set(mods)) != len(mods) or len(mods) < 2:
        raise UserError(f"config: MODEL.MODALITIES must list at least two distinct names, got {mods}")
    if sorted(cfg.MODEL.HEAT.ORDER) != sorted(mods):
        raise UserError(
            f"config: MODEL.HEAT.ORDER {list(cfg.MODEL.HEAT.ORDER)} must be a permutation of "
            f"MODEL.MODALITIES {mods}"
        )
    if cfg.DATALOADER.NUM_INSTANCE < 1 or cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise UserError(
            f"config: SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of "
            f"DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE})"
        )
    if cfg.SOLVER.SCHEDULE_START < 0:
        raise UserError(f"config: SOLVER.SCHEDULE_START must be >= 0, got {cfg.SOLVER.SCHEDULE_START}")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = cfg.INPUT[key.split(".")[1]]
        if len(size) != 2 or min(size) <= 0:
            raise UserError(f"config: {key} must be [height, width] in pixels, got {list(size)}")
    if len({initial(m) for m in mods}) != len(mods):
        raise UserError(f"config: the MODEL.MODALITIES {mods} must start with distinct letters (TEST.MISS names "
                        f"missing modalities by their initials)")
    problem = setting_error(cfg.TEST.MISS, mods)
    if problem:
        raise UserError(f"config: TEST.MISS {problem}")


def load_config(config_file: str | None = None, opts: list[str] | None = None, freeze: bool = True) -> CN:
    """Defaults, then ``config_file`` (YAML), then ``opts`` (``KEY VALUE`` pairs); validated and frozen."""
    cfg = get_default_config()
    if config_file:
        if not os.path.isfile(config_file):
            raise UserError(f"config file not found: {config_file}")
        try:
            with open(config_file) as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{config_file}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise UserError(f"{config_file}: expected a mapping of config sections")
        _set_all(cfg, _flatten(values), config_file)
    merge_overrides(cfg, list(opts or []))
    _validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg
