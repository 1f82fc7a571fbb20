"""What every multi-modal ReID benchmark shares: records, discovery, checks, relabelling, statistics.

A benchmark is one small subclass of :class:`MultiModalDataset` declaring its folder names, the
sub-folder of each modality, a file-name parser and its evaluation protocol (docs/datasets.md).
"""

import logging
import os
import re
import stat
import struct
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One multi-modal sample: identity, camera, scene (-1 when the dataset has none), file per modality."""

    pid: int
    camid: int
    sceneid: int
    paths: Mapping[str, str]


#: Largest image read, in pixels: PIL's bound for decompression bombs (a ReID crop is a tiny fraction of it).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
#: Modes PIL converts to RGB faithfully (8 bits per channel, palettes, alpha dropped, CMYK, YCbCr, HSV).
_EIGHT_BIT_MODES = {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}
_SPECIAL_FILES = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                  stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def read_image(path: str) -> Image.Image:
    """Open ``path`` as 3-channel 8-bit RGB (NI and TI included), naming the file if it cannot be read.

    Every pixel mode PIL decodes is read into its real range or refused by name: 8-bit modes as PIL converts
    them; 16-bit grey (``I;16``, radiometric thermal cameras) and 32-bit integer grey scaled by their bit
    depth (a PNG's significant bits, a TIFF's bits per sample, else the mode's), not clipped to white; float
    grey (``F``) only when it lies in [0, 1]. A special file (FIFO, device) is refused before it is opened,
    so it cannot hang the run, and so is an image of more than :data:`MAX_PIXELS` pixels (a decompression
    bomb)."""
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc.strerror}") from None
    if kind != stat.S_IFREG:
        raise UserError(f"cannot read image {path}: it is {_SPECIAL_FILES.get(kind, 'not a regular file')}, "
                        f"not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise Image.DecompressionBombError()
                return _as_rgb(img, path)
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image file (corrupt or wrong format)") from None
    except Image.DecompressionBombError:
        raise UserError(f"cannot read image {path}: more than {MAX_PIXELS} pixels (a decompression bomb?); "
                        f"not decoded") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def _as_rgb(img: Image.Image, path: str) -> Image.Image:
    mode = img.mode
    if mode in ("P", "PA") and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    if mode in _EIGHT_BIT_MODES:
        return img.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img).astype(np.float64)  # (H, W)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F":
            if not (low >= 0 and high <= 1):
                raise UserError(f"cannot read image {path}: 32-bit float pixels in [{low:g}, {high:g}], not in "
                                f"[0, 1]; save it as 8-bit or 16-bit")
            top = 1.0
        else:
            bits = _bit_depth(img, path)
            top = 2.0 ** bits - 1
            if low < 0 or high > top:
                raise UserError(f"cannot read image {path}: pixel values in [{low:g}, {high:g}] do not fit its "
                                f"{bits}-bit depth")
        grey = np.rint(values * (255 / top)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    raise UserError(f"cannot read image {path}: pixel mode {mode} is not supported; save it as 8-bit or 16-bit "
                    f"RGB or grey")


def _bit_depth(img: Image.Image, path: str) -> int:
    """Significant bits of an integer grey image: a PNG's sBIT chunk, a TIFF's BitsPerSample, else 16 for
    ``I;16`` modes; a 32-bit ``I`` image without a declared depth is refused."""
    if img.format == "PNG":
        bits = _png_significant_bits(path)
        if bits:
            return bits
    if img.format == "TIFF":
        declared = img.tag_v2.get(258)
        declared = declared[0] if isinstance(declared, tuple) else declared
        if isinstance(declared, int) and 0 < declared <= 32:
            return min(declared, 31) if img.mode == "I" else min(declared, 16)
    if img.mode.startswith("I;16"):
        return 16
    raise UserError(f"cannot read image {path}: 32-bit integer pixels without a declared bit depth; save it as "
                    f"8-bit or 16-bit")


def _png_significant_bits(path: str) -> int | None:
    """The grey channel's significant bits from a PNG's sBIT chunk (before the image data), or None."""
    with open(path, "rb") as f:
        f.seek(8)  # the PNG signature
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):
                return None
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)  # CRC
            if kind == b"sBIT" and data:
                return data[0]


class MultiModalDataset:
    """Base class: finds the dataset folder, lists the splits, checks every modality file exists.

    Subclasses declare the class attributes below and, when the layout differs from
    ``<split>/<modality folder>/<file>``, override :meth:`list_split`.
    """

    name: ClassVar[str]
    #: accepted names of the dataset folder under the root (first one is the canonical spelling)
    dirnames: ClassVar[tuple[str, ...]]
    #: split -> folder relative to the dataset folder (query and gallery may share one)
    splits: ClassVar[Mapping[str, str]]
    #: modality -> sub-folder holding its images
    modality_dirs: ClassVar[Mapping[str, str]] = {"RGB": "RGB", "NI": "NI", "TI": "TI"}
    #: parser of a file's base name; named groups ``pid``, ``cam`` and optionally ``scene``
    filename_re: ClassVar[re.Pattern]
    #: subtracted from the parsed camera number (cameras numbered from 1 become 0-based)
    cam_offset: ClassVar[int] = 1
    #: evaluation rule: "camera" drops gallery items with the query's pid and camera, "scene" those
    #: with the query's pid and scene (MSVR310)
    protocol: ClassVar[str] = "camera"
    #: the expected tree (``<ROOT_DIR>`` stands for the root), shown when a folder is missing
    tree: ClassVar[str]

    def __init__(self, root: str, modalities: Sequence[str] | None = None):
        """Read the dataset under ``root``; ``modalities`` (default: all of :attr:`modality_dirs`, in their order)
        are the ones read, in that order: the folders of the others need not exist."""
        self.root = os.path.expanduser(root)
        self.modalities = tuple(modalities or self.modality_dirs)
        unknown = [m for m in self.modalities if m not in self.modality_dirs]
        if unknown:
            raise UserError(f"{self.name} has the modalities {', '.join(self.modality_dirs)}; MODEL.MODALITIES "
                            f"{list(self.modalities)} names {', '.join(unknown)}")
        self.dataset_dir = self._find_dataset_dir(self.root)
        self.train = self._relabel(self._load_split("train"))
        self.query = self._load_split("query")
        self.gallery = self.query if self.splits["gallery"] == self.splits["query"] else self._load_split("gallery")
        self._check_queries_have_positives()
        logger.info("%s", self.format_statistics())

    # --- what subclasses may override ---------------------------------------------------------------
    def parse_name(self, filename: str) -> tuple[int, int, int] | None:
        """``(pid, camid, sceneid)`` from a file's base name, or None for a file the benchmark ignores.

        Only the base name is parsed: folder names (``bounding_box_train``, a user's ``exp_c3_01`` root)
        never leak into the ids. Raises ValueError for a name the benchmark cannot hold.
        """
        match = self.filename_re.match(filename)
        if match is None:
            raise ValueError(f"the name does not match {self.filename_re.pattern}")
        groups = match.groupdict()
        pid = int(groups["pid"])
        scene = int(groups["scene"]) if groups.get("scene") is not None else -1
        return pid, int(groups["cam"]) - self.cam_offset, scene

    def list_split(self, split_dir: str) -> list[tuple[str, dict[str, str]]]:
        """``(file name, {modality: path})`` for every sample of a ``<split>/<modality>/<file>`` layout, for the
        modalities read (:attr:`modalities`).

        A file name present in one modality folder but not in another is a UserError naming it.
        """
        dirs = {m: self.modality_dirs[m] for m in self.modalities}
        names = {m: set(_image_files(os.path.join(split_dir, sub), self)) for m, sub in dirs.items()}
        every = sorted(set().union(*names.values()))
        for modality, sub in dirs.items():
            missing = [n for n in every if n not in names[modality]]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise UserError(f"{self.name}: sample {missing[0]} has no {modality} image: "
                                f"{os.path.join(split_dir, sub, missing[0])} is missing{more}")
        return [(n, {m: os.path.join(split_dir, sub, n) for m, sub in dirs.items()}) for n in every]

    def read(self, sample: Sample) -> dict[str, Image.Image]:
        """The decoded images of ``sample``, one per modality."""
        return {m: read_image(sample.paths[m]) for m in self.modalities}

    # --- evaluation -----------------------------------------------------------------------------------
    def eval_metadata(self, query: Sequence[Sample], gallery: Sequence[Sample]) -> dict:
        """Keyword arguments of :func:`utils.metrics.evaluate_rank` implementing this dataset's protocol."""
        meta = {
            "q_pids": [s.pid for s in query], "g_pids": [s.pid for s in gallery],
            "q_camids": [s.camid for s in query], "g_camids": [s.camid for s in gallery],
        }
        if self.protocol == "scene":
            meta["q_sceneids"] = [s.sceneid for s in query]
            meta["g_sceneids"] = [s.sceneid for s in gallery]
        return meta

    def _check_queries_have_positives(self) -> None:
        """A UserError, before anything is trained, when no query has a positive in the gallery under the
        protocol (the metrics skip such queries, so nothing would be left to evaluate)."""
        rule = "sceneid" if self.protocol == "scene" else "camid"
        kept = defaultdict(set)
        for sample in self.gallery:
            kept[sample.pid].add(getattr(sample, rule))
        if not any(kept[q.pid] - {getattr(q, rule)} for q in self.query):
            raise UserError(f"{self.name}: no query has a positive in the gallery under the {self.protocol} "
                            f"protocol (a gallery image of its identity from another {rule[:-2]}), so nothing can "
                            f"be evaluated; check {os.path.join(self.dataset_dir, self.splits['query'])}")

    # --- statistics -----------------------------------------------------------------------------------
    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    @property
    def num_cameras(self) -> int:
        return len({s.camid for split in (self.train, self.query, self.gallery) for s in split})

    def statistics(self) -> dict[str, tuple[int, int, int]]:
        """split -> (# ids, # samples, # cameras)."""
        return {split: (len({s.pid for s in records}), len(records), len({s.camid for s in records}))
                for split, records in self._splits().items()}

    def format_statistics(self) -> str:
        """The table logged at start: ids, samples and cameras per split (and scenes for the scene rule)."""
        scenes = self.protocol == "scene"
        lines = [f"Dataset {self.name} ({self.dataset_dir}), modalities {', '.join(self.modalities)}, "
                 f"protocol: {self.protocol}",
                 "  subset  |  # ids | # samples | # cameras" + (" | # scenes" if scenes else ""),
                 "  --------+--------+-----------+----------" + ("+---------" if scenes else "")]
        for (split, (ids, samples, cams)), records in zip(self.statistics().items(), self._splits().values()):
            line = f"  {split:<7} | {ids:6d} | {samples:9d} | {cams:9d}"
            if scenes:
                line += f" | {len({s.sceneid for s in records}):8d}"
            lines.append(line)
        return "\n".join(lines)

    def _splits(self) -> dict[str, Sequence[Sample]]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    # --- discovery ------------------------------------------------------------------------------------
    def _find_dataset_dir(self, root: str) -> str:
        for dirname in self.dirnames:
            path = os.path.join(root, dirname)
            if os.path.isdir(path):
                return path
        tried = " or ".join(os.path.join(root, d) for d in self.dirnames)
        raise UserError(f"{self.name}: dataset folder not found: {tried} (set DATASETS.ROOT_DIR). "
                        f"Expected tree:\n{self._expected_tree()}")

    def _expected_tree(self) -> str:
        return self.tree.replace("<ROOT_DIR>", self.root.rstrip(os.sep) or os.sep)

    def _require_dir(self, path: str) -> None:
        if not os.path.isdir(path):
            raise UserError(f"{self.name}: folder not found: {path}. Expected tree:\n{self._expected_tree()}")

    def _load_split(self, split: str) -> list[Sample]:
        split_dir = os.path.join(self.dataset_dir, self.splits[split])
        self._require_dir(split_dir)
        samples = []
        for filename, paths in self.list_split(split_dir):
            try:
                parsed = self.parse_name(filename)
            except ValueError as exc:
                raise UserError(f"{self.name}: unexpected file {paths[self.modalities[0]]}: {exc}") from None
            if parsed is not None:
                samples.append(Sample(*parsed, paths))
        if not samples:
            raise UserError(f"{self.name}: no images found in {split_dir}. Expected tree:\n{self._expected_tree()}")
        return samples

    @staticmethod
    def _relabel(samples: list[Sample]) -> list[Sample]:
        """Train identities become contiguous labels 0..P-1 in the order of the sorted raw ids."""
        label = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
        return [Sample(label[s.pid], s.camid, s.sceneid, s.paths) for s in samples]


def _image_files(folder: str, dataset: MultiModalDataset) -> list[str]:
    """Sorted image file names of ``folder`` (a missing folder is a UserError showing the tree).

    Hidden files are skipped: archives unpacked from macOS carry ``._<name>.jpg`` companions.
    """
    dataset._require_dir(folder)
    return sorted(n for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
