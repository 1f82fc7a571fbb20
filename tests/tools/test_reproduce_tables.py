"""tools/reproduce_tables.py end to end on the tiny Synthetic tree: the same figures as test.py, absent
benchmarks listed as not present, and several seeds' runs as mean ± standard deviation of the final epoch and
of the best epoch chosen on the test set."""

import json
import os
import shutil
import statistics

import pytest

from config import load_config
from processor import tester
from tests.conftest import tiny_config
from tools import reproduce_tables


def test_tables_match_test_py_and_list_absent_benchmarks(tiny_root, trained_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "Synthetic")          # the --runs layout: <runs>/<DATASET>/
    (runs / "MSVR310").mkdir()                              # a run folder without model_final.pth
    shutil.copy(os.path.join(trained_run, "model_final.pth"), runs / "RGBNT100.pth")  # or <runs>/<DATASET>.pth
    out = tmp_path / "tables"
    reproduce_tables.main(["--root", tiny_root, "--runs", str(runs),
                          "--rgbnt201", os.path.join(trained_run, "model_final.pth"), "--out", str(out),
                          "MODEL.DEVICE", "cpu"])
    with open(out / "tables.json") as f:
        records = json.load(f)
    assert list(records) == ["RGBNT201", "Market-MM", "RGBNT100", "MSVR310", "Synthetic"]
    assert records["RGBNT201"]["status"].startswith("dataset not found")
    assert records["Market-MM"]["status"] == (f"no checkpoint (give --market-mm, {runs}/Market-MM/ or "
                                              f"{runs}/Market-MM.pth)")
    assert records["RGBNT100"]["status"].startswith("dataset not found")
    assert records["RGBNT100"]["checkpoint"] == str(runs / "RGBNT100.pth")
    assert records["MSVR310"]["status"] == f"no model_final.pth in {runs}/MSVR310"

    # the same checkpoint through test.py, sweeping the missing modalities
    expected = tester.test(tiny_config(tiny_root, str(tmp_path / "test"), "TEST.WEIGHT",
                                          str(runs / "Synthetic" / "model_final.pth"), "TEST.MISS", "all"))
    ours = records["Synthetic"]
    assert ours["config"] == str(runs / "Synthetic" / "config.yaml")
    for key in ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-9)
    assert set(ours["settings"]) == set(expected["settings"])
    for setting, figures in expected["settings"].items():
        assert ours["settings"][setting] == pytest.approx(figures, abs=1e-9)
    assert ours["average_missing"] == pytest.approx(expected["average_missing"])

    table = (out / "tables.md").read_text()
    assert table.rstrip("\n") in capsys.readouterr().out
    main, sweep = table.split("## Missing modalities")
    rgbnt201 = next(line for line in main.splitlines() if line.startswith("| RGBNT201 |"))
    assert "| 81.7 | 84.2 |" in rgbnt201 and "not present: dataset not found" in rgbnt201
    synthetic = next(line for line in main.splitlines() if line.startswith("| Synthetic |"))
    assert f"| {ours['mAP']:.1f} | {ours['Rank-1']:.1f} | {ours['Rank-5']:.1f} |" in synthetic
    synthetic_sweep = next(line for line in sweep.splitlines() if line.startswith("| Synthetic |"))
    avg = ours["average_missing"]
    assert synthetic_sweep.endswith(f"| {avg['mAP']:.1f} / {avg['Rank-1']:.1f} |")
    assert f"{ours['settings']['r']['mAP']:.1f} / {ours['settings']['r']['Rank-1']:.1f}" in synthetic_sweep
    assert "| w/o RGB | w/o NI | w/o TI | w/o RGB+NI | w/o RGB+TI | w/o NI+TI | average |" in sweep

    # --runs finds the Synthetic run, but never generates the dataset inside the user's dataset root
    empty = tmp_path / "user_root"
    empty.mkdir()
    reproduce_tables.main(["--root", str(empty), "--runs", str(runs), "--out", str(tmp_path / "tables2")])
    with open(tmp_path / "tables2" / "tables.json") as f:
        assert json.load(f)["Synthetic"]["status"] == f"dataset not found ({empty / 'Synthetic'})"
    assert os.listdir(empty) == []


def test_a_missing_explicit_checkpoint_is_a_user_error(tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce_tables.main(["--root", tiny_root, "--synthetic", str(tmp_path / "nope.pth"),
                              "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--synthetic" in err and "nope.pth" in err


def _seed_run(source: str, folder, seed: int, weights: str, best: dict | None) -> None:
    """A training output folder: ``weights`` as its model_final.pth, its config with SOLVER.SEED ``seed``,
    and a test_results.json holding ``best`` as the best epoch chosen on the test set."""
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(source, weights), folder / "model_final.pth")
    cfg = load_config(os.path.join(source, "config.yaml"), ["SOLVER.SEED", str(seed)])
    (folder / "config.yaml").write_text(cfg.dump())
    (folder / "test_results.json").write_text(json.dumps({"best_epoch_chosen_on_test_set": best}))


def test_seeds_give_mean_and_spread_of_final_and_best_on_test(tiny_root, trained_run, tmp_path, capsys):
    """--seeds 3: the final epoch of three runs (two checkpoints that differ), evaluated, and their best
    epochs chosen on the test set (from test_results.json), as mean ± sample standard deviation."""
    folder = tmp_path / "Synthetic"
    bests = [{"epoch": e, "mAP": m, "Rank-1": r, "Rank-5": 90.0, "Rank-10": 95.0, "mINP": 40.0}
             for e, m, r in ((1, 50.0, 60.0), (2, 54.0, 66.0), (2, 58.0, 66.0))]
    for i, (weights, best) in enumerate(zip(("model_epoch001.pth", "model_final.pth", "model_final.pth"), bests)):
        _seed_run(trained_run, folder / f"seed{i}", 42 + i, weights, best)
    _seed_run(trained_run, folder / "seed9", 99, "model_final.pth", None)          # a fourth run: not used
    out = tmp_path / "tables"
    reproduce_tables.main(["--root", tiny_root, "--synthetic", str(folder), "--seeds", "3", "--no-sweep",
                           "--out", str(out), "MODEL.DEVICE", "cpu"])
    record = json.loads((out / "tables.json").read_text())["Synthetic"]
    runs = record["runs"]
    assert [r["weight"] for r in runs] == [str(folder / f"seed{i}" / "model_final.pth") for i in range(3)]
    assert runs[1]["mAP"] == runs[2]["mAP"] != runs[0]["mAP"]        # epoch 1 and epoch 2 weights
    maps = [r["mAP"] for r in runs]
    assert record["final"]["mAP"]["mean"] == pytest.approx(sum(maps) / 3)
    assert record["final"]["mAP"]["std"] == pytest.approx(statistics.stdev(maps))
    assert record["best_epoch_chosen_on_test_set"]["epochs"] == [1, 2, 2]
    assert record["best_epoch_chosen_on_test_set"]["mAP"] == {"mean": 54.0, "std": 4.0}
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| benchmark | runs |"))
    assert lines[header + 1].count("|---") == lines[header].count(" | ") + 1     # one column per header cell
    row = next(line for line in lines if line.startswith("| Synthetic |"))
    mean_std = f"{sum(maps) / 3:.1f} ± {statistics.stdev(maps):.1f}"
    assert row.startswith(f"| Synthetic | 3 | {mean_std} |")
    assert "| 54.0 ± 4.0 | 64.0 ± 3.5 | 1, 2, 2 | — | — | — / — | — / — |" in row


def test_seeds_need_enough_runs_of_different_seeds(tiny_root, trained_run, tmp_path, capsys):
    folder = tmp_path / "Synthetic"
    for i in range(2):
        _seed_run(trained_run, folder / f"run{i}", 7, "model_final.pth", None)
    for seeds, message in (("3", "--seeds 3: 2 training run(s)"), ("2", "both trained with SOLVER.SEED 7")):
        with pytest.raises(SystemExit) as exc:
            reproduce_tables.main(["--root", tiny_root, "--synthetic", str(folder), "--seeds", seeds,
                                   "--out", str(tmp_path / "out")])
        assert exc.value.code == 2 and message in capsys.readouterr().err
