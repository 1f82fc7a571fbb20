"""RGBNT201 (persons): ``RGBNT201/{train_171,test}/{RGB,NI,TI}/<pid>_cam<c>_<...>.jpg``."""

import re

from .bases import MultiModalDataset


class RGBNT201(MultiModalDataset):
    """171 training ids; query = gallery = the 836 test samples; cameras 1..4; camera protocol."""

    name = "RGBNT201"
    dirnames = ("RGBNT201",)
    splits = {"train": "train_171", "query": "test", "gallery": "test"}
    filename_re = re.compile(r"(?P<pid>\d+)_cam(?P<cam>\d+)_")
    tree = """<ROOT_DIR>/RGBNT201/
    train_171/{RGB,NI,TI}/000001_cam1_0_00.jpg ...   (same file name in the three folders)
    test/{RGB,NI,TI}/000258_cam1_0_00.jpg ..."""
