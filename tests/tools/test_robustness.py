"""tools/robustness.py on the tiny Synthetic tree, with runs already in place (untrained models): it recognises
finished runs and never touches a folder it did not make; its figures are those of test.py."""

import json
import os

import pytest
import torch

from model import checkpoint_record, make_model
from processor import tester
from tests.conftest import REPO, kept_logging, tiny_opts
from tools import robustness
from utils.errors import UserError
from utils.files import atomic_save, atomic_write_text

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = os.path.join(REPO, "configs", "Synthetic", "MHCF_robust.yml")
DEDICATED = ["only_NI+TI", "only_RGB+TI", "only_RGB+NI", "only_TI", "only_NI", "only_RGB"]


def _finished_runs(root: str, runs: str) -> dict:
    """Every run the tool asks for, as a finished run folder (config.yaml + model_final.pth, random weights)."""
    configs = robustness.run_configs(CONFIG, tiny_opts(root), runs)
    for seed, cfg in enumerate(configs.values()):
        torch.manual_seed(seed)
        atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
        atomic_save(checkpoint_record(make_model(cfg, 8), 8, cfg.dump(), 2), os.path.join(cfg.OUTPUT_DIR,
                                                                                         "model_final.pth"))
    return configs


def test_the_runs_it_asks_for():
    configs = robustness.run_configs(CONFIG, [], "runs")
    assert list(configs) == ["robust", "standard", *DEDICATED]
    assert configs["robust"].INPUT.MODALITY_DROPOUT > 0 and configs["robust"].OUTPUT_DIR == "runs/robust"
    for name in ["standard", *DEDICATED]:
        assert configs[name].INPUT.MODALITY_DROPOUT == 0
        assert os.path.join("runs", name) == configs[name].OUTPUT_DIR
    assert configs["only_RGB+TI"].MODEL.MODALITIES == ["RGB", "TI"] == configs["only_RGB+TI"].MODEL.HEAT.ORDER
    with pytest.raises(UserError, match="INPUT.MODALITY_DROPOUT is 0"):
        robustness.run_configs(os.path.join(REPO, "configs", "Synthetic", "MHCF.yml"), [], "runs")


def test_report_from_finished_runs(tiny_root, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    configs = _finished_runs(tiny_root, runs)
    with kept_logging():
        robustness.main(["--runs", runs, "--config_file", CONFIG, *tiny_opts(tiny_root)])
    with open(os.path.join(runs, "robustness.json")) as f:
        record = json.load(f)
    assert {name: run["state"] for name, run in record["runs"].items()} == dict.fromkeys(configs, "done")
    with open(os.path.join(runs, "robustness.md")) as f:
        assert f.read().strip() in capsys.readouterr().out

    # the figures are test.py's: the robust model without NI and TI under drop
    robust_weight = os.path.join(runs, "robust", "model_final.pth")
    cfg = configs["robust"].clone()
    cfg.defrost()
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path / "t1"), "TEST.WEIGHT", robust_weight, "TEST.MISS", "nt",
                         "TEST.MISS_PROTOCOL", "drop"])
    with kept_logging():
        rgb = tester.test(cfg)
    row = next(r for r in record["dedicated"] if r["kept"] == "RGB")
    assert row["robust_drop"] == pytest.approx(rgb["mAP"], abs=1e-6)
    assert row["ratio"] == pytest.approx(100 * row["robust_drop"] / row["dedicated"])
    assert [r["kept"] for r in record["dedicated"]] == [name[len("only_"):] for name in DEDICATED]

    table = record["any_to_any"]["robust"]
    assert table["query"] == table["gallery"] == ["RGB+NI+TI", "NI+TI", "RGB+TI", "RGB+NI", "TI", "NI", "RGB"]
    assert table["mAP"][6][5] == pytest.approx(record["any_to_any"]["cross_modal_cells"]["robust"]["RGB->NI"])
    assert table["mAP"][0][0] == pytest.approx(record["full"]["robust"]["mAP"])
    baseline = record["any_to_any"]["random_baseline"]
    assert baseline["draws"] == 20 and 0 < baseline["mAP"] < 100 and baseline["mAP_std"] > 0
    ceiling = record["any_to_any"]["shared_cue_ceiling"]
    assert ceiling["mAP"] > baseline["mAP"]  # knowing the build beats chance
    assert record["any_to_any"]["target"]["threshold"] == pytest.approx(baseline["mAP"] + robustness.MARGIN)
    # the centred cells are test.py's with TEST.CENTRE_VIEWS
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path / "t2"), "TEST.MISS", "none", "TEST.QUERY_MISS", "nt",
                         "TEST.GALLERY_MISS", "rt", "TEST.CENTRE_VIEWS", True])
    with kept_logging():
        centred = tester.test(cfg)["any_to_any"]
    assert centred["centred_views"] and centred["query"] == ["RGB"] and centred["gallery"] == ["NI"]
    assert record["any_to_any"]["cross_modal_cells_centred"]["robust"]["RGB->NI"] == pytest.approx(
        centred["mAP"][0][0], abs=1e-6)
    assert record["any_to_any"]["cross_modal_cells_centred"]["robust"]["RGB->NI"] != pytest.approx(
        record["any_to_any"]["cross_modal_cells"]["robust"]["RGB->NI"], abs=1e-3)
    probe = record["any_to_any"]["build_probe"]
    assert set(probe) == {"robust", "standard"}
    for name in probe:
        accuracy = probe[name]["accuracy"]
        assert list(accuracy) == ["RGB", "NI", "TI"] and all(list(row) == list(accuracy) for row in accuracy.values())
        assert all(0 <= v <= 100 for row in accuracy.values() for v in row.values())


def test_folders_it_did_not_make_stop_it_before_any_training(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    configs = robustness.run_configs(CONFIG, tiny_opts(tiny_root), str(runs))
    (runs / "standard").mkdir(parents=True)
    (runs / "standard" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="standard is not empty and holds no training run"):
        robustness.ensure_trained(configs)
    assert sorted(os.listdir(runs)) == ["standard"]  # nothing trained, nothing written

    (runs / "standard" / "notes.txt").unlink()
    other = configs["standard"].clone()
    other.defrost()
    other.SOLVER.MAX_EPOCHS = 7
    (runs / "standard" / "config.yaml").write_text(other.dump())
    with pytest.raises(UserError, match="holds a run of another config .*SOLVER.MAX_EPOCHS"):
        robustness.ensure_trained(configs)

    (runs / "standard" / "config.yaml").write_text(configs["standard"].dump())
    assert robustness.run_state(configs["standard"]) == "train"      # its config, nothing saved yet
    (runs / "standard" / "last.pth").write_bytes(b"")
    assert robustness.run_state(configs["standard"]) == "resume"
    # a run is recognised by what decides its model: how it ran (workers) may differ, a key its config.yaml
    # lacks (added since) counts as its default
    other = configs["standard"].clone()
    other.defrost()
    other.DATALOADER.NUM_WORKERS = 5
    del other.INPUT["SYNC_AUG"]                                   # False, the default
    (runs / "standard" / "config.yaml").write_text(other.dump())
    assert robustness.run_state(configs["standard"]) == "resume"
    del other.SOLVER["BASE_LR"]                                   # 0.001 in the config, not the default
    (runs / "standard" / "config.yaml").write_text(other.dump())
    with pytest.raises(UserError, match="differs in SOLVER.BASE_LR"):
        robustness.run_state(configs["standard"])


def test_two_fold_accuracy_against_loops():
    """Nearest build centre: centres from one fold of one modality's features, the other fold classified."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(20, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    labels = torch.randint(0, 3, (20,), generator=gen)
    fold = torch.arange(20) % 3 == 0
    right = 0
    for i in range(20):
        centres = {c: a[[j for j in range(20) if fold[j] != fold[i] and labels[j] == c]].mean(0)
                   for c in labels[fold != fold[i]].tolist()}
        right += min(centres, key=lambda c: float((b[i] - centres[c]).norm())) == labels[i]
    assert robustness.two_fold_accuracy(a, b, labels, fold) == pytest.approx(100 * right / 20)
    separable = torch.nn.functional.one_hot(labels, 3).double() + 0.01 * b[:, :3]
    assert robustness.two_fold_accuracy(separable, separable, labels, fold) == 100
