"""Configuration: yacs defaults (``config/defaults.py``) merged with a YAML file and ``KEY VALUE`` pairs."""

import ast
import os

import yaml
from yacs.config import CfgNode as CN

from utils.errors import UserError
from utils.modalities import PROTOCOLS, initial, setting_error

from .authors import resolve_alias
from .defaults import _C

__all__ = ["get_default_config", "load_config", "merge_overrides"]

# Keys whose value must be one of a fixed set (checked after merging, so errors name the key).
_CHOICES = {
    "MODEL.HEAT.DIFFUSION": ("dct", "stencil"),
    "MODEL.NAME": ("ViT-B-16", "ViT-Mini-8"),
    "SOLVER.OPTIMIZER_NAME": ("Adam", "AdamW", "SGD"),
    "SOLVER.SCHEDULER": ("cosine", "multistep"),
    "SOLVER.AMP": ("off", "fp16", "bf16"),
    "TEST.NECK_FEAT": ("before", "after"),
    "TEST.MISS_PROTOCOL": PROTOCOLS,
}


def get_default_config() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def _coerce(value, default, key: str, origin: str):
    """Return ``value`` converted to the type of ``default``, or raise a UserError naming ``key``."""
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
        if isinstance(value, str):  # the reference configs write single-element tuples as "('x')"
            value = [value]
        if isinstance(value, (list, tuple)):
            if default and value:
                return [_coerce(v, default[0], key, origin) for v in value]
            return list(value)
    raise UserError(
        f"{origin}: {key} must be {type(default).__name__} (like {default!r}), got {value!r}"
    )


def _set(root: CN, key: str, value, origin: str) -> None:
    """Set the leaf ``key`` (dotted; one of the authors' names is read as ours) to ``value``, converted to the
    type of its default; a UserError naming ``key`` and ``origin`` otherwise."""
    alias = resolve_alias(key)
    if alias is not None:
        key, convert = alias
    node = root
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], CN):
            raise UserError(f"{origin}: unknown config key {'.'.join(parents[: i + 1])}")
        node = node[part]
    if leaf not in node:
        raise UserError(f"{origin}: unknown config key {key}")
    if isinstance(node[leaf], CN):
        raise UserError(f"{origin}: {key} is a section, got {value!r}")
    value = _coerce(value, node[leaf], key, origin)
    node[leaf] = convert(value) if alias is not None else value


def _merge_dict(root: CN, values: dict, origin: str, prefix: str = "") -> None:
    """Merge a YAML mapping (sections of sections of values) into ``root``."""
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            _merge_dict(root, value, origin, key + ".")
        else:
            _set(root, key, value, origin)


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
    for key, text in zip(opts[0::2], opts[1::2]):
        _set(cfg, key, _parse_value(text), "command line")


def _validate(cfg: CN) -> None:
    for key, allowed in _CHOICES.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        if node not in allowed:
            raise UserError(f"config: {key} must be one of {', '.join(allowed)}; got {node!r}")
    mods = list(cfg.MODEL.MODALITIES)
    if len(set(mods)) != len(mods) or not mods:
        raise UserError(f"config: MODEL.MODALITIES must list distinct names, at least one, got {mods}")
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
    if not 0 <= cfg.INPUT.MODALITY_DROPOUT <= 1 or cfg.INPUT.MODALITY_DROPOUT_RAMP < 0:
        raise UserError(f"config: INPUT.MODALITY_DROPOUT must be a probability (0 to 1) and "
                        f"INPUT.MODALITY_DROPOUT_RAMP a number of epochs (>= 0); got "
                        f"{cfg.INPUT.MODALITY_DROPOUT} and {cfg.INPUT.MODALITY_DROPOUT_RAMP}")
    if cfg.INPUT.MODALITY_DROPOUT > 0 and len(mods) < 2:
        raise UserError(f"config: INPUT.MODALITY_DROPOUT needs at least two MODEL.MODALITIES, got {mods}")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = cfg.INPUT[key.split(".")[1]]
        if len(size) != 2 or min(size) <= 0:
            raise UserError(f"config: {key} must be [height, width] in pixels, got {list(size)}")
    if len({initial(m) for m in mods}) != len(mods):
        raise UserError(f"config: the MODEL.MODALITIES {mods} must start with distinct letters (TEST.MISS names "
                        f"missing modalities by their initials)")
    for key in ("MISS", "QUERY_MISS", "GALLERY_MISS"):
        problem = setting_error(cfg.TEST[key], mods) if key == "MISS" or cfg.TEST[key] else None
        if problem:
            raise UserError(f"config: TEST.{key} {problem}")


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
        _merge_dict(cfg, values, config_file)
    merge_overrides(cfg, list(opts or []))
    _validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg
