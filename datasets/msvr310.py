"""MSVR310 (vehicles): ``MSVR310/{bounding_box_train,query3,bounding_box_test}/<vehicle>/{vis,ni,th}/*.jpg``."""

import os
import re

from .bases import MultiModalDataset


class MSVR310(MultiModalDataset):
    """155 training ids; names ``<pid>_s<scene>_v<view>_<n>.jpg``; views 0..7; scene protocol.

    Evaluation drops gallery items with the query's pid *and scene* (camera ignored).
    """

    name = "MSVR310"
    dirnames = ("MSVR310", "msvr310")
    splits = {"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"}
    modality_dirs = {"RGB": "vis", "NI": "ni", "TI": "th"}
    filename_re = re.compile(r"(?P<pid>\d+)_s(?P<scene>\d+)_v(?P<cam>\d+)_")
    cam_offset = 0
    protocol = "scene"
    tree = """<ROOT_DIR>/MSVR310/   (or <ROOT_DIR>/msvr310/)
    bounding_box_train/0001/{vis,ni,th}/0001_s001_v0_000.jpg ...   (same file name in the three folders)
    query3/<vehicle>/{vis,ni,th}/...
    bounding_box_test/<vehicle>/{vis,ni,th}/..."""

    def list_split(self, split_dir: str) -> list[tuple[str, dict[str, str]]]:
        entries = []
        for vehicle in sorted(os.listdir(split_dir)):
            vehicle_dir = os.path.join(split_dir, vehicle)
            if os.path.isdir(vehicle_dir) and not vehicle.startswith("."):
                entries.extend(super().list_split(vehicle_dir))
        return entries
