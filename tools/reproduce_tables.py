"""Reproduce the paper's tables: evaluate the final epoch of each benchmark's training, show the best epoch
chosen on the test set beside it, and compare both with the paper.

    python -m tools.reproduce_tables --root /data/reid --runs output/released
    python -m tools.reproduce_tables --root /data/reid --rgbnt201 output/RGBNT201 --msvr310 msvr.pth
    python -m tools.reproduce_tables --root ./data --synthetic output/Synthetic --seeds 3

Each checkpoint is a file (evaluated with ``configs/<DATASET>/MHCF.yml``) or a training output folder
(its ``model_final.pth`` with its own ``config.yaml``). ``--runs DIR`` takes ``DIR/<DATASET>/`` or
``DIR/<DATASET>.pth`` for every benchmark not given explicitly. ``--seeds N`` averages N training runs of
each benchmark: its folder holds them as sub-folders (the first N by name that hold a model_final.pth, e.g.
seed42/ seed43/ seed44/, trained with different SOLVER.SEED), and every figure is shown as mean ± sample
standard deviation. Trailing ``KEY VALUE`` pairs override every benchmark's config.

Columns: the final epoch, evaluated here (what this repository reports); the best epoch chosen on the test
set (``best_epoch_chosen_on_test_set`` of the run's test_results.json, recorded when it was trained with
SOLVER.EVAL_PERIOD: the authors' protocol, as the paper's figures); the paper's figures. Prints two Markdown
tables -- all modalities, and the missing-modality sweep of the final epoch -- and writes ``tables.md`` and
``tables.json`` into ``--out``. Benchmarks without a checkpoint or without their dataset folder are listed as
not present.
"""

import argparse
import json
import logging
import os
import statistics
from collections.abc import Mapping, Sequence

from config import load_config
from datasets import DATASETS, make_dataset
from processor.device import resolve_device
from processor.evaluation import evaluate
from processor.results import BEST_ON_TEST, METRICS, RESULTS, results_record
from utils.errors import UserError
from utils.modalities import NONE, miss_settings, missing_modalities

from .common import REPO, load_trained_model, run_tool, tool_parser, write_report

logger = logging.getLogger(__name__)

#: The paper's results with all modalities (mAP, Rank-1, percent).
PAPER = {"RGBNT201": (81.7, 84.2), "Market-MM": (85.2, 94.3), "RGBNT100": (87.2, 97.1), "MSVR310": (59.3, 68.1)}
#: Benchmarks of the tables, in the paper's order; Synthetic only when a checkpoint is given.
BENCHMARKS = (*PAPER, "Synthetic")


def option(name: str) -> str:
    """``--rgbnt201``, ``--market-mm``, ...: the command-line option of a benchmark."""
    return "--" + name.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("reproduce_tables", __doc__)
    parser.add_argument("--root", default="./data", help="folder holding the datasets (DATASETS.ROOT_DIR)")
    parser.add_argument("--runs", default="", help="folder holding, per benchmark, a training output folder "
                        "<runs>/<DATASET>/ or a checkpoint file <runs>/<DATASET>.pth")
    for name in BENCHMARKS:
        parser.add_argument(option(name), dest=name, default="", metavar="PATH",
                            help=f"{name}: checkpoint file or training output folder")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="average N training runs per benchmark, "
                        "sub-folders of its folder (mean ± sample standard deviation)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the missing-modality sweep")
    parser.add_argument("--out", default="./output/tables", help="folder for tables.md and tables.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every benchmark")
    return parser


def _benchmark_path(name: str, explicit: str, runs: str, seeds: int) -> str:
    """The checkpoint file or folder given for a benchmark (explicitly or under ``--runs``); a reason string
    (prefixed "absent: ") when there is none."""
    if explicit:
        if not os.path.exists(explicit):
            raise UserError(f"{option(name)}: checkpoint not found: {explicit}")
        return explicit
    if not runs:
        return f"absent: no checkpoint (give {option(name)} or --runs)"
    folder, file = os.path.join(runs, name), os.path.join(runs, f"{name}.pth")
    if os.path.isdir(folder):
        return folder
    if os.path.isfile(file) and seeds == 1:
        return file
    return f"absent: no checkpoint (give {option(name)}, {folder}/" + (f" or {file})" if seeds == 1 else ")")


def _run_of_folder(folder: str, default_config: str) -> tuple[str, str, str]:
    """``(checkpoint, config file, folder)`` of a training output folder."""
    run_config = os.path.join(folder, "config.yaml")
    return (os.path.join(folder, "model_final.pth"), run_config if os.path.isfile(run_config) else default_config,
            folder)


def locate(name: str, explicit: str, runs: str, seeds: int = 1) -> list[tuple[str, str, str | None]] | str:
    """The ``seeds`` runs of a benchmark as ``(checkpoint, config file, run folder or None)``, or the reason it
    is not present. A wrong explicit path is a UserError."""
    default_config = os.path.join(REPO, "configs", name, "MHCF.yml")
    path = _benchmark_path(name, explicit, runs, seeds)
    if path.startswith("absent: "):
        return path[len("absent: "):]
    if os.path.isfile(path):
        if seeds > 1:
            raise UserError(f"{option(name)} {path}: --seeds {seeds} needs a folder of {seeds} training runs")
        return [(path, default_config, None)]
    if seeds == 1:
        if not os.path.isfile(os.path.join(path, "model_final.pth")):
            if explicit:
                raise UserError(f"{option(name)} {path}: a folder without model_final.pth")
            return f"no model_final.pth in {path}"
        return [_run_of_folder(path, default_config)]
    found = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "model_final.pth")))
    if len(found) < seeds:
        reason = (f"--seeds {seeds}: {len(found)} training run(s) in {path} (sub-folders holding a "
                  f"model_final.pth{': ' + ', '.join(found) if found else ''})")
        if explicit:
            raise UserError(f"{option(name)} {reason}")
        return reason
    chosen = [_run_of_folder(os.path.join(path, d), default_config) for d in found[:seeds]]
    trained_seeds: dict[int, str] = {}
    for _, config_file, folder in chosen:
        if config_file != default_config:
            seed = load_config(config_file).SOLVER.SEED
            if seed in trained_seeds:
                raise UserError(f"{trained_seeds[seed]} and {folder} were both trained with SOLVER.SEED {seed}: "
                                f"--seeds averages runs of different seeds")
            trained_seeds[seed] = folder
    return chosen


def best_on_test(folder: str | None) -> dict | None:
    """The run's best epoch chosen on the test set (its test_results.json), None when it has none."""
    path = os.path.join(folder, RESULTS) if folder else ""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get(BEST_ON_TEST)


def dataset_present(name: str, root: str, explicit: bool) -> bool:
    """Whether the benchmark's folder is under ``root``. Synthetic is generated when absent only when its
    checkpoint was given by name (``--synthetic``): ``--runs`` never writes a dataset into ``root``."""
    return (name == "Synthetic" and explicit) or any(os.path.isdir(os.path.join(root, d))
                                                     for d in DATASETS[name].dirnames)


def evaluate_benchmark(name: str, checkpoint: str, config_file: str, root: str, out: str, opts: Sequence[str],
                       sweep: bool) -> dict:
    """The ``test_results.json`` record of one benchmark (with the sweep under "settings")."""
    cfg = load_config(config_file, ["DATASETS.ROOT_DIR", root, "OUTPUT_DIR", os.path.join(out, name),
                                    "TEST.WEIGHT", checkpoint, *opts])
    if name != cfg.DATASETS.NAMES:
        raise UserError(f"{config_file}: DATASETS.NAMES is {cfg.DATASETS.NAMES}, but it was given for {name}")
    device = resolve_device(cfg.MODEL.DEVICE)
    dataset = make_dataset(name, root, cfg.MODEL.MODALITIES)
    model = load_trained_model(cfg, checkpoint, device)
    logger.info("evaluating %s on %s (%s, config %s)", checkpoint, name, device, config_file)
    settings = miss_settings(cfg.MODEL.MODALITIES) if sweep else [NONE]
    results = evaluate(cfg, model, dataset, device, settings)
    record = results_record(results, NONE, {"dataset": name, "weight": checkpoint, "config": config_file,
                                              "re_ranking": cfg.TEST.RE_RANKING})
    record["modalities"] = list(cfg.MODEL.MODALITIES)
    return record


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def combine_runs(name: str, folder: str, runs: Sequence[dict]) -> dict:
    """The record of several training runs of one benchmark: every run's record under "runs", and the mean
    and sample standard deviation of the final figures and of the best epochs chosen on the test set."""
    record = {"dataset": name, "folder": folder, "runs": list(runs),
              "final": {k: _summary([r[k] for r in runs]) for k in METRICS}, "modalities": runs[0]["modalities"]}
    bests = [r.get(BEST_ON_TEST) for r in runs]
    if all(bests):
        record[BEST_ON_TEST] = {"epochs": [b["epoch"] for b in bests],
                                **{k: _summary([b[k] for b in bests]) for k in METRICS}}
    return record


def _runs(rec: Mapping) -> list[dict]:
    """The run records of a benchmark's record (one for a single checkpoint)."""
    return list(rec.get("runs", [rec] if "mAP" in rec else []))


def _cell(values: Sequence[float | None]) -> str:
    """One value, or mean ± sample standard deviation of several; "—" when there is none."""
    if not values or any(v is None for v in values):
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def _delta(values: Sequence[float | None], paper: float | None) -> str:
    if paper is None or not values or any(v is None for v in values):
        return "—"
    return f"{statistics.fmean(values) - paper:+.1f}"


def format_main_table(records: Mapping[str, dict]) -> str:
    """Ours -- the final epoch and the best epoch chosen on the test set -- vs the paper with all modalities;
    not-present benchmarks keep their row."""
    lines = ["| benchmark | runs | " + " | ".join(METRICS) + " | best-on-test mAP | best-on-test Rank-1 | best epoch "
             "| paper mAP | paper Rank-1 | Δ mAP final / best-on-test | Δ Rank-1 final / best-on-test | checkpoint |",
             "|---" * (len(METRICS) + 10) + "|"]
    for name, rec in records.items():
        runs = _runs(rec)
        bests = [r.get(BEST_ON_TEST) for r in runs]
        best = {k: [b[k] if b else None for b in bests] for k in ("mAP", "Rank-1", "epoch")}
        final = {k: [r[k] for r in runs] for k in METRICS}
        paper = PAPER.get(name, (None, None))
        deltas = [f"{_delta(final[k], p)} / {_delta(best[k], p)}" for k, p in zip(("mAP", "Rank-1"), paper)]
        epochs = "—" if not runs or None in best["epoch"] else ", ".join(str(e) for e in best["epoch"])
        source = rec.get("folder") or rec.get("weight") or f"not present: {rec['status']}"
        cells = [str(len(runs)) if runs else "—", *(_cell(final[k]) for k in METRICS), _cell(best["mAP"]),
                 _cell(best["Rank-1"]), epochs, *(_cell([p]) for p in paper), *deltas, source]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sweep_table(records: Mapping[str, dict], modalities: Sequence[str]) -> str:
    """mAP / Rank-1 of the final epoch with missing modalities (the six settings and their average) per
    benchmark; mean ± sample standard deviation over several runs."""
    settings = miss_settings(modalities)[1:]
    names = ["w/o " + "+".join(missing_modalities(s, modalities)) for s in settings]
    lines = ["| benchmark | " + " | ".join(names) + " | average |", "|---" * (len(names) + 2) + "|"]
    for name, rec in records.items():
        runs = _runs(rec)
        if not runs or any("settings" not in r for r in runs):
            lines.append(f"| {name} | " + " | ".join("—" for _ in names) + " | not present |")
            continue
        swept = [[r["settings"].get(s) for r in runs] for s in settings] + [[r["average_missing"] for r in runs]]
        cells = ["—" if None in figures else " / ".join(_cell([f[k] for f in figures]) for k in ("mAP", "Rank-1"))
                 for figures in swept]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduce(args: argparse.Namespace) -> dict[str, dict]:
    """Evaluate every present benchmark; ``{name: record or {"status": reason}}`` in the paper's order."""
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    records: dict[str, dict] = {}
    for name in BENCHMARKS:
        found = locate(name, getattr(args, name), args.runs, args.seeds)
        if isinstance(found, str):
            if name != "Synthetic":
                records[name] = {"status": found}
            continue
        if not dataset_present(name, args.root, bool(getattr(args, name))):
            tried = " or ".join(os.path.join(args.root, d) for d in DATASETS[name].dirnames)
            records[name] = {"status": f"dataset not found ({tried})", "checkpoint": found[0][0]}
            continue
        runs = []
        for checkpoint, config_file, folder in found:
            record = evaluate_benchmark(name, checkpoint, config_file, args.root, args.out, args.opts,
                                        not args.no_sweep)
            record[BEST_ON_TEST] = best_on_test(folder)
            runs.append(record)
        records[name] = runs[0] if len(runs) == 1 else combine_runs(name, os.path.dirname(found[0][2]), runs)
    return records


def run(args: argparse.Namespace) -> dict[str, dict]:
    records = reproduce(args)
    modalities = next((r["modalities"] for r in records.values() if "modalities" in r),
                      list(load_config().MODEL.MODALITIES))
    spread = f"; mean ± sample standard deviation of {args.seeds} runs" if args.seeds > 1 else ""
    text = ("## All modalities (percent; final = the last epoch, what this repository reports; best-on-test = "
            "the evaluated epoch of highest mAP, chosen on the test set: the authors' protocol and the paper's "
            f"figures{spread})\n\n" + format_main_table(records))
    if not args.no_sweep:
        text += ("\n\n## Missing modalities (final epoch; mAP / Rank-1, percent; missing in query and gallery)\n\n"
                 + format_sweep_table(records, modalities))
    write_report(args.out, "tables", records, text)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
