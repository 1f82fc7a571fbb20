"""Market-MM (Market1501-MM, persons): ``<DIR>/{train,query,gallery}/{RGB,NI,TI}/<pid>_c<c>s<s>_<...>.jpg``."""

import re

from .bases import MultiModalDataset


class MarketMM(MultiModalDataset):
    """Market-1501 names and splits with three modalities; pid -1 (junk) dropped, pid 0 kept; 6 cameras."""

    name = "Market-MM"
    dirnames = ("Market1501-MM", "market1501_to_RGBNT201_dark")
    splits = {"train": "train", "query": "query", "gallery": "gallery"}
    filename_re = re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d)")
    tree = """<ROOT_DIR>/Market1501-MM/   (or <ROOT_DIR>/market1501_to_RGBNT201_dark/)
    train/{RGB,NI,TI}/0002_c1s1_000451_03.jpg ...   (same file name in the three folders)
    query/{RGB,NI,TI}/...
    gallery/{RGB,NI,TI}/..."""

    def parse_name(self, filename: str) -> tuple[int, int, int] | None:
        parsed = super().parse_name(filename)
        return None if parsed[0] == -1 else parsed
