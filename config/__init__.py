"""Configuration: yacs defaults (``config/defaults.py``) merged with a YAML file and ``KEY VALUE`` pairs."""

import ast
import os

import yaml
from yacs.config import CfgNode as CN

from utils.errors import UserError

from .authors import Unmapped, their_value, translate
from .defaults import _C
from .validate import flat_items, shown, validate

__all__ = ["get_default_config", "load_config", "mapped_settings", "merge_overrides", "saved_values"]

#: Where a loaded config keeps the notes of the settings read under the authors' names or spellings (an
#: attribute, not a key: yacs keeps its own flags the same way, and clone() copies it).
_MAPPED = "_mapped_settings"

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
    raise _Problem(f"{key} must be {type(default).__name__} (like {default!r}), got {shown(value)}")


def _set(root: CN, key: str, value) -> tuple[str | None, str | None]:
    """Set the leaf ``key`` (dotted) to ``value``, converted to the type of its default. A setting of the
    authors' configs is read as ours (config/authors.py). Returns the key set (ours; None when the setting
    was left out) and the note of what was done. A _Problem naming ``key`` otherwise."""
    try:
        mapped = translate(key, value)
    except Unmapped as exc:
        raise _Problem(str(exc)) from None
    if mapped is not None and mapped.key is None:
        return None, mapped.note                # a key without a counterpart, harmless: left out
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
        raise _Problem(f"{key} is a section, got {shown(value)}")
    node[leaf] = _coerce(read, node[leaf], key)
    return key, note


def _set_all(root: CN, settings: list[tuple[str, object]], origin: str, origins: dict[str, str]) -> None:
    """Set every ``(key, value)``; one UserError listing every setting that cannot be set (never one per run).
    The notes of the settings read under the authors' names or spellings are kept on ``root``; ``origins``
    records which keys ``origin`` set. A file that sets one key twice (under our name and the authors') is
    refused: which one would win is not the user's choice."""
    problems, notes, given = [], [], {}
    for key, value in settings:
        try:
            ours, note = _set(root, key, value)
        except _Problem as exc:
            problems.append(str(exc))
            continue
        if ours is not None and ours in given and origin != "command line":
            problems.append(f"{ours} is given twice (as {given[ours]} and as {key})")
        if ours is not None:
            given[ours] = key
            origins[ours] = origin
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
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return text


def merge_overrides(cfg: CN, opts: list[str], origins: dict[str, str] | None = None) -> None:
    """Merge ``["KEY", "VALUE", ...]`` pairs from the command line into ``cfg`` (in place); ``origins``
    records which keys they set."""
    if len(opts) % 2:
        raise UserError(f"command line: overrides come as KEY VALUE pairs, {opts[-1]!r} has no value")
    _set_all(cfg, [(key, _parse_value(text)) for key, text in zip(opts[0::2], opts[1::2])], "command line",
             {} if origins is None else origins)


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
        _set_all(cfg, _flatten(_read_yaml(config_file)), config_file, origins)
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
            values[key] = _coerce(saved[key], default, key) if key in saved else default
        except _Problem:  # a value of a former type: compared as it was written
            values[key] = saved[key]
    return values
