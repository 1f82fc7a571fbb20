"""Features of your own images: a checkpoint applied to folders of RGB / NI / TI images, saved for retrieval.

    python -m tools.extract_features --images my_images/ --config_file output/Synthetic/config.yaml \
        TEST.WEIGHT output/Synthetic/model_final.pth

``--images`` holds one sub-folder per modality, named as in MODEL.MODALITIES (``RGB/``, ``NI/``, ``TI/``); the
images of one sample have the same file name in each. Any subset of the modalities may be there: a whole folder
may be absent (no ``TI/``), or one sample may lack one file. A missing modality is handled as ``TEST.MISS``
handles it in evaluation (its normalised image is zeros), so the features match what test.py measures. Images
are resized to INPUT.SIZE_TEST. Writes into ``--out`` (default ``<OUTPUT_DIR>/features/<images folder name>/``):

- ``features.npy``: float32 ``(N, D)``, row i for sample i; L2-normalised when TEST.FEAT_NORM is True (the
  default: squared distances are then ``2 - 2 * q @ g.T``, as evaluation ranks);
- ``index.csv``: ``row``, ``name`` (the file name), ``modalities`` (those present, e.g. ``RGB+NI``) and one path
  column per modality (empty when missing);
- ``features.json``: the checkpoint and config used, the feature size, whether normalised, the counts per
  subset of modalities.

From Python, the same through :class:`FeatureExtractor` (after torchreid's ``FeatureExtractor``), from the
repository root:

    from tools.extract_features import FeatureExtractor
    extractor = FeatureExtractor("output/Synthetic/config.yaml", "output/Synthetic/model_final.pth", device="cpu")
    features = extractor({"RGB": ["a.jpg", "b.jpg"], "NI": ["a_ni.jpg", None]})  # (2, D); None: missing
    features, index = extractor.from_folder("my_images/")
"""

import argparse
import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from config import load_config
from datasets import IMAGE_EXTENSIONS, build_image_transform, read_image
from processor.cli import log_mapped_settings
from processor.device import BatchToDevice, resolve_device
from processor.evaluation import extract_features
from utils.errors import UserError
from utils.files import atomic_write, atomic_write_text
from utils.modalities import NONE, initial

from .common import add_config_arguments, load_trained_model, run_tool, tool_parser

__all__ = ["FeatureExtractor"]

logger = logging.getLogger(__name__)


class FeatureExtractor:
    """A trained MHCF as a function from images to test features.

    ``config_file``: the YAML the checkpoint was trained with (a run's ``config.yaml``, or ``configs/...`` with
    ``MODEL.HEAT.DIFFUSION stencil`` in ``opts`` for the authors' released checkpoints); ``weights``: the
    checkpoint (default TEST.WEIGHT of the config); ``device``: MODEL.DEVICE (default the config's); ``opts``:
    further ``KEY VALUE`` overrides. Calling it with ``{modality: [image, ...]}`` returns ``(N, D)`` float32 CPU
    features, in the order given; an image is a path or a PIL image; a modality not given, or ``None`` in its
    list, is missing for that sample (at least one modality per sample; TEST.MISS_PROTOCOL says how the model
    handles it). Features are L2-normalised when
    TEST.FEAT_NORM is True.
    """

    def __init__(self, config_file: str = "", weights: str = "", device: str = "", opts: Sequence[str] = ()):
        extra = [*(["TEST.WEIGHT", weights] if weights else []), *(["MODEL.DEVICE", device] if device else [])]
        self.cfg = load_config(config_file or None, [*opts, *extra])
        log_mapped_settings(self.cfg)
        self.device = resolve_device(self.cfg.MODEL.DEVICE)
        self.model = load_trained_model(self.cfg, self.cfg.TEST.WEIGHT, self.device)
        self.modalities = list(self.cfg.MODEL.MODALITIES)
        self.transform = build_image_transform(False, self.cfg.INPUT.SIZE_TEST)   # uint8: the device normalises
        self.to_device = BatchToDevice(self.cfg, self.device)

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def __call__(self, images: Mapping[str, Sequence[str | Image.Image | None]]) -> torch.Tensor:
        unknown = [m for m in images if m not in self.modalities]
        if unknown:
            raise UserError(f"FeatureExtractor: unknown modalities {unknown}; the model has {self.modalities}")
        sizes = {len(v) for v in images.values()}
        if len(sizes) != 1:
            raise UserError(f"FeatureExtractor: every modality needs one entry per sample (None when missing); "
                            f"got {', '.join(f'{m}: {len(v)}' for m, v in images.items())}")
        count = sizes.pop()
        present = [[m for m in self.modalities if m in images and images[m][i] is not None] for i in range(count)]
        empty = [i for i, kept in enumerate(present) if not kept]
        if empty:
            raise UserError(f"FeatureExtractor: sample {empty[0]} has no image in any modality")
        out = torch.empty(count, self.feature_dim)
        groups: dict[str, list[int]] = {}
        for i, kept in enumerate(present):  # one TEST.MISS setting per subset of modalities present
            groups.setdefault(self._setting(kept), []).append(i)
        for setting, rows in groups.items():
            features = extract_features(self.model, self._batches(images, rows), self.to_device, [setting],
                                        progress=False, protocol=self.cfg.TEST.MISS_PROTOCOL)[setting]
            out[rows] = F.normalize(features, dim=1) if self.cfg.TEST.FEAT_NORM else features
        return out

    def from_folder(self, folder: str) -> tuple[torch.Tensor, list[dict]]:
        """Features of every sample of ``folder`` (``<folder>/<modality>/<file>``, any subset of the modalities;
        samples sorted by file name) and the index: per sample ``name``, ``modalities`` present and ``paths``."""
        folders = {m: os.path.join(folder, m) for m in self.modalities if os.path.isdir(os.path.join(folder, m))}
        if not folders:
            raise UserError(f"{folder}: no modality folder; expected one or more of "
                            f"{', '.join(os.path.join(folder, m) for m in self.modalities)}")
        files = {m: {n for n in os.listdir(d) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")}
                 for m, d in folders.items()}
        names = sorted(set().union(*files.values()))
        if not names:
            raise UserError(f"{folder}: no images in {', '.join(folders.values())}")
        index = [{"name": n, "paths": {m: os.path.join(folders[m], n) for m in folders if n in files[m]}}
                 for n in names]
        for row in index:
            row["modalities"] = "+".join(m for m in self.modalities if m in row["paths"])
        features = self({m: [row["paths"].get(m) for row in index] for m in folders})
        return features, index

    def _setting(self, kept: Sequence[str]) -> str:
        missing = [m for m in self.modalities if m not in kept]
        return "".join(initial(m) for m in missing) or NONE

    def _batches(self, images: Mapping[str, Sequence], rows: Sequence[int]):
        """Batches of the samples ``rows`` (TEST.IMS_PER_BATCH each): a missing modality's image is a blank
        placeholder, never used as an image (TEST.MISS_PROTOCOL zero replaces its tokens by those of a zero
        normalised image; drop leaves it out)."""
        size = self.cfg.TEST.IMS_PER_BATCH
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            batch = {}
            for m in self.modalities:
                items = [images[m][i] if m in images else None for i in chunk]
                batch[m] = torch.stack([torch.zeros(3, *self.cfg.INPUT.SIZE_TEST, dtype=torch.uint8) if item is None
                                        else self.transform(_image(item)) for item in items])  # (B, 3, H, W)
            yield batch


def _image(item: str | Image.Image) -> Image.Image:
    return item.convert("RGB") if isinstance(item, Image.Image) else read_image(item)


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("extract_features", __doc__)
    parser.add_argument("--images", required=True, help="folder with one sub-folder per modality (RGB/, NI/, TI/)")
    parser.add_argument("--out", default="", help="output folder (default <OUTPUT_DIR>/features/<images folder>/)")
    add_config_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> str:
    extractor = FeatureExtractor(args.config_file, opts=args.opts)
    features, index = extractor.from_folder(args.images)
    cfg = extractor.cfg
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "features", os.path.basename(os.path.abspath(args.images)))
    atomic_write(os.path.join(out, "features.npy"), lambda f: np.save(f, features.numpy().astype(np.float32)))
    rows = [["row", "name", "modalities", *extractor.modalities]]
    rows += [[i, r["name"], r["modalities"], *(r["paths"].get(m, "") for m in extractor.modalities)]
             for i, r in enumerate(index)]
    atomic_write(os.path.join(out, "index.csv"), lambda f: f.write(_csv(rows).encode()))
    subsets = Counter(r["modalities"] for r in index)
    meta = {"images": args.images, "weight": cfg.TEST.WEIGHT, "config": args.config_file or None,
            "overrides": list(args.opts), "samples": len(index), "dim": int(features.shape[1]),
            "normalised": cfg.TEST.FEAT_NORM, "modalities": extractor.modalities, "subsets": dict(subsets)}
    atomic_write_text(os.path.join(out, "features.json"), json.dumps(meta, indent=2))
    print(f"{len(index)} samples ({', '.join(f'{n} {s}' for s, n in subsets.items())}) -> {features.shape[1]}-d "
          f"features; wrote features.npy, index.csv and features.json to {out}")
    return out


def _csv(rows: list[list]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
