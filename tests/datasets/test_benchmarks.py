"""The four benchmark readers on miniature trees of their published layouts (docs/datasets.md)."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from config import load_config
from datasets import DATASETS, MultiModalDataset, make_dataset
from utils.metrics import evaluate_rank

# one colour per modality, so a test can tell which file a modality was read from
COLOURS = {"RGB": (250, 10, 10), "NI": (10, 250, 10), "TI": (10, 10, 250)}


def _write(path: str, colour=(128, 128, 128), size=(8, 16)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)


def _write_modalities(split_dir: str, names: list[str], subdirs: dict[str, str]) -> None:
    for modality, sub in subdirs.items():
        for name in names:
            _write(os.path.join(split_dir, sub, name), COLOURS[modality])


def _dominant(img: Image.Image) -> int:
    """Index of the strongest channel of a (nearly) uniform image."""
    return int(np.asarray(img, dtype=float).reshape(-1, 3).mean(0).argmax())


RGB_NI_TI = {"RGB": "RGB", "NI": "NI", "TI": "TI"}


def make_rgbnt201(root: str) -> dict[str, list[str]]:
    names = {
        # raw ids 12, 3, 7 (unsorted on purpose): relabelled 3 -> 0, 7 -> 1, 12 -> 2
        "train_171": ["000012_cam1_0_00.jpg", "000012_cam2_0_00.jpg", "000003_cam3_0_00.jpg",
                      "000003_cam3_0_01.jpg", "000007_cam4_0_00.jpg"],
        "test": ["000258_cam1_0_00.jpg", "000258_cam2_0_00.jpg", "000300_cam4_0_03.jpg"],
    }
    for split, files in names.items():
        _write_modalities(os.path.join(root, "RGBNT201", split), files, RGB_NI_TI)
    return names


def make_market(root: str, dirname: str) -> None:
    base = os.path.join(root, dirname)
    _write_modalities(os.path.join(base, "train"), ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                                                    "0007_c6s4_002202_02.jpg"], RGB_NI_TI)
    _write_modalities(os.path.join(base, "query"), ["0001_c1s1_001051_00.jpg", "0004_c3s1_000076_00.jpg"],
                      RGB_NI_TI)
    _write_modalities(os.path.join(base, "gallery"), [
        "0001_c2s1_000301_01.jpg", "0004_c5s1_004426_02.jpg", "0004_c3s1_000101_01.jpg",
        "0000_c1s1_000000_01.jpg", "0000_c6s2_064042_04.jpg",  # distractors: kept
        "-1_c1s1_000401_03.jpg", "-1_c4s2_000576_05.jpg",  # junk: dropped
    ], RGB_NI_TI)


def _strip(seed: int) -> np.ndarray:
    """A 128 x 768 (H x W) strip of random pixels: panels [RGB | NI | TI] of 256 x 128 each."""
    return np.random.default_rng(seed).integers(0, 256, (128, 768, 3), dtype=np.uint8)


def make_rgbnt100(root: str) -> dict[str, np.ndarray]:
    """PNG strips (lossless, so panels can be compared pixel by pixel); returns file name -> array."""
    base = os.path.join(root, "RGBNT100", "rgbir")
    files = {"bounding_box_train": ["0502_c0001_000.png", "0502_c0003_001.png", "0011_c0008_000.png"],
             "bounding_box_test": ["0620_c0002_000.png", "0620_c0005_000.png", "0733_c0004_002.png"],
             "query": ["0620_c0002_000.png", "0733_c0004_002.png"]}  # copies of gallery images
    arrays = {}
    for folder, names in files.items():
        os.makedirs(os.path.join(base, folder), exist_ok=True)
        for name in names:
            arrays.setdefault(name, _strip(len(arrays)))
            Image.fromarray(arrays[name]).save(os.path.join(base, folder, name))
    return arrays


MSVR_DIRS = {"RGB": "vis", "NI": "ni", "TI": "th"}


def make_msvr310(root: str, dirname: str = "MSVR310") -> None:
    base = os.path.join(root, dirname)
    layout = {
        "bounding_box_train": {"0002": ["0002_s002_v0_000.jpg", "0002_s002_v3_001.jpg"],
                               "0009": ["0009_s014_v7_000.jpg"]},
        # test vehicle 0101 is a query id (also in query3); 0150 is a distractor
        "bounding_box_test": {"0101": ["0101_s031_v1_000.jpg", "0101_s031_v2_001.jpg", "0101_s040_v1_002.jpg"],
                              "0150": ["0150_s031_v1_000.jpg"]},
        "query3": {"0101": ["0101_s031_v1_000.jpg", "0101_s031_v2_001.jpg", "0101_s040_v1_002.jpg"]},
    }
    for split, vehicles in layout.items():
        for vehicle, names in vehicles.items():
            _write_modalities(os.path.join(base, split, vehicle), names, MSVR_DIRS)


def _triples(samples):
    return sorted((s.pid, s.camid, s.sceneid) for s in samples)


def test_registry_names():
    assert set(DATASETS) == {"RGBNT201", "Market-MM", "RGBNT100", "MSVR310", "Synthetic"}


def test_rgbnt201(tmp_path):
    names = make_rgbnt201(str(tmp_path))
    ds = make_dataset("RGBNT201", str(tmp_path))
    assert ds.statistics() == {"train": (3, 5, 4), "query": (2, 3, 3), "gallery": (2, 3, 3)}
    assert ds.num_cameras == 4 and ds.num_train_pids == 3
    # train ids relabelled by sorted raw id (3 -> 0, 7 -> 1, 12 -> 2), cameras 1..4 -> 0..3
    assert _triples(ds.train) == [(0, 2, -1), (0, 2, -1), (1, 3, -1), (2, 0, -1), (2, 1, -1)]
    # query = gallery = test, raw ids kept
    assert ds.gallery is ds.query
    assert _triples(ds.query) == [(258, 0, -1), (258, 1, -1), (300, 3, -1)]
    sample = next(s for s in ds.query if s.pid == 300)
    test_dir = os.path.join(str(tmp_path), "RGBNT201", "test")
    assert dict(sample.paths) == {m: os.path.join(test_dir, m, "000300_cam4_0_03.jpg") for m in COLOURS}
    images = ds.read(sample)
    assert list(images) == ["RGB", "NI", "TI"]
    assert [_dominant(images[m]) for m in images] == [0, 1, 2]  # each modality read from its own folder
    assert all(img.mode == "RGB" for img in images.values())
    assert sorted(os.path.basename(s.paths["RGB"]) for s in ds.train) == sorted(names["train_171"])
    assert ds.protocol == "camera"
    meta = ds.eval_metadata(ds.query, ds.gallery)
    assert "q_sceneids" not in meta and meta["q_camids"] == [s.camid for s in ds.query]


def test_rgbnt201_grayscale_modalities_read_as_rgb(tmp_path):
    make_rgbnt201(str(tmp_path))
    path = os.path.join(str(tmp_path), "RGBNT201", "test", "TI", "000258_cam1_0_00.jpg")
    Image.new("L", (8, 16), 77).save(path)  # thermal images may be single-channel
    ds = make_dataset("RGBNT201", str(tmp_path))
    img = ds.read(next(s for s in ds.query if s.paths["TI"] == path))["TI"]
    assert img.mode == "RGB" and np.allclose(np.asarray(img), 77, atol=1)


@pytest.mark.parametrize("dirname", ["Market1501-MM", "market1501_to_RGBNT201_dark"])
def test_market_mm(tmp_path, dirname):
    make_market(str(tmp_path), dirname)
    ds = make_dataset("Market-MM", str(tmp_path))
    assert ds.dataset_dir == os.path.join(str(tmp_path), dirname)
    assert _triples(ds.train) == [(0, 0, -1), (0, 1, -1), (1, 5, -1)]  # raw 2 -> 0, 7 -> 1
    assert _triples(ds.query) == [(1, 0, -1), (4, 2, -1)]
    # junk (-1) dropped, distractors (0) kept with their cameras
    assert _triples(ds.gallery) == [(0, 0, -1), (0, 5, -1), (1, 1, -1), (4, 2, -1), (4, 4, -1)]
    assert ds.statistics() == {"train": (2, 3, 3), "query": (2, 2, 2), "gallery": (3, 5, 5)}
    assert not any("-1_" in os.path.basename(s.paths["RGB"]) for s in ds.gallery)
    assert ds.protocol == "camera"
    sample = ds.query[0]
    assert [_dominant(img) for img in ds.read(sample).values()] == [0, 1, 2]
    assert dict(sample.paths) == {m: os.path.join(str(tmp_path), dirname, "query", m, "0001_c1s1_001051_00.jpg")
                                  for m in COLOURS}


def test_rgbnt100_strips_and_panels(tmp_path):
    arrays = make_rgbnt100(str(tmp_path))
    ds = make_dataset("RGBNT100", str(tmp_path))
    assert ds.statistics() == {"train": (2, 3, 3), "query": (2, 2, 2), "gallery": (2, 3, 3)}
    assert _triples(ds.train) == [(0, 7, -1), (1, 0, -1), (1, 2, -1)]  # raw 11 -> 0, 502 -> 1; c0008 -> 7
    assert _triples(ds.query) == [(620, 1, -1), (733, 3, -1)]
    assert ds.protocol == "camera"
    base = os.path.join(str(tmp_path), "RGBNT100", "rgbir")
    for sample in ds.query:
        # one file per sample: the three modalities name the same strip
        assert len(set(sample.paths.values())) == 1
        path = sample.paths["RGB"]
        assert os.path.dirname(path) == os.path.join(base, "query")
        panels = ds.read(sample)
        assert list(panels) == ["RGB", "NI", "TI"]
        strip = arrays[os.path.basename(path)]
        for i, (modality, panel) in enumerate(panels.items()):
            assert panel.size == (256, 128), modality
            np.testing.assert_array_equal(np.asarray(panel), strip[:, 256 * i:256 * (i + 1)])


def test_rgbnt100_panel_order_on_jpeg_strip(tmp_path):
    """A released-style JPEG strip with one colour per panel: panels come out in [RGB | NI | TI] order."""
    folder = os.path.join(str(tmp_path), "RGBNT100", "rgbir")
    strip = Image.new("RGB", (768, 128))
    for i, colour in enumerate(COLOURS.values()):
        strip.paste(Image.new("RGB", (256, 128), colour), (256 * i, 0))
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(os.path.join(folder, split))
        strip.save(os.path.join(folder, split, "0502_c0001_000.jpg"), quality=95)
    strip.save(os.path.join(folder, "bounding_box_test", "0502_c0002_000.jpg"), quality=95)  # the query's positive
    ds = make_dataset("RGBNT100", str(tmp_path))
    panels = ds.read(ds.train[0])
    assert [_dominant(p) for p in panels.values()] == [0, 1, 2]


@pytest.mark.parametrize("dirname", ["MSVR310", "msvr310"])
def test_msvr310(tmp_path, dirname):
    make_msvr310(str(tmp_path), dirname)
    ds = make_dataset("MSVR310", str(tmp_path))
    assert ds.dataset_dir == os.path.join(str(tmp_path), dirname)
    # views v0..v7 are cameras 0..7 (no -1); scenes parsed from s<NNN>
    assert _triples(ds.train) == [(0, 0, 2), (0, 3, 2), (1, 7, 14)]
    assert _triples(ds.query) == [(101, 1, 31), (101, 1, 40), (101, 2, 31)]
    assert _triples(ds.gallery) == [(101, 1, 31), (101, 1, 40), (101, 2, 31), (150, 1, 31)]
    assert ds.statistics() == {"train": (2, 3, 3), "query": (1, 3, 2), "gallery": (2, 4, 2)}
    sample = next(s for s in ds.query if s.sceneid == 40)
    vehicle_dir = os.path.join(str(tmp_path), dirname, "query3", "0101")
    assert dict(sample.paths) == {m: os.path.join(vehicle_dir, sub, "0101_s040_v1_002.jpg")
                                  for m, sub in MSVR_DIRS.items()}
    assert [_dominant(img) for img in ds.read(sample).values()] == [0, 1, 2]
    assert ds.protocol == "scene"
    meta = ds.eval_metadata(ds.query, ds.gallery)
    assert meta["q_sceneids"] == [s.sceneid for s in ds.query]
    assert meta["g_sceneids"] == [s.sceneid for s in ds.gallery]


def test_msvr310_evaluation_uses_the_scene_rule(tmp_path):
    """The protocol comes from the dataset: a same-id gallery image of the query's scene is removed even
    under another view, a same-id image of another scene under the same view is kept."""
    make_msvr310(str(tmp_path))
    ds = make_dataset("MSVR310", str(tmp_path))
    query = [next(s for s in ds.query if (s.sceneid, s.camid) == (31, 1))]
    gallery = sorted(ds.gallery, key=lambda s: (s.pid, s.sceneid, s.camid))
    # gallery order: (101, s31, v1), (101, s31, v2), (101, s40, v1), (150, s31, v1); the closest is the
    # same-scene image under another view, then the distractor id 150
    distmat = np.array([[1.0, 0.2, 3.0, 0.5]])
    result = evaluate_rank(distmat, **ds.eval_metadata(query, gallery))
    # scene rule: both s31 images of id 101 removed -> the only positive (s40) is at rank 2
    assert result.num_valid == 1 and result.cmc[0] == 0 and result.cmc[1] == 1
    assert result.mAP == pytest.approx(1 / 2)
    # the camera rule would instead have kept the s31/v2 image (rank 1) and dropped the s40/v1 one
    meta = ds.eval_metadata(query, gallery)
    camera = evaluate_rank(distmat, meta["q_pids"], meta["g_pids"], meta["q_camids"], meta["g_camids"])
    assert camera.cmc[0] == 1 and camera.mAP == pytest.approx(1.0)


def test_file_names_parsed_from_base_name_only(tmp_path):
    """Folder names full of digits, underscores and c/s/v letters never leak into pid, camid or sceneid."""
    root = tmp_path / "exp_0999_c7_s123_v5_cam3_" / "run_0042_c5"
    make_rgbnt201(str(root))
    make_rgbnt100(str(root))
    make_msvr310(str(root))
    r201 = make_dataset("RGBNT201", str(root))
    assert _triples(r201.query) == [(258, 0, -1), (258, 1, -1), (300, 3, -1)]
    r100 = make_dataset("RGBNT100", str(root))
    assert _triples(r100.gallery) == [(620, 1, -1), (620, 4, -1), (733, 3, -1)]
    msvr = make_dataset("MSVR310", str(root))
    assert _triples(msvr.gallery) == [(101, 1, 31), (101, 1, 40), (101, 2, 31), (150, 1, 31)]


def test_parse_name_on_published_names(tmp_path):
    make_rgbnt201(str(tmp_path))
    make_market(str(tmp_path), "Market1501-MM")
    make_rgbnt100(str(tmp_path))
    make_msvr310(str(tmp_path))
    cases = {
        "RGBNT201": {"000258_cam1_0_00.jpg": (258, 0, -1), "000001_cam4_2_17.jpg": (1, 3, -1)},
        "Market-MM": {"0002_c1s1_000451_03.jpg": (2, 0, -1), "0000_c6s2_064042_04.jpg": (0, 5, -1),
                      "-1_c3s1_000401_03.jpg": None, "1501_c6s4_001877_00.jpg": (1501, 5, -1)},
        "RGBNT100": {"0502_c0001_000.jpg": (502, 0, -1), "0011_c0008_123.jpg": (11, 7, -1)},
        "MSVR310": {"0002_s002_v0_000.jpg": (2, 0, 2), "0310_s137_v7_015.jpg": (310, 7, 137)},
    }
    for name, expected in cases.items():
        ds = make_dataset(name, str(tmp_path))
        assert {f: ds.parse_name(f) for f in expected} == expected, name


def test_hidden_files_are_ignored(tmp_path):
    """macOS archives carry ``._<name>.jpg`` companions; they are not samples."""
    make_rgbnt201(str(tmp_path))
    for m in COLOURS:
        open(os.path.join(str(tmp_path), "RGBNT201", "test", m, "._000258_cam1_0_00.jpg"), "wb").close()
    assert len(make_dataset("RGBNT201", str(tmp_path)).query) == 3


def test_statistics_table_logged(tmp_path, caplog):
    make_msvr310(str(tmp_path))
    with caplog.at_level("INFO", logger="datasets.bases"):
        make_dataset("MSVR310", str(tmp_path))
    text = caplog.text
    assert "protocol: scene" in text
    assert "  query   |      1 |         3 |         2 |        2" in text
    assert "  gallery |      2 |         4 |         2 |        2" in text


@pytest.mark.parametrize("name, size", [("RGBNT201", [256, 128]), ("Market-MM", [256, 128]),
                                        ("RGBNT100", [128, 256]), ("MSVR310", [128, 256])])
def test_benchmark_configs_input_size(name, size):
    """Persons are 256x128 (H x W), vehicles 128x256."""
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", name, "MHCF.yml"), [])
    assert name == cfg.DATASETS.NAMES
    assert list(cfg.INPUT.SIZE_TRAIN) == size and list(cfg.INPUT.SIZE_TEST) == size


@pytest.mark.parametrize("name", ["RGBNT201", "MSVR310"])
def test_full_size_trees_match_official_split_sizes(tmp_path, name):
    """The tool's full-size trees (every published folder and file name, official sizes; the two smallest
    here, ``python -m tools.check_dataset_trees`` runs all four) read as the official figures."""
    from tools.check_dataset_trees import OFFICIAL, check

    passed, report = check(name, str(tmp_path))
    assert passed, report
    splits, cameras = OFFICIAL[name]
    assert f"({cameras} cams)" in report
    total = splits["query"][1]
    assert f"queries with a positive under the {'scene' if name == 'MSVR310' else 'camera'} rule: {total}/{total}" \
        in report


class MyReID(MultiModalDataset):
    """The README's example of a new dataset, verbatim in its declarations."""

    name = "MyReID"
    dirnames = ("MyReID",)
    splits = {"train": "train", "query": "query", "gallery": "gallery"}
    modality_dirs = {"RGB": "rgb", "NI": "nir", "TI": "tir"}
    filename_re = re.compile(r"(?P<pid>\d+)_c(?P<cam>\d+)_")
    cam_offset = 1
    protocol = "camera"
    tree = """<ROOT_DIR>/MyReID/
    {train,query,gallery}/{rgb,nir,tir}/0001_c2_0005.jpg ..."""


def test_readme_example_dataset_class(tmp_path):
    dirs = {"RGB": "rgb", "NI": "nir", "TI": "tir"}
    for split, names in (("train", ["0007_c2_0005.jpg", "0003_c1_0001.jpg"]), ("query", ["0100_c1_0001.jpg"]),
                         ("gallery", ["0100_c3_0002.jpg", "0101_c2_0001.jpg"])):
        _write_modalities(os.path.join(str(tmp_path), "MyReID", split), names, dirs)
    ds = MyReID(str(tmp_path))
    assert _triples(ds.train) == [(0, 0, -1), (1, 1, -1)]
    assert ds.statistics() == {"train": (2, 2, 2), "query": (1, 1, 1), "gallery": (2, 2, 2)}
    assert [_dominant(img) for img in ds.read(ds.query[0]).values()] == [0, 1, 2]
