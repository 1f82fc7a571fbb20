"""Per-modality image transforms (docs/datasets.md) and their multi-modal wrapper.

Train: resize (bicubic) -> flip -> pad -> random crop -> normalise -> random erasing (timm, pixel mode).
Test: resize (bilinear, as the reference code, so released checkpoints reproduce) -> normalise.
"""

import random
from collections.abc import Mapping, Sequence

import torch
import torchvision.transforms as T
from PIL import Image
from timm.data.random_erasing import RandomErasing

__all__ = ["MultiModalTransform", "build_image_transform"]


def build_image_transform(train: bool, size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                          flip_prob: float = 0.5, padding: int = 10, erase_prob: float = 0.5) -> T.Compose:
    """The transform of one modality's PIL image to a normalised ``3 x H x W`` tensor."""
    size = tuple(size)
    normalise = [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if not train:
        return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), *normalise])
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_prob),
        T.Pad(padding),
        T.RandomCrop(size),
        *normalise,
        RandomErasing(probability=erase_prob, mode="pixel", max_count=1, device="cpu"),
    ])


class MultiModalTransform:
    """Applies the image transform to every modality of a sample.

    ``sync=False`` (the reference behaviour) draws fresh random parameters per modality. ``sync=True``
    replays the same random stream for every modality: all modalities are resized to one size first, so
    they consume the random generators identically and get the same flip, crop and erased box.
    """

    def __init__(self, transform: T.Compose, sync: bool = False):
        self.transform = transform
        self.sync = sync

    def __call__(self, images: Mapping[str, Image.Image]) -> dict[str, torch.Tensor]:
        if not self.sync:
            return {m: self.transform(img) for m, img in images.items()}
        py_state, torch_state = random.getstate(), torch.get_rng_state()
        out = {}
        for m, img in images.items():
            random.setstate(py_state)
            torch.set_rng_state(torch_state)
            out[m] = self.transform(img)
        return out
