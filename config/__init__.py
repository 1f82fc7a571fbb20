"""Configuration: yacs defaults (``config/defaults.py``) merged with a YAML file and ``KEY VALUE`` pairs."""

import ast
import os

import yaml
from yacs.config import CfgNode as CN

from utils.errors import UserError

from .authors import resolve_alias
from .defaults import _C
from .validate import flat_items, shown, validate

__all__ = ["get_default_config", "load_config", "merge_overrides", "saved_values"]


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
        f"{origin}: {key} must be {type(default).__name__} (like {default!r}), got {shown(value)}"
    )


def _set(root: CN, key: str, value, origin: str, origins: dict[str, str]) -> None:
    """Set the leaf ``key`` (dotted; one of the authors' names is read as ours) to ``value``, converted to the
    type of its default, and record ``origins[key] = origin``; a UserError naming ``key`` and ``origin``
    otherwise, and for a key a file gives twice (under our name and the authors')."""
    alias = resolve_alias(key)
    if alias is not None:
        given, (key, convert) = key, alias
        if origins.get(key) == origin != "command line":
            raise UserError(f"{origin}: {key} is given twice (once as {given}, the authors' name for it)")
    elif origins.get(key) == origin != "command line":
        raise UserError(f"{origin}: {key} is given twice (once under the authors' name for it)")
    node = root
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], CN):
            raise UserError(f"{origin}: unknown config key {'.'.join(parents[: i + 1])}")
        node = node[part]
    if leaf not in node:
        raise UserError(f"{origin}: unknown config key {key}")
    if isinstance(node[leaf], CN):
        raise UserError(f"{origin}: {key} is a section, got {shown(value)}")
    value = _coerce(value, node[leaf], key, origin)
    node[leaf] = convert(value) if alias is not None else value
    origins[key] = origin


def _merge_dict(root: CN, values: dict, origin: str, origins: dict[str, str], prefix: str = "") -> None:
    """Merge a YAML mapping (sections of sections of values) into ``root``."""
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            _merge_dict(root, value, origin, origins, key + ".")
        else:
            _set(root, key, value, origin, origins)


def _parse_value(text: str):
    """A command-line value: a Python literal when it is one (numbers, booleans, lists), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return text


def merge_overrides(cfg: CN, opts: list[str], origins: dict[str, str] | None = None) -> None:
    """Merge ``["KEY", "VALUE", ...]`` pairs from the command line into ``cfg`` (in place); ``origins``
    records which keys they set."""
    if len(opts) % 2:
        raise UserError(f"command line: overrides come as KEY VALUE pairs, {opts[-1]!r} has no value")
    for key, text in zip(opts[0::2], opts[1::2]):
        _set(cfg, key, _parse_value(text), "command line", {} if origins is None else origins)


def _refuse_repeated_keys(node: yaml.Node, path: str, prefix: str = "", walked: set | None = None) -> None:
    """A key given twice in one YAML mapping is a UserError naming it: YAML keeps the last one silently, so a
    repeated section would drop every key of the first. (Each node is walked once: YAML aliases share
    nodes.)"""
    walked = set() if walked is None else walked
    if not isinstance(node, yaml.MappingNode) or id(node) in walked:
        return
    walked.add(id(node))
    seen = set()
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        if key in seen:
            raise UserError(f"{path}: {key} is given twice (again at line {key_node.start_mark.line + 1}); "
                            f"merge them into one")
        seen.add(key)
        _refuse_repeated_keys(value_node, path, key + ".", walked)


def _read_yaml(path: str) -> dict:
    """The mapping of the YAML file ``path``; one-line UserErrors for a file that is missing, not a regular
    file, not UTF-8 text, not YAML, or not a mapping."""
    if not os.path.exists(path):
        raise UserError(f"config file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"config file {path} is not a regular file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8); give a YAML config") from None
    loader = yaml.SafeLoader(text)  # no !!python tags
    try:
        node = loader.get_single_node()
        if node is not None:
            _refuse_repeated_keys(node, path)
        values = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    finally:
        loader.dispose()
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config sections")
    return values


def load_config(config_file: str | None = None, opts: list[str] | None = None, freeze: bool = True) -> CN:
    """Defaults, then ``config_file`` (YAML), then ``opts`` (``KEY VALUE`` pairs); validated and frozen."""
    cfg = get_default_config()
    origins: dict[str, str] = {}
    if config_file:
        _merge_dict(cfg, _read_yaml(config_file), config_file, origins)
    merge_overrides(cfg, list(opts or []), origins)
    validate(cfg, origins)
    if freeze:
        cfg.freeze()
    return cfg


def saved_values(text: str | None) -> dict[str, object]:
    """Every key's value in the config YAML ``text`` a checkpoint carries, typed like the defaults; a key it
    lacks (added since it was written) has its default, a key it holds that no longer exists is left out."""
    try:
        loaded = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        loaded = {}
    saved: dict[str, object] = {}

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                saved[f"{prefix}{name}"] = value

    if isinstance(loaded, dict):
        walk(loaded, "")
    values = {}
    for key, default in flat_items(_C):
        try:
            values[key] = _coerce(saved[key], default, key, "checkpoint") if key in saved else default
        except UserError:  # a value of a former type: compared as it was written
            values[key] = saved[key]
    return values
