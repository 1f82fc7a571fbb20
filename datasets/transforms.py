"""Per-modality image transforms (docs/datasets.md), their multi-modal wrapper, and the part that runs on the
device.

The loader ships uint8 images (a quarter of float32's bytes through shared memory and over the bus);
:func:`normalise` and :func:`erase` finish the transform on the training device.

Train: resize (bicubic) -> flip -> pad -> random crop [loader, uint8] -> normalise -> random erasing (timm's
pixel mode: one box of standard normal values) [device].
Test: resize (bilinear, as the reference code, so released checkpoints reproduce) [loader] -> normalise [device].

Against the float pipeline that did everything in the loader (ToTensor, Normalize, timm's RandomErasing on
the normalised image): :func:`normalise` performs the same float32 operations, so the images are bit for bit
the same; the erased boxes are drawn by timm's own code with the same random calls in the same order, so
every flip, crop and box is the same. Only the values inside a box differ: i.i.d. standard normal in both,
now generated on the device from a per-box key (:func:`counter_normal`).
"""

import random
from collections.abc import Mapping, Sequence

import torch
import torchvision.transforms as T
from PIL import Image
from timm.data.random_erasing import RandomErasing

__all__ = ["ErasingBox", "MultiModalTransform", "build_image_transform", "counter_normal", "erase", "normalise"]


def build_image_transform(train: bool, size: Sequence[int], flip_prob: float = 0.5, padding: int = 10) -> T.Compose:
    """The geometric transform of one modality's PIL image, to a uint8 ``3 x H x W`` tensor."""
    size = tuple(size)
    if not train:
        return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.PILToTensor()])
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_prob),
        T.Pad(padding),
        T.RandomCrop(size),
        T.PILToTensor(),
    ])


class _BoxRecorder:
    """Stands in for the image in timm's ``RandomErasing._erase``: keeps the box it fills and the values it
    drew for it instead of writing them."""

    def __init__(self):
        self.box: tuple[int, int, int, int] | None = None
        self.values: torch.Tensor | None = None

    def __setitem__(self, index, values: torch.Tensor) -> None:
        _, rows, cols = index
        self.box = (rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        self.values = values


class ErasingBox:
    """timm's RandomErasing (pixel mode, one box of 2-33% of the image, aspect 0.3-3.3) drawn in the loader
    and applied on the device.

    ``ErasingBox(p)((C, H, W))`` runs timm's own parameter draws (Python's generator) and value draw (torch's),
    exactly as erasing the normalised image would, and returns int64 ``[top, left, h, w, key]`` (all zero:
    no box). The key is the bit pattern of the first two values drawn; :func:`erase` fills the box with
    standard normal values generated from it on the device.
    """

    def __init__(self, probability: float):
        self.erasing = RandomErasing(probability=probability, mode="pixel", max_count=1, device="cpu")

    def __call__(self, shape: Sequence[int]) -> torch.Tensor:
        chan, height, width = shape
        recorder = _BoxRecorder()
        self.erasing._erase(recorder, chan, height, width, torch.float32)
        if recorder.box is None:
            return torch.zeros(5, dtype=torch.int64)
        key = recorder.values.reshape(-1)[:2].view(torch.int64)  # at least C = 3 values are drawn
        return torch.tensor([*recorder.box, int(key)], dtype=torch.int64)


class MultiModalTransform:
    """Applies the image transform to every modality of a sample; with ``erase_prob`` (training) also draws
    each modality's erased box (:class:`ErasingBox`) right after its geometry, into ``out["erase"][modality]``.

    ``sync=False`` (the reference behaviour) draws fresh random parameters per modality. ``sync=True``
    replays the same random stream for every modality: all modalities are resized to one size first, so
    they consume the random generators identically and get the same flip, crop and erased box (and values).
    """

    def __init__(self, transform: T.Compose, sync: bool = False, erase_prob: float | None = None):
        self.transform = transform
        self.sync = sync
        self.erasing = ErasingBox(erase_prob) if erase_prob is not None else None

    def _one(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = self.transform(img)
        return image, (self.erasing(image.shape) if self.erasing is not None else None)

    def __call__(self, images: Mapping[str, Image.Image]) -> dict:
        if not self.sync:
            done = {m: self._one(img) for m, img in images.items()}
        else:
            py_state, torch_state = random.getstate(), torch.get_rng_state()
            done = {}
            for m, img in images.items():
                random.setstate(py_state)
                torch.set_rng_state(torch_state)
                done[m] = self._one(img)
        out: dict = {m: image for m, (image, _) in done.items()}
        if self.erasing is not None:
            out["erase"] = {m: box for m, (_, box) in done.items()}
        return out


# ---------------------------------------------------------------------------------------------------
# On the device
# ---------------------------------------------------------------------------------------------------
def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 ``(x / 255 - mean) / std``, with ``mean`` and ``std`` float32
    (C, 1, 1) tensors on the images' device: the operations of torchvision's ToTensor and Normalize, hence
    their values bit for bit (float32 division and subtraction are correctly rounded on CPUs and GPUs alike)."""
    return images.to(torch.float32).div(255).sub(mean).div(std)


# splitmix64 (Steele, Lea and Flood, 2014) constants as signed int64: torch's int64 arithmetic wraps
_GAMMA = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def counter_normal(keys: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal float32 values (len(keys), *shape), a pure function of each int64 key and the element's
    position: the same on every device, batch split and run. Element i of key k is splitmix64's output for
    the state ``k + (i + 1) * gamma``; its top 24 bits and the next 24 make two uniforms for Box-Muller."""
    count = 1
    for n in shape:
        count *= n
    index = torch.arange(1, count + 1, dtype=torch.int64, device=keys.device)
    z = keys.to(torch.int64)[:, None] + index[None, :] * _GAMMA             # (K, N)
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    u1 = (_shift_right(z, 40) + 1).to(torch.float32) * 2.0**-24                 # (0, 1]
    u2 = (_shift_right(z, 16) & 0xFFFFFF).to(torch.float32) * 2.0**-24         # [0, 1)
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
    return normal.reshape(len(keys), *shape)


def erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, C, H, W) with each ``boxes`` row ``[top, left, h, w, key]`` (B, 5) filled by
    :func:`counter_normal` values of its key (rows with h = 0 leave their image as it is)."""
    B, C, H, W = images.shape
    top, left, height, width, key = boxes.unbind(1)
    rows = torch.arange(H, device=images.device)[None, :]
    cols = torch.arange(W, device=images.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])         # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])        # (B, W)
    inside = in_rows[:, None, :, None] & in_cols[:, None, None, :]              # (B, 1, H, W)
    return torch.where(inside, counter_normal(key, (C, H, W)).to(images.dtype), images)
