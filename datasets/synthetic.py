"""Synthetic multi-modal persons, generated deterministically in the RGBNT201 layout on first use.

Every identity is a unique combination of three attributes, each visible in one modality only:

- RGB: the colour of the torso (one of 6 hues) -- but "night" cameras (3 and 4) lose colour: the torso
  shows a random grey there, so RGB carries no identity at night;
- NI: the texture of the torso (one of 6 flip-invariant patterns: stripes, checks, plain);
- TI: which body bands are hot (one of 6 patterns over head / chest / belly / legs), blurred.

With 6 values per attribute, an attribute is shared by about a sixth of the identities, so no single
modality can tell identities apart; together they can. Pose, size, position, brightness, noise and
backgrounds vary per image (camera nuisances). The RGBNT201 reader serves this folder unchanged.
"""

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from utils.errors import UserError

from .rgbnt201 import RGBNT201

logger = logging.getLogger(__name__)

HEIGHT, WIDTH = 64, 32
NUM_VALUES = 6  # values per attribute
TRAIN_IDS, TEST_IDS = 100, 40
CAMERAS = 4
NIGHT_CAMERAS = (3, 4)
SHOTS_PER_CAMERA = 4
SEED = 20261123
VERSION = "1"  # bump when the generator changes: a folder of another version is then refused, never deleted

# Torso hues for RGB (RGB in [0, 1]); distinct under the camera colour casts applied below.
_HUES = np.array([[0.85, 0.15, 0.15], [0.15, 0.7, 0.2], [0.15, 0.3, 0.9],
                  [0.9, 0.8, 0.1], [0.75, 0.2, 0.8], [0.1, 0.8, 0.85]])
# Hot body bands (head, chest, belly, legs) for TI.
_HOT_BANDS = [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 1), (1, 0, 1, 0), (0, 1, 0, 1), (1, 1, 1, 1)]


def _texture(kind: int, h: int, w: int, phase: int) -> np.ndarray:
    """NI torso texture in [0, 1]: horizontal stripes (wide, narrow), vertical stripes (wide, narrow),
    checks, plain. All are symmetric under a horizontal flip, so flip augmentation keeps them."""
    y, x = np.mgrid[0:h, 0:w]
    if kind == 0:
        return ((y + phase) // 4 % 2).astype(float)
    if kind == 1:
        return ((y + phase) // 2 % 2).astype(float)
    if kind == 2:
        return (np.abs(x - (w - 1) / 2) // 3 % 2).astype(float)
    if kind == 3:
        return (np.abs(x - (w - 1) / 2) // 1.5 % 2).astype(float)
    if kind == 4:
        return (((y + phase) // 3 + np.abs(x - (w - 1) / 2) // 3) % 2).astype(float)
    return np.full((h, w), 0.5)


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1 2 1]/4 blur, ``passes`` times, with edge replication."""
    for _ in range(passes):
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4
    return img


def _render(attrs: tuple[int, int, int], cam: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The three modality images (H x W x 3, uint8) of one person seen by camera ``cam`` (1-based)."""
    colour, texture, heat = attrs
    # body geometry, shared by the modalities of one sample (they are registered views)
    scale = rng.uniform(0.8, 1.0)
    body_h = int(HEIGHT * scale * 0.9)
    top = int(rng.integers(1, HEIGHT - body_h))
    cx = WIDTH / 2 + rng.uniform(-3, 3)
    half_w = rng.uniform(5.0, 7.5) * scale
    bands = np.cumsum([0, 0.16, 0.24, 0.2, 0.4]) * body_h + top  # head, chest, belly, legs
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    in_band = [(y >= bands[i]) & (y < bands[i + 1]) for i in range(4)]
    head = in_band[0] & (np.abs(x - cx) < half_w * 0.6)
    torso = (in_band[1] | in_band[2]) & (np.abs(x - cx) < half_w)
    legs = in_band[3] & (np.abs(x - cx) < half_w * 0.8) & (np.abs(x - cx) > 0.8)
    body = head | torso | legs
    parts = [head, in_band[1] & torso, in_band[2] & torso, legs]
    night = cam in NIGHT_CAMERAS
    out = {}

    # RGB: background of the camera, skin-tone head, coloured torso (grey at night), dark legs
    cast = np.array([[1.0, 1.0, 1.0], [1.05, 1.0, 0.9], [0.9, 0.95, 1.1], [1.0, 1.05, 1.0]])[cam - 1]
    bg = rng.uniform(0.35, 0.65) * cast + rng.normal(0, 0.08, (HEIGHT, WIDTH, 3))
    img = np.broadcast_to(bg, (HEIGHT, WIDTH, 3)).copy()
    torso_colour = np.full(3, rng.uniform(0.2, 0.8)) if night else _HUES[colour] * cast
    img[head] = np.array([0.8, 0.6, 0.5])
    img[torso] = torso_colour * rng.uniform(0.8, 1.1)
    img[legs] = rng.uniform(0.1, 0.3)
    if night:
        img = img * 0.35
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.08 if night else 0.04, img.shape)
    out["RGB"] = img

    # NI: grey, bright body on a dark background, textured torso; contrast varies per camera
    contrast = (0.5, 0.35, 0.45, 0.3)[cam - 1]
    ni = np.full((HEIGHT, WIDTH), rng.uniform(0.15, 0.3))
    ni[body] = 0.55
    torso_tex = _texture(texture, HEIGHT, WIDTH, int(rng.integers(0, 4)))
    ni[torso] = 0.45 + contrast * (torso_tex[torso] - 0.5)
    ni = ni + rng.normal(0, 0.05, ni.shape)
    out["NI"] = np.repeat(ni[..., None], 3, axis=2)

    # TI: warm body, hot bands, blurred; palette is grey (as released TI images)
    ti = np.full((HEIGHT, WIDTH), rng.uniform(0.1, 0.25))
    ti[body] = 0.45
    for part, hot in zip(parts, _HOT_BANDS[heat]):
        if hot:
            ti[part] = 0.85
    ti = _blur(ti[..., None], passes=2)[..., 0] + rng.normal(0, 0.04, ti.shape)
    out["TI"] = np.repeat(ti[..., None], 3, axis=2)
    return {m: (np.clip(v, 0, 1) * 255).round().astype(np.uint8) for m, v in out.items()}


def generate(dataset_dir: str, train_ids: int = TRAIN_IDS, test_ids: int = TEST_IDS,
             shots_per_camera: int = SHOTS_PER_CAMERA, seed: int = SEED) -> None:
    """Write the Synthetic dataset into ``dataset_dir`` (created atomically: a temporary folder is renamed).

    The defaults make the demo dataset; tests make miniature RGBNT201 trees with fewer ids and shots.
    """
    start = time.time()
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    rng = np.random.default_rng(seed)
    combos = [(c, t, h) for c in range(NUM_VALUES) for t in range(NUM_VALUES) for h in range(NUM_VALUES)]
    chosen = rng.choice(len(combos), size=train_ids + test_ids, replace=False)
    count = 0
    for split, pids in (("train_171", range(1, train_ids + 1)),
                        ("test", range(train_ids + 1, train_ids + test_ids + 1))):
        for modality in RGBNT201.modality_dirs.values():
            os.makedirs(os.path.join(tmp, split, modality))
        for pid in pids:
            attrs = combos[chosen[pid - 1]]
            for cam in range(1, CAMERAS + 1):
                for shot in range(shots_per_camera):
                    name = f"{pid:06d}_cam{cam}_0_{shot:02d}.jpg"
                    for modality, array in _render(attrs, cam, rng).items():
                        Image.fromarray(array).save(os.path.join(tmp, split, modality, name), quality=95)
                    count += 1
    with open(os.path.join(tmp, "VERSION"), "w") as f:
        f.write(VERSION)
    try:
        os.rename(tmp, dataset_dir)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("generated the Synthetic dataset (%d samples x 3 modalities) in %s in %.1f s",
                count, dataset_dir, time.time() - start)


class Synthetic(RGBNT201):
    """The embedded demo dataset: RGBNT201 layout, 100 train ids / 40 test ids, 4 cameras, 16 samples each."""

    name = "Synthetic"
    dirnames = ("Synthetic",)
    tree = RGBNT201.tree.replace("RGBNT201", "Synthetic")

    def __init__(self, root: str, modalities: Sequence[str] | None = None):
        dataset_dir = os.path.join(os.path.expanduser(root), self.dirnames[0])
        version = _generated_version(dataset_dir)
        if version not in (VERSION, None):  # made by another generator: the user decides what happens to it
            raise UserError(f"{dataset_dir} holds the Synthetic dataset of generator version {version}, this code "
                            f"makes version {VERSION}; move or delete that folder yourself (nothing in it was "
                            f"changed) and it is generated again, or set DATASETS.ROOT_DIR to another folder")
        if os.path.exists(dataset_dir) and not os.path.isdir(dataset_dir):
            raise UserError(f"{dataset_dir} is a file; the Synthetic dataset is generated into a folder of that name")
        if not os.path.isdir(dataset_dir):
            generate(dataset_dir)
        super().__init__(root, modalities)


def _generated_version(dataset_dir: str) -> str | None:
    """The generator version recorded in ``dataset_dir``; None when absent (no folder, or a user's own)."""
    try:
        with open(os.path.join(dataset_dir, "VERSION"), errors="replace") as f:
            return f.read(64).strip()
    except OSError:  # no folder, no VERSION file: not ours
        return None
