"""The two missing-modality protocols and any-to-any retrieval: ``zero`` feeds zero images, ``drop`` leaves the
modality out of the model's computation; the any-to-any table is ``evaluate_rank`` of the views it names."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from datasets import make_dataset, make_test_loader
from model import checkpoint_record, make_model
from processor import tester
from processor.device import BatchToDevice
from processor.evaluation import View, extract_views
from tests.conftest import kept_logging, tiny_config
from utils.files import atomic_save
from utils.metrics import evaluate_rank

pytestmark = pytest.mark.usefixtures("one_thread")

MODALITIES = ("RGB", "NI", "TI")


def _model(cfg, dataset):
    torch.manual_seed(0)
    return make_model(cfg, dataset.num_train_pids).eval()


def _masked(batch: dict, kept: tuple[str, ...]) -> dict:
    """The batch with the presence mask of a modality subset kept by every sample."""
    size = len(batch["pid"])
    return {**batch, "present": {m: torch.full((size,), m in kept) for m in MODALITIES}}


def test_zero_and_drop_differ_as_documented(tiny_root, tmp_path):
    """zero = the model on zero images; drop = the model with the modality absent (its images unread, its
    slots the mean of the present ones); nothing missing = one computation under both."""
    cfg = tiny_config(tiny_root, str(tmp_path))
    dataset = make_dataset("Synthetic", tiny_root)
    model = _model(cfg, dataset)
    loader = make_test_loader(cfg, dataset, dataset.query)
    views = [View(p, s) for p in ("zero", "drop") for s in ("none", "t", "rn")]
    to_device = BatchToDevice(cfg, torch.device("cpu"))  # uint8 images -> normalised float32
    feats = extract_views(model, loader, to_device, views, progress=False)
    batch = to_device(next(iter(loader)))
    assert len(batch["pid"]) == len(dataset.query)
    dim = model.encoder("RGB").embed_dim
    with torch.no_grad():
        assert torch.equal(feats[View("zero", "none")], feats[View("drop", "none")])
        for setting, kept in (("t", ("RGB", "NI")), ("rn", ("TI",))):
            missing = [m for m in MODALITIES if m not in kept]
            zeroed = {**batch, **{m: torch.zeros_like(batch[m]) for m in missing}}
            torch.testing.assert_close(feats[View("zero", setting)], model(zeroed), atol=1e-5, rtol=1e-5)
            scrambled = {**batch, **{m: torch.randn_like(batch[m]) for m in missing}}  # never read under drop
            torch.testing.assert_close(feats[View("drop", setting)], model(_masked(scrambled, kept)),
                                       atol=1e-5, rtol=1e-5)
            drop = feats[View("drop", setting)].reshape(len(batch["pid"]), 3, 3, dim)  # (B, feature, modality, C)
            slots = [MODALITIES.index(m) for m in kept]
            for m in missing:  # every feature's slot of a missing modality: the mean of the present ones
                torch.testing.assert_close(drop[:, :, MODALITIES.index(m)], drop[:, :, slots].mean(2))
            assert (feats[View("zero", setting)] - feats[View("drop", setting)]).abs().max() > 1e-3


def test_any_to_any_table_is_evaluate_rank_of_its_views(tiny_root, tmp_path):
    """test.py with TEST.QUERY_MISS all and TEST.GALLERY_MISS all: the 7 x 7 table in test_results.json; two
    cells recomputed by hand with evaluate_rank on features of the model's forward with presence masks."""
    cfg = tiny_config(tiny_root, str(tmp_path))
    dataset = make_dataset("Synthetic", tiny_root)
    model = _model(cfg, dataset)
    weight = str(tmp_path / "model.pth")
    atomic_save(checkpoint_record(model, dataset.num_train_pids, cfg.dump(), 0), weight)
    out = str(tmp_path / "any")
    with kept_logging():
        record = tester.test(tiny_config(tiny_root, out, "TEST.WEIGHT", weight, "TEST.QUERY_MISS", "all",
                                         "TEST.GALLERY_MISS", "all", "TEST.MISS_PROTOCOL", "drop"))
    with open(os.path.join(out, "test_results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(record))
    table = record["any_to_any"]
    names = ["RGB+NI+TI", "NI+TI", "RGB+TI", "RGB+NI", "TI", "NI", "RGB"]
    assert table["protocol"] == "drop" and table["query"] == names and table["gallery"] == names
    assert len(table["mAP"]) == 7 and all(len(row) == 7 for row in table["Rank-1"])
    assert record["query_miss"] == record["gallery_miss"] == "none" and record["mAP"] == table["mAP"][0][0]

    batch = BatchToDevice(cfg, torch.device("cpu"))(next(iter(make_test_loader(cfg, dataset, dataset.query))))
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    with torch.no_grad():
        for query, gallery in ((("RGB",), ("NI",)), (("RGB", "NI", "TI"), ("TI",))):
            qf = F.normalize(model(_masked(batch, query)), dim=1)
            gf = F.normalize(model(_masked(batch, gallery)), dim=1)
            expected = evaluate_rank((2 - 2 * qf @ gf.t()).numpy(), **meta)
            i, j = names.index("+".join(query)), names.index("+".join(gallery))
            assert table["mAP"][i][j] == pytest.approx(100 * expected.mAP, abs=1e-4)
            assert table["Rank-1"][i][j] == pytest.approx(100 * expected.cmc[0], abs=1e-4)
            assert table["mINP"][i][j] == pytest.approx(100 * expected.mINP, abs=1e-4)


def test_centred_views_subtract_each_views_training_mean(tiny_root, tmp_path):
    """TEST.CENTRE_VIEWS: a cell whose query and gallery keep different modalities compares L2-normalised
    features minus their modalities' mean over the training set (recomputed by hand from the model's forward on
    the training samples); a cell with the same modalities on both sides is the uncentred one."""
    cfg = tiny_config(tiny_root, str(tmp_path))
    dataset = make_dataset("Synthetic", tiny_root)
    model = _model(cfg, dataset)
    weight = str(tmp_path / "model.pth")
    atomic_save(checkpoint_record(model, dataset.num_train_pids, cfg.dump(), 0), weight)
    with kept_logging():
        table = tester.test(tiny_config(tiny_root, str(tmp_path / "centred"), "TEST.WEIGHT", weight,
                                        "TEST.QUERY_MISS", "nt", "TEST.GALLERY_MISS", "all", "TEST.MISS_PROTOCOL",
                                        "drop", "TEST.CENTRE_VIEWS", "True"))["any_to_any"]
    assert table["centred_views"] is True and table["query"] == ["RGB"]

    whole = tiny_config(tiny_root, str(tmp_path), "TEST.IMS_PER_BATCH", str(len(dataset.train)))  # one batch
    to_device = BatchToDevice(cfg, torch.device("cpu"))
    batch = to_device(next(iter(make_test_loader(cfg, dataset, dataset.query))))
    train = to_device(next(iter(make_test_loader(whole, dataset, list(dataset.train)))))
    assert len(train["pid"]) == len(dataset.train)
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    with torch.no_grad():
        def centred(kept):
            mean = F.normalize(model(_masked(train, kept)).double(), dim=1).mean(0)
            return F.normalize(F.normalize(model(_masked(batch, kept)).double(), dim=1) - mean, dim=1)
        for gallery, centre in ((("TI",), True), (("RGB", "NI", "TI"), True), (("RGB",), False)):
            if centre:
                qf, gf = centred(("RGB",)), centred(gallery)
            else:
                qf = gf = F.normalize(model(_masked(batch, ("RGB",))).double(), dim=1)
            expected = evaluate_rank((2 - 2 * qf @ gf.t()).numpy(), **meta)
            j = table["gallery"].index("+".join(gallery))
            assert table["mAP"][0][j] == pytest.approx(100 * expected.mAP, abs=1e-3)
            assert table["Rank-1"][0][j] == pytest.approx(100 * expected.cmc[0], abs=1e-3)
        raw = [F.normalize(model(_masked(batch, kept)), dim=1) for kept in (("RGB",), ("TI",))]
        uncentred = evaluate_rank((2 - 2 * raw[0] @ raw[1].t()).numpy(), **meta).mAP
        assert abs(table["mAP"][0][table["gallery"].index("TI")] - 100 * uncentred) > 0.5  # centring matters here
