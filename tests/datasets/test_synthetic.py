import hashlib
import os

import numpy as np
from PIL import Image

from datasets import make_dataset
from datasets.synthetic import CAMERAS, NIGHT_CAMERAS, NUM_BUILDS, _render, body_masks, generate


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            h.update(os.path.relpath(os.path.join(dirpath, name), folder).encode())
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    generate(str(tmp_path / "a"), train_ids=3, test_ids=2, shots_per_camera=1)
    generate(str(tmp_path / "b"), train_ids=3, test_ids=2, shots_per_camera=1)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    generate(str(tmp_path / "c"), train_ids=3, test_ids=2, shots_per_camera=1, seed=1)
    assert _digest(str(tmp_path / "a")) != _digest(str(tmp_path / "c"))


def test_layout_and_reader(tiny_root):
    ds = make_dataset("Synthetic", tiny_root)
    assert ds.statistics() == {"train": (8, 64, 4), "query": (4, 32, 4), "gallery": (4, 32, 4)}
    assert ds.gallery is ds.query and ds.protocol == "camera"
    assert sorted({s.pid for s in ds.train}) == list(range(8))       # relabelled
    assert {s.pid for s in ds.query} == set(range(9, 13))             # raw ids
    first = ds.train[0]
    assert os.path.basename(first.paths["NI"]) == "000001_cam1_0_00.jpg" and first.camid == 0
    assert {m: os.path.basename(os.path.dirname(p)) for m, p in first.paths.items()} == {
        "RGB": "RGB", "NI": "NI", "TI": "TI"}
    images = ds.read(first)
    assert all(img.size == (32, 64) and img.mode == "RGB" for img in images.values())


def _torso_saturation(path: str) -> float:
    rgb = np.asarray(Image.open(path), dtype=float) / 255
    torso = rgb[18:34, 12:20]  # the torso's middle in every pose
    return float((torso.max(2) - torso.min(2)).mean())


def test_rgb_colour_is_lost_at_night(tiny_root):
    ds = make_dataset("Synthetic", tiny_root)
    day = [_torso_saturation(s.paths["RGB"]) for s in ds.train if s.camid + 1 not in NIGHT_CAMERAS]
    night = [_torso_saturation(s.paths["RGB"]) for s in ds.train if s.camid + 1 in NIGHT_CAMERAS]
    assert np.mean(day) > 3 * np.mean(night)


def test_the_build_sets_the_silhouette():
    """The shared cue: the build alone decides the legs' share of the height and the shoulder width; poses of
    different builds never overlap (builds 0, 1 short legs; 0, 2 slim)."""
    legs, width = {}, {}
    for build in range(NUM_BUILDS):
        masks = [body_masks(build, np.random.default_rng(i)) for i in range(50)]
        legs[build] = [m["legs"].any(1).sum() / m["body"].any(1).sum() for m in masks]
        width[build] = [m["torso"].sum(1).max() for m in masks]
    assert max(legs[0] + legs[1]) < min(legs[2] + legs[3])
    assert max(width[0] + width[2]) < min(width[1] + width[3])


def _silhouette_contrast(image: np.ndarray, body: np.ndarray) -> float:
    """Mean distance of the body's pixels to the background's mean colour, in units of the background's own
    spread (1: the body is lost in the background)."""
    pixels = image.astype(float)
    background = pixels[~body]
    centre = background.mean(0)
    return float(np.linalg.norm(pixels[body] - centre, axis=1).mean()
                 / np.linalg.norm(background - centre, axis=1).mean())


def test_every_modality_shows_the_silhouette():
    """NI and TI show the body clearly under every camera, RGB by day; at night RGB keeps a faint silhouette."""
    for cam in range(1, CAMERAS + 1):
        for i in range(8):
            attrs = (i % 6, (i + 1) % 6, (i + 2) % 6, i % NUM_BUILDS)
            body = body_masks(attrs[3], np.random.default_rng(i))["body"]
            images = _render(attrs, cam, np.random.default_rng(i))  # draws the same pose first
            contrast = {m: _silhouette_contrast(img, body) for m, img in images.items()}
            assert contrast["NI"] > 3 and contrast["TI"] > 3
            assert contrast["RGB"] > (1.1 if cam in NIGHT_CAMERAS else 2)
