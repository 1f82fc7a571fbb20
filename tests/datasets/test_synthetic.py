import hashlib
import os

import numpy as np
from PIL import Image

from datasets import make_dataset
from datasets.synthetic import NIGHT_CAMERAS, generate


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
