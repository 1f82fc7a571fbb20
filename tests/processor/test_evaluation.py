"""test.py's evaluation paths: re-ranking wired to TEST.RE_RANKING, consistent with the plain ranking."""

import json
import os

import pytest

from model import checkpoint_record, make_model
from processor import tester
from tests.conftest import tiny_config
from utils.files import atomic_save

pytestmark = pytest.mark.usefixtures("one_thread")


def test_re_ranking_runs_through_test_py(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path))
    weight = str(tmp_path / "model.pth")
    atomic_save(checkpoint_record(make_model(cfg, 8), 8, cfg.dump(), 0), weight)
    plain = tester.test(tiny_config(tiny_root, str(tmp_path / "plain"), "TEST.WEIGHT", weight))
    ranked = tester.test(tiny_config(tiny_root, str(tmp_path / "rr"), "TEST.WEIGHT", weight,
                                        "TEST.RE_RANKING", "True"))
    with open(os.path.join(tmp_path, "rr", "test_results.json")) as f:
        saved = json.load(f)
    assert saved["re_ranking"] is True and saved["mAP"] == pytest.approx(ranked["mAP"])
    assert plain["re_ranking"] is False and ranked["mAP"] != plain["mAP"]
    # lambda = 1 keeps only the original distance (each query's row scaled by a constant): the ranking,
    # hence every figure, is the plain one
    original = tester.test(tiny_config(tiny_root, str(tmp_path / "l1"), "TEST.WEIGHT", weight,
                                          "TEST.RE_RANKING", "True", "TEST.RE_RANKING_LAMBDA", "1.0"))
    for key in ("mAP", "mINP", "Rank-1", "Rank-5", "Rank-10"):
        assert original[key] == pytest.approx(plain[key], abs=1e-9), key
