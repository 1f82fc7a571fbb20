"""RGBNT100 (vehicles): ``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/<pid>_c<c>_<n>.jpg``.

Each file is one sample: a strip of three equal panels [RGB | NI | TI] side by side (768x128 W x H).
"""

import os
import re

from PIL import Image

from utils.errors import UserError

from .bases import MultiModalDataset, Sample, _image_files, read_image


class RGBNT100(MultiModalDataset):
    """50 training ids; query images are copies of gallery images; cameras 1..8; camera protocol."""

    name = "RGBNT100"
    dirnames = ("RGBNT100",)
    splits = {"train": "rgbir/bounding_box_train", "query": "rgbir/query", "gallery": "rgbir/bounding_box_test"}
    filename_re = re.compile(r"(?P<pid>\d+)_c(?P<cam>\d+)_")
    tree = """<ROOT_DIR>/RGBNT100/rgbir/
    bounding_box_train/0001_c0001_000.jpg ...   (each a 768x128 strip: RGB | NI | TI panels)
    query/...
    bounding_box_test/..."""

    def list_split(self, split_dir: str) -> list[tuple[str, dict[str, str]]]:
        return [(n, dict.fromkeys(self.modalities, os.path.join(split_dir, n)))
                for n in _image_files(split_dir, self)]

    def read(self, sample: Sample) -> dict[str, Image.Image]:
        path = sample.paths[self.modalities[0]]
        strip = read_image(path)
        width, height = strip.size
        order = list(self.modality_dirs)  # the panels, left to right, whichever modalities are read
        if width % len(order):
            raise UserError(f"{self.name}: image {path} is {width}x{height}; its width is not "
                            f"{len(order)} equal panels")
        w = width // len(order)
        return {m: strip.crop((order.index(m) * w, 0, (order.index(m) + 1) * w, height)) for m in self.modalities}
