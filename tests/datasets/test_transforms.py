"""Per-modality transforms against independent PIL computations, the synchronised mode (SYNC_AUG), and the
split between the loader (uint8) and the device (normalisation, erasing) against the float pipeline that
did everything in the loader."""

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data.random_erasing import RandomErasing

from datasets.transforms import MultiModalTransform, build_image_transform, counter_normal, erase, normalise

MEAN = STD = (0.5, 0.5, 0.5)
MEAN_T = STD_T = torch.full((3, 1, 1), 0.5)


def _noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _float(image: torch.Tensor) -> torch.Tensor:
    assert image.dtype == torch.uint8
    return normalise(image, MEAN_T, STD_T)


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
    out = _float(build_image_transform(False, size)(img))
    assert out.shape == (3, *size) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _reference(img, size, Image.BILINEAR), atol=1e-6)


def test_test_transform_is_not_bicubic():
    """The check above can tell the two filters apart on this image."""
    img = _noise_image(300, 150)
    out = _float(build_image_transform(False, (256, 128))(img)).numpy()
    assert np.abs(out - _reference(img, (256, 128), Image.BICUBIC)).max() > 0.05


def test_train_transform_without_randomness_is_bicubic_resize():
    img = _noise_image(200, 90)
    transform = build_image_transform(True, (64, 32), flip_prob=0.0, padding=0)
    np.testing.assert_allclose(_float(transform(img)).numpy(), _reference(img, (64, 32), Image.BICUBIC), atol=1e-6)


def test_train_transform_is_a_crop_of_the_padded_flipped_resize():
    """Every output equals one window of the zero-padded, possibly flipped, bicubic resize."""
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
    transform = build_image_transform(True, size, flip_prob=0.5, padding=pad)
    seen = set()
    for seed in range(40):
        _seed(seed)
        out = _float(transform(img)).numpy()
        assert out.shape == (3, *size)
        matches = [k for k, c in candidates.items() if np.allclose(out, c, atol=1e-6)]
        assert matches, f"seed {seed}: output is no crop of the padded resize"
        seen.update(matches)
    assert {k[0] for k in seen} == {False, True}  # both flips drawn
    assert len({k[1:] for k in seen}) > 10  # many offsets drawn


@pytest.mark.parametrize("mean, std", [(MEAN, STD), ((0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711))])
def test_device_normalisation_equals_totensor_normalize_bit_for_bit(mean, std):
    img = _noise_image(37, 23, seed=3)
    expected = T.Normalize(mean, std)(T.ToTensor()(img))
    got = normalise(T.PILToTensor()(img), torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1))
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def _float_pipeline(size, pad, erase_prob) -> T.Compose:
    """The loader's transform before uint8 images: everything in the worker, erasing on the normalised image."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(0.5),
                      T.Pad(pad), T.RandomCrop(size), T.ToTensor(), T.Normalize(MEAN, STD),
                      RandomErasing(probability=erase_prob, mode="pixel", max_count=1, device="cpu")])


def _box_mask(box: torch.Tensor, size) -> torch.Tensor:
    top, left, h, w, _ = box.tolist()
    mask = torch.zeros(size, dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


@pytest.mark.parametrize("erase_prob", [0.0, 0.5, 1.0])
def test_uint8_loader_and_device_equal_the_float_pipeline_outside_the_erased_boxes(erase_prob):
    """Same seed, three modalities in turn: every pixel outside the boxes is bit for bit the float pipeline's,
    the boxes are exactly where it erased, and both leave Python's and torch's generators in the same state
    (so every later draw, of this sample or the next modality, is the same too)."""
    size, pad = (32, 16), 3
    images = {m: _noise_image(50, 30, seed=i) for i, m in enumerate(("RGB", "NI", "TI"))}
    old = MultiModalTransform(_float_pipeline(size, pad, erase_prob))
    new = MultiModalTransform(build_image_transform(True, size, padding=pad), erase_prob=erase_prob)
    plain = MultiModalTransform(_float_pipeline(size, pad, 0.0))
    erased_boxes = 0
    for seed in range(12):
        _seed(seed)
        expected = old(images)
        state = (random.getstate(), torch.get_rng_state())
        _seed(seed)
        got = new(images)
        assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])
        for m in images:
            box = got["erase"][m]
            inside = _box_mask(box, size)
            device_side = erase(_float(got[m])[None], box[None])[0]
            assert torch.equal(device_side[:, ~inside], expected[m][:, ~inside])
            unerased = _float(got[m])
            assert torch.equal((expected[m] != unerased).any(0), inside)   # the float pipeline erased the box
            assert torch.equal(device_side[:, inside], counter_normal(box[4:], (3, *size))[0][:, inside])
            erased_boxes += bool(inside.any())
        if erase_prob == 0.0:
            _seed(seed)
            assert all(torch.equal(v, expected[m]) for m, v in plain(images).items())
    assert (erased_boxes == 0) if erase_prob == 0.0 else (erased_boxes > 10)


def test_random_erasing_area_and_pixels():
    """Erasing replaces one box of 2-33% of the image by random normal pixels; the rest is untouched."""
    img = {"RGB": _noise_image(64, 32)}
    transform = MultiModalTransform(build_image_transform(True, (64, 32), flip_prob=0.0, padding=0), erase_prob=1.0)
    fractions = []
    for seed in range(30):
        _seed(seed)
        out = transform(img)
        plain = _float(out["RGB"])
        erased = erase(plain[None], out["erase"]["RGB"][None])[0]
        changed = (erased != plain).any(0).numpy()
        rows, cols = np.nonzero(changed)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.mean() > 0.99  # one rectangle
        fractions.append(changed.mean())
    assert min(fractions) >= 0.015 and max(fractions) <= 0.34
    assert max(fractions) - min(fractions) > 0.1  # the area is random


def _splitmix64_normal(key: int, index: int) -> float:
    """Element ``index`` of :func:`counter_normal` for ``key``, in Python integers (64-bit wrap by masking)."""
    mask = 2**64 - 1
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    u1, u2 = ((z >> 40) + 1) / 2**24, ((z >> 16) & 0xFFFFFF) / 2**24
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def test_counter_normal_is_splitmix64_box_muller_and_standard_normal():
    keys = torch.tensor([0, 1, -5, 2**62 + 12345, -(2**63)], dtype=torch.int64)
    values = counter_normal(keys, (3, 40, 20))
    assert values.shape == (5, 3, 40, 20) and values.dtype == torch.float32
    flat = values.reshape(5, -1)
    for k, key in enumerate(keys.tolist()):
        for index in (0, 1, 777, 2399):
            assert flat[k, index].item() == pytest.approx(_splitmix64_normal(key % 2**64, index), abs=1e-5)
    many = counter_normal(torch.arange(50), (4000,)).double()
    assert abs(many.mean()) < 0.01 and abs(many.std() - 1) < 0.01
    assert abs((many.abs() > 1.96).double().mean() - 0.05) < 0.005                  # normal tails
    assert abs(torch.corrcoef(many[:2])[0, 1]) < 0.05                             # keys independent


def _images(content: dict[str, Image.Image]) -> dict[str, Image.Image]:
    return {m: img.copy() for m, img in content.items()}


def test_sync_aug_keeps_modalities_aligned():
    """Same flip, crop and erased box (with the same erased pixels) for identical-content modalities."""
    img = _noise_image(70, 40)
    sync = MultiModalTransform(build_image_transform(True, (48, 24), padding=6), sync=True, erase_prob=0.8)
    outputs = []
    for seed in range(12):
        _seed(seed)
        out = sync(_images({"RGB": img, "NI": img, "TI": img}))
        assert torch.equal(out["RGB"], out["NI"]) and torch.equal(out["RGB"], out["TI"])
        assert torch.equal(out["erase"]["RGB"], out["erase"]["NI"]) and torch.equal(out["erase"]["RGB"],
                                                                                  out["erase"]["TI"])
        outputs.append(erase(_float(out["RGB"])[None], out["erase"]["RGB"][None]))
    assert len({o.numpy().tobytes() for o in outputs}) == 12  # still random from sample to sample


def test_sync_aug_on_different_content_same_geometry():
    """NI = RGB with channels permuted: the synchronised outputs are the same permutation of each other."""
    rgb = _noise_image(70, 40)
    ni = Image.fromarray(np.asarray(rgb)[:, :, [2, 0, 1]])
    sync = MultiModalTransform(build_image_transform(True, (48, 24), padding=6), sync=True, erase_prob=0.0)
    for seed in range(8):
        _seed(seed)
        out = sync({"RGB": rgb, "NI": ni})
        assert torch.equal(out["NI"], out["RGB"][[2, 0, 1]])


def test_default_draws_independently_per_modality():
    img = _noise_image(70, 40)
    independent = MultiModalTransform(build_image_transform(True, (48, 24), padding=6), erase_prob=0.5)
    differing = 0
    for seed in range(10):
        _seed(seed)
        out = independent(_images({"RGB": img, "NI": img, "TI": img}))
        differing += not (torch.equal(out["RGB"], out["NI"]) and torch.equal(out["NI"], out["TI"]))
    assert differing >= 8


def test_test_transform_same_for_every_modality():
    img = _noise_image(70, 40)
    out = MultiModalTransform(build_image_transform(False, (48, 24)))(_images({"RGB": img, "NI": img, "TI": img}))
    assert list(out) == ["RGB", "NI", "TI"]
    assert torch.equal(out["RGB"], out["NI"]) and torch.equal(out["RGB"], out["TI"])
