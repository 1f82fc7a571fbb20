"""OpenAI's CLIP weights for the backbone (DESIGN §3).

- :func:`download_openai`: ``ViT-B-16.pt`` downloaded once into a cache folder, SHA256-verified; a partial or
  corrupt file is never used.
- :func:`read_openai_state_dict`: the tensors of OpenAI's TorchScript archive, or of a plain state dict with
  ``visual.*`` keys. The archive is read without executing it (see :class:`_TensorUnpickler`).
- :func:`openai_to_timm`, :func:`resize_position_grid`: timm's key conversion, then the position grid
  resized as CLIP-ReID / MHCF do (bilinear, no antialias), so our encoder gives their tokens.
- :func:`load_openai_weights`: all of the above into a :class:`~model.backbone.ClipViT`, strictly.
"""

import collections
import hashlib
import logging
import math
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import _convert_openai_clip
from torch import nn
from tqdm import tqdm

from utils.errors import UserError

logger = logging.getLogger(__name__)

#: OpenAI's released checkpoints by MODEL.NAME; the SHA256 of each file is its URL's second-to-last segment.
OPENAI_URLS = {
    "ViT-B-16": "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
}

#: Converted OpenAI keys our backbone does not have: ``visual.proj``, the projection into CLIP's joint
#: image-text space (timm names it head.weight / head.bias). ReID uses the tokens before it.
IGNORED_KEYS = ("head.weight", "head.bias")

_DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is abandoned
_CHUNK = 1 << 20


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/mhcf``, by default ``~/.cache/mhcf``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mhcf")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_openai(arch: str = "ViT-B-16", cache_dir: str | None = None) -> str:
    """Path of OpenAI's checkpoint for ``arch`` in ``cache_dir`` (default :func:`default_cache_dir`),
    downloaded first when it is missing or fails its SHA256 check.

    The download goes to a temporary ``.part`` file in the cache folder, is verified, and only then
    renamed to its final name, so an interrupted or corrupt download is never used.
    """
    if arch not in OPENAI_URLS:
        raise UserError(f"MODEL.PRETRAIN_PATH 'openai' has weights for MODEL.NAME {', '.join(OPENAI_URLS)} only, "
                        f"not {arch!r}; use a local file or '' (random initialisation)")
    url = OPENAI_URLS[arch]
    expected = url.rsplit("/", 2)[-2]
    folder = cache_dir or default_cache_dir()
    target = os.path.join(folder, url.rsplit("/", 1)[-1])
    if os.path.isfile(target):
        if sha256_of(target) == expected:
            return target
        logger.warning("%s fails its SHA256 check (a partial or corrupt file): downloading it again", target)
    os.makedirs(folder, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, target)
        if digest != expected:
            raise UserError(f"the download of {url} has SHA256 {digest}, expected {expected}: it was discarded; "
                            f"try again, or put a verified copy of the file at {target}")
        os.replace(part, target)
    finally:
        if os.path.exists(part):
            os.remove(part)
    logger.info("downloaded %s to %s (SHA256 verified)", url, target)
    return target


def _fetch(url: str, out, target: str) -> str:
    """Stream ``url`` into the open file ``out``; return the SHA256 of what was written."""
    digest = hashlib.sha256()
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(target), leave=False) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"cannot download {url} ({reason}); without network, fetch the file elsewhere and put "
                        f"it at {target} (MODEL.PRETRAIN_CACHE sets the folder), or set MODEL.PRETRAIN_PATH to "
                        f"a local copy") from None
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Reading OpenAI's checkpoints
# ---------------------------------------------------------------------------------------------------
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
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file fails inside the unpickler in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable CLIP checkpoint ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a CLIP checkpoint (it holds a {type(state).__name__}, not a state dict)")
    return state


# ---------------------------------------------------------------------------------------------------
# Conversion to our backbone
# ---------------------------------------------------------------------------------------------------
def openai_to_timm(state: dict[str, torch.Tensor], model: nn.Module, prefix: str = "visual.",
                   path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The image tower under ``prefix`` (OpenAI's names) in timm's names, with timm's own converter, minus
    :data:`IGNORED_KEYS`. Tensors keep their dtype."""
    if not any(k.startswith(prefix) for k in state):
        raise UserError(f"{path}: no '{prefix}*' keys; expected OpenAI's CLIP image tower")
    converted = _convert_openai_clip(state, model, prefix=prefix)
    return {k: v for k, v in converted.items() if k not in IGNORED_KEYS}


def resize_position_grid(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + n*n, C)`` position embeddings -> ``(1, 1 + H*W, C)``: the class position is kept, the square
    grid is resized bilinearly, ``align_corners=False``, no antialias -- as CLIP-ReID's / MHCF's
    ``resize_pos_embed``, which interpolates the checkpoint's tensor in its own dtype (float16 for OpenAI's
    file); computing in float32 and rounding back gives exactly that."""
    cls_pos, old = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(old.shape[1])
    if (side, side) == tuple(grid):
        return pos_embed
    C = old.shape[-1]
    old = old.reshape(1, side, side, C).permute(0, 3, 1, 2).float()                     # (1, C, n, n)
    new = F.interpolate(old, size=tuple(grid), mode="bilinear", align_corners=False, antialias=False)
    new = new.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], C).to(pos_embed.dtype)  # (1, H*W, C)
    return torch.cat([cls_pos, new], dim=1)


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """UserError naming the first missing, unexpected and misshapen keys of ``state`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{label} {len(keys)} {noun} ({sep.join(keys[:3])}{sep + '...' if len(keys) > 3 else ''})"
                for label, noun, sep, keys in (("missing", "keys", ", ", missing),
                                               ("unexpected", "keys", ", ", unexpected),
                                               ("", "shape mismatches", "; ", shapes)) if keys]
    if problems:
        raise UserError(f"{path} does not fit {what}: {'; '.join(p.strip() for p in problems)}")


def load_openai_weights(model: nn.Module, pretrained: str, cache_dir: str | None = None) -> None:
    """Load OpenAI's CLIP image tower into ``model`` (a :class:`~model.backbone.ClipViT`): ``pretrained`` is
    ``"openai"`` (downloaded once, see :func:`download_openai`) or a local checkpoint."""
    path = download_openai(model.arch, cache_dir) if pretrained == "openai" else pretrained
    state = openai_to_timm(read_openai_state_dict(path), model, path=path)
    side = 0
    if "pos_embed" in state:  # absent: check_state_fits names it
        positions = state["pos_embed"].shape[1] - 1
        side = math.isqrt(positions)
        if side * side != positions:
            raise UserError(f"{path}: {positions} positions do not form OpenAI's square grid")
        state["pos_embed"] = resize_position_grid(state["pos_embed"], model.grid_size)
    check_state_fits(model, state, path, f"the {model.arch} backbone")
    model.load_state_dict(state, strict=True)
    logger.info("loaded CLIP %s weights from %s (position grid %dx%d -> %dx%d)", model.arch, path, side, side,
                *model.grid_size)
