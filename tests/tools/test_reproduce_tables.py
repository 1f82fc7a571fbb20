"""tools/reproduce_tables.py end to end on the tiny Synthetic tree: the same figures as test.py, and
absent benchmarks listed as not present."""

import json
import os
import shutil

import pytest

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
