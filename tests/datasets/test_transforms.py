"""Per-modality transforms against independent PIL computations, and the synchronised mode (SYNC_AUG)."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import MultiModalTransform, build_image_transform

MEAN = STD = (0.5, 0.5, 0.5)


def _noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _reference(img: Image.Image, size, resample) -> np.ndarray:
    """PIL resize to ``size`` (H, W), scaled to [0, 1] and normalised with mean = std = 0.5; C x H x W."""
    arr = np.asarray(img.resize((size[1], size[0]), resample), dtype=np.float64) / 255.0
    return ((arr - 0.5) / 0.5).transpose(2, 0, 1)


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("source, size", [((300, 150), (256, 128)), ((64, 40), (256, 128)),
                                          ((100, 310), (128, 256)), ((128, 256), (128, 256))])
def test_test_transform_is_pil_bilinear_resize(source, size):
    """Test time: PIL bilinear resize then normalise, as the reference (released checkpoints reproduce)."""
    img = _noise_image(*source)
    out = build_image_transform(False, size, MEAN, STD)(img)
    assert out.shape == (3, *size) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _reference(img, size, Image.BILINEAR), atol=1e-6)


def test_test_transform_is_not_bicubic():
    """The check above can tell the two filters apart on this image."""
    img = _noise_image(300, 150)
    out = build_image_transform(False, (256, 128), MEAN, STD)(img).numpy()
    assert np.abs(out - _reference(img, (256, 128), Image.BICUBIC)).max() > 0.05


def test_train_transform_without_randomness_is_bicubic_resize():
    img = _noise_image(200, 90)
    transform = build_image_transform(True, (64, 32), MEAN, STD, flip_prob=0.0, padding=0, erase_prob=0.0)
    np.testing.assert_allclose(transform(img).numpy(), _reference(img, (64, 32), Image.BICUBIC), atol=1e-6)


def test_train_transform_is_a_crop_of_the_padded_flipped_resize():
    """Every output (erasing off) equals one window of the zero-padded, possibly flipped, bicubic resize."""
    img = _noise_image(90, 50)
    size, pad = (32, 16), 4
    base = _reference(img, size, Image.BICUBIC)
    candidates = {}
    for flipped in (False, True):
        padded = np.pad(base[:, :, ::-1] if flipped else base, ((0, 0), (pad, pad), (pad, pad)),
                        constant_values=-1.0)  # zero pixels normalise to -1
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                candidates[(flipped, top, left)] = padded[:, top:top + size[0], left:left + size[1]]
    transform = build_image_transform(True, size, MEAN, STD, flip_prob=0.5, padding=pad, erase_prob=0.0)
    seen = set()
    for seed in range(40):
        _seed(seed)
        out = transform(img).numpy()
        assert out.shape == (3, *size)
        assert out.min() >= -1.0 and out.max() <= 1.0
        matches = [k for k, c in candidates.items() if np.allclose(out, c, atol=1e-6)]
        assert matches, f"seed {seed}: output is no crop of the padded resize"
        seen.update(matches)
    assert {k[0] for k in seen} == {False, True}  # both flips drawn
    assert len({k[1:] for k in seen}) > 10  # many offsets drawn


def test_random_erasing_area_and_pixels():
    """Erasing replaces one box of 2-33% of the image by random normal pixels; the rest is untouched."""
    img = _noise_image(64, 32)
    size = (64, 32)
    fractions = []
    for seed in range(30):
        _seed(seed)
        plain = build_image_transform(True, size, MEAN, STD, flip_prob=0.0, padding=0, erase_prob=0.0)(img)
        _seed(seed)
        erased = build_image_transform(True, size, MEAN, STD, flip_prob=0.0, padding=0, erase_prob=1.0)(img)
        changed = (erased != plain).any(0).numpy()
        rows, cols = np.nonzero(changed)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.mean() > 0.99  # one rectangle
        fractions.append(changed.mean())
    assert min(fractions) >= 0.015 and max(fractions) <= 0.34
    assert max(fractions) - min(fractions) > 0.1  # the area is random


def _images(content: dict[str, Image.Image]) -> dict[str, Image.Image]:
    return {m: img.copy() for m, img in content.items()}


def test_sync_aug_keeps_modalities_aligned():
    """Same flip, crop and erased box (with the same erased pixels) for identical-content modalities."""
    img = _noise_image(70, 40)
    transform = build_image_transform(True, (48, 24), MEAN, STD, padding=6, erase_prob=0.8)
    sync = MultiModalTransform(transform, sync=True)
    outputs = []
    for seed in range(12):
        _seed(seed)
        out = sync(_images({"RGB": img, "NI": img, "TI": img}))
        assert torch.equal(out["RGB"], out["NI"]) and torch.equal(out["RGB"], out["TI"])
        outputs.append(out["RGB"])
    assert len({o.numpy().tobytes() for o in outputs}) == 12  # still random from sample to sample


def test_sync_aug_on_different_content_same_geometry():
    """NI = RGB with channels permuted: the synchronised outputs are the same permutation of each other."""
    rgb = _noise_image(70, 40)
    ni = Image.fromarray(np.asarray(rgb)[:, :, [2, 0, 1]])
    sync = MultiModalTransform(build_image_transform(True, (48, 24), MEAN, STD, padding=6, erase_prob=0.0),
                               sync=True)
    for seed in range(8):
        _seed(seed)
        out = sync({"RGB": rgb, "NI": ni})
        assert torch.equal(out["NI"], out["RGB"][[2, 0, 1]])


def test_default_draws_independently_per_modality():
    img = _noise_image(70, 40)
    independent = MultiModalTransform(build_image_transform(True, (48, 24), MEAN, STD, padding=6, erase_prob=0.5))
    differing = 0
    for seed in range(10):
        _seed(seed)
        out = independent(_images({"RGB": img, "NI": img, "TI": img}))
        differing += not (torch.equal(out["RGB"], out["NI"]) and torch.equal(out["NI"], out["TI"]))
    assert differing >= 8


def test_test_transform_same_for_every_modality():
    img = _noise_image(70, 40)
    out = MultiModalTransform(build_image_transform(False, (48, 24), MEAN, STD))(
        _images({"RGB": img, "NI": img, "TI": img}))
    assert list(out) == ["RGB", "NI", "TI"]
    assert torch.equal(out["RGB"], out["NI"]) and torch.equal(out["RGB"], out["TI"])
