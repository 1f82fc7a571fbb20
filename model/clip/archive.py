"""Reading OpenAI's CLIP checkpoints without executing them: their TorchScript archive as released, or a plain
state dict with ``visual.*`` keys (:func:`read_openai_state_dict`).

``torch.load(weights_only=True)`` refuses TorchScript archives, and ``torch.jit.load`` would run the code
they carry; :class:`_TensorUnpickler` reads the archive's ``data.pkl`` with an allow-list of globals instead.
"""

import collections
import os
import pickle
import zipfile

import torch

from utils.errors import UserError

from ..state_dict import check_tensors, load_weights_only

__all__ = ["read_openai_state_dict"]

#: Storage types a TorchScript archive names, by their pickled class name.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript object (a module): it only keeps its attributes."""

    def __setstate__(self, state) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """A tensor viewing ``storage`` (bounds-checked by ``set_``), as torch's ``_rebuild_tensor_v2``."""
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped_storage(), offset, size, stride)


def _restore_type_tag(value, type_str):
    return value


class _TensorUnpickler(pickle.Unpickler):
    """Reads the ``data.pkl`` of a TorchScript archive without executing anything from it.

    Like ``torch.load(weights_only=True)``, it resolves only an allow-list of globals: tensor rebuilding,
    storage types, ``OrderedDict`` and TorchScript's list/type-tag helpers (replaced by inert equivalents).
    TorchScript classes (``__torch__.*``) become :class:`_ScriptObject` records of their attributes; their
    code is never compiled or run. Anything else is refused.
    """

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
        **{("torch.jit._pickle", f"build_{kind}list"): list for kind in ("int", "double", "bool", "tensor")},
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not tensor data")

    def persistent_load(self, pid):
        # ("storage", type, key, location, numel); older TorchScript writers append a sixth entry, the view
        # metadata of torch's legacy format, always None in their archives (torch.jit.load accepts both)
        if not (isinstance(pid, tuple) and pid[:1] == ("storage",)
                and (len(pid) == 5 or (len(pid) == 6 and pid[5] is None))):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {dtype!r}")
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} elements, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _collect_tensors(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """State-dict entries of a tree of :class:`_ScriptObject` records (tensor attributes, by dotted path)."""
    for name, value in getattr(obj, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out)


def _read_torchscript(path: str, archive: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    pkl = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkl) != 1:
        raise UserError(f"{path}: a TorchScript archive without a single <name>/data.pkl")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
        raise UserError(f"{path}: big-endian archives are not supported")
    with archive.open(pkl[0]) as f:
        try:
            root = _TensorUnpickler(f, archive, prefix).load()
        except (pickle.UnpicklingError, AttributeError, IndexError, KeyError, RuntimeError, EOFError, TypeError,
                ValueError, zipfile.BadZipFile) as exc:  # malformed data, whatever its shape
            raise UserError(f"{path}: unreadable TorchScript archive ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", state)
    check_tensors(state, path)
    return state


def read_openai_state_dict(path: str) -> dict[str, torch.Tensor]:
    """All tensors of an OpenAI CLIP checkpoint: their TorchScript archive (as released) or a plain state dict
    saved with ``torch.save``; keys as in OpenAI's model (``visual.conv1.weight``, ...)."""
    if not os.path.isfile(path):
        raise UserError(f"MODEL.PRETRAIN_PATH: file not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist()):
                return _read_torchscript(path, archive)
    state = load_weights_only(path, "CLIP checkpoint")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a CLIP checkpoint (it holds a {type(state).__name__}, not a state dict)")
    check_tensors(state, path)
    return state
