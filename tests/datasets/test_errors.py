"""Data errors are one clear message naming the culprit, raised before training (discovery) or when the
file is read; through the CLIs they print without a traceback and exit 2, also from DataLoader workers."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from datasets import TransformedSamples, make_dataset
from datasets.transforms import MultiModalTransform, build_image_transform
from processor.cli import run_cli
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rgbnt201(root: str) -> None:
    for split, names in (("train_171", ["000001_cam1_0_00.jpg", "000002_cam2_0_00.jpg"]),
                         ("test", ["000258_cam1_0_00.jpg", "000258_cam2_0_00.jpg"])):
        for modality in ("RGB", "NI", "TI"):
            os.makedirs(os.path.join(root, "RGBNT201", split, modality))
            for name in names:
                Image.new("RGB", (8, 16), (90, 90, 90)).save(os.path.join(root, "RGBNT201", split, modality, name))


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_missing_root_names_path_and_shows_tree(tmp_path):
    root = str(tmp_path / "no_data_here")
    with pytest.raises(UserError) as excinfo:
        make_dataset("RGBNT201", root)
    message = _message(excinfo)
    assert message.splitlines()[0].startswith(f"RGBNT201: dataset folder not found: {root}/RGBNT201 ")
    assert "DATASETS.ROOT_DIR" in message
    assert "train_171/{RGB,NI,TI}/" in message and "test/{RGB,NI,TI}/" in message


def test_missing_root_msvr310_names_both_spellings(tmp_path):
    with pytest.raises(UserError) as excinfo:
        make_dataset("MSVR310", str(tmp_path))
    first = _message(excinfo).splitlines()[0]
    assert f"{tmp_path}/MSVR310 or {tmp_path}/msvr310" in first
    assert "query3/" in _message(excinfo)


def test_missing_split_folder(tmp_path):
    _rgbnt201(str(tmp_path))
    shutil.rmtree(tmp_path / "RGBNT201" / "test")
    with pytest.raises(UserError) as excinfo:
        make_dataset("RGBNT201", str(tmp_path))
    assert _message(excinfo).splitlines()[0] == f"RGBNT201: folder not found: {tmp_path}/RGBNT201/test. Expected tree:"
    assert "train_171/{RGB,NI,TI}/" in _message(excinfo)


def test_missing_query3_folder(tmp_path):
    base = tmp_path / "MSVR310"
    for split in ("bounding_box_train", "bounding_box_test"):
        for sub in ("vis", "ni", "th"):
            os.makedirs(base / split / "0001" / sub)
            (base / split / "0001" / sub / "0001_s001_v0_000.jpg").touch()
    with pytest.raises(UserError, match=f"folder not found: {base}/query3\\."):
        make_dataset("MSVR310", str(tmp_path))


def test_missing_modality_folder(tmp_path):
    _rgbnt201(str(tmp_path))
    shutil.rmtree(tmp_path / "RGBNT201" / "train_171" / "TI")
    with pytest.raises(UserError, match=f"folder not found: {tmp_path}/RGBNT201/train_171/TI\\."):
        make_dataset("RGBNT201", str(tmp_path))


def test_missing_modality_file_named_at_discovery(tmp_path):
    _rgbnt201(str(tmp_path))
    os.remove(tmp_path / "RGBNT201" / "test" / "NI" / "000258_cam2_0_00.jpg")
    with pytest.raises(UserError) as excinfo:
        make_dataset("RGBNT201", str(tmp_path))
    assert _message(excinfo) == (f"RGBNT201: sample 000258_cam2_0_00.jpg has no NI image: "
                                 f"{tmp_path}/RGBNT201/test/NI/000258_cam2_0_00.jpg is missing")


def test_file_in_one_modality_only_is_reported(tmp_path):
    """A file only the TI folder holds is a sample missing its RGB (and NI) image, not silently ignored."""
    _rgbnt201(str(tmp_path))
    (tmp_path / "RGBNT201" / "train_171" / "TI" / "000003_cam1_0_00.jpg").touch()
    with pytest.raises(UserError, match="sample 000003_cam1_0_00.jpg has no RGB image: .*/train_171/RGB/"):
        make_dataset("RGBNT201", str(tmp_path))


def test_unparsable_file_name_named(tmp_path):
    _rgbnt201(str(tmp_path))
    for modality in ("RGB", "NI", "TI"):
        (tmp_path / "RGBNT201" / "test" / modality / "IMG_0001.jpg").touch()
    with pytest.raises(UserError, match=f"unexpected file {tmp_path}/RGBNT201/test/RGB/IMG_0001.jpg: "):
        make_dataset("RGBNT201", str(tmp_path))


def _corrupt(path) -> None:
    with open(path, "wb") as f:
        f.write(b"this is not a jpeg")


def test_corrupt_image_named_when_read(tmp_path):
    _rgbnt201(str(tmp_path))
    bad = tmp_path / "RGBNT201" / "test" / "TI" / "000258_cam1_0_00.jpg"
    _corrupt(bad)
    ds = make_dataset("RGBNT201", str(tmp_path))  # discovery does not decode
    sample = next(s for s in ds.query if s.paths["TI"] == str(bad))
    with pytest.raises(UserError) as excinfo:
        ds.read(sample)
    assert str(excinfo.value) == f"cannot read image {bad}: not an image file (corrupt or wrong format)"


def test_truncated_image_named_when_read(tmp_path):
    _rgbnt201(str(tmp_path))
    bad = tmp_path / "RGBNT201" / "test" / "RGB" / "000258_cam1_0_00.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    ds = make_dataset("RGBNT201", str(tmp_path))
    with pytest.raises(UserError, match=f"^cannot read image {bad}: "):
        ds.read(next(s for s in ds.query if s.paths["RGB"] == str(bad)))


def test_rgbnt100_strip_of_wrong_width_named(tmp_path):
    base = tmp_path / "RGBNT100" / "rgbir"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(base / split)
        Image.new("RGB", (700, 128)).save(base / split / "0001_c0001_000.jpg")
    Image.new("RGB", (700, 128)).save(base / "bounding_box_test" / "0001_c0002_000.jpg")  # the query's positive
    ds = make_dataset("RGBNT100", str(tmp_path))
    with pytest.raises(UserError, match=f"{base}/bounding_box_train/0001_c0001_000.jpg is 700x128"):
        ds.read(ds.train[0])


def test_user_error_from_dataloader_worker_keeps_its_message(tmp_path):
    """torch rebuilds a worker's exception from its formatted traceback; the message comes back clean."""
    _rgbnt201(str(tmp_path))
    bad = tmp_path / "RGBNT201" / "test" / "NI" / "000258_cam2_0_00.jpg"
    _corrupt(bad)
    ds = make_dataset("RGBNT201", str(tmp_path))
    transform = MultiModalTransform(build_image_transform(False, (16, 8)))
    loader = DataLoader(TransformedSamples(ds, ds.query, transform), batch_size=2, num_workers=1)
    with pytest.raises(UserError) as excinfo:
        next(iter(loader))
    assert str(excinfo.value).startswith(f"cannot read image {bad}: ")
    assert "\n" not in str(excinfo.value) and "Traceback" not in str(excinfo.value)


def test_user_error_message_untouched_when_not_wrapped():
    assert str(UserError("Caught nothing: plain\nmessage")) == "Caught nothing: plain\nmessage"


def test_cli_missing_root_exits_2_without_traceback(tmp_path, capsys):
    def main(cfg):
        make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR)

    with pytest.raises(SystemExit) as excinfo:
        run_cli(main, "test", ["DATASETS.NAMES", "Market-MM", "DATASETS.ROOT_DIR", str(tmp_path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Market-MM: dataset folder not found: {tmp_path}/Market1501-MM or "
                          f"{tmp_path}/market1501_to_RGBNT201_dark ")
    assert "Traceback" not in err


def test_train_cli_corrupt_image_in_worker_one_clean_line(tiny_root, tmp_path):
    """End to end: ``train.py`` with DataLoader workers on a tree whose NI training images are corrupt."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(tiny_root, "Synthetic"), root / "Synthetic")
    ni = root / "Synthetic" / "train_171" / "NI"
    for name in os.listdir(ni):
        _corrupt(ni / name)
    cmd = [sys.executable, "train.py", "--config_file", "configs/Synthetic/MHCF.yml",
           "DATASETS.ROOT_DIR", str(root), "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu",
           "DATALOADER.NUM_WORKERS", "1", "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "4",
           "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    expected = re.escape(f"error: cannot read image {ni}/") + r"\d{6}_cam\d_0_\d\d\.jpg: " + \
        re.escape("not an image file (corrupt or wrong format)")
    assert re.fullmatch(expected, lines[0]), lines[0]
