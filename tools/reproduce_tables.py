"""Reproduce the paper's tables: evaluate one checkpoint per benchmark and compare with the paper.

    python -m tools.reproduce_tables --root /data/reid --runs output
    python -m tools.reproduce_tables --root /data/reid --rgbnt201 output/RGBNT201 --msvr310 msvr.pth

Each checkpoint is a file (evaluated with ``configs/<DATASET>/MHCF.yml``) or a training output folder
(its ``model_final.pth`` with its own ``config.yaml``). ``--runs DIR`` takes ``DIR/<DATASET>/`` or
``DIR/<DATASET>.pth`` for every benchmark not given explicitly. Trailing ``KEY VALUE`` pairs override
every benchmark's config. Prints two Markdown tables -- all modalities vs the paper, and the
missing-modality sweep -- and writes ``tables.md`` and ``tables.json`` into ``--out``. Benchmarks without
a checkpoint or without their dataset folder are listed as not present.
"""

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

from config import load_config
from datasets import DATASETS, make_dataset
from processor.device import resolve_device
from processor.evaluation import evaluate
from processor.results import METRICS, results_record
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
    parser.add_argument("--no-sweep", action="store_true", help="skip the missing-modality sweep")
    parser.add_argument("--out", default="./output/tables", help="folder for tables.md and tables.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every benchmark")
    return parser


def locate(name: str, explicit: str, runs: str) -> tuple[str, str] | str:
    """``(checkpoint, config file)`` of a benchmark, or the reason it is not present."""
    default_config = os.path.join(REPO, "configs", name, "MHCF.yml")
    path = explicit
    if not path:
        if not runs:
            return f"no checkpoint (give {option(name)} or --runs)"
        folder, file = os.path.join(runs, name), os.path.join(runs, f"{name}.pth")
        if os.path.isdir(folder):
            if not os.path.isfile(os.path.join(folder, "model_final.pth")):
                return f"no model_final.pth in {folder}"
            path = folder
        elif os.path.isfile(file):
            path = file
        else:
            return f"no checkpoint (give {option(name)}, {folder}/ or {file})"
    if os.path.isdir(path):
        checkpoint = os.path.join(path, "model_final.pth")
        if not os.path.isfile(checkpoint):
            raise UserError(f"{option(name)} {path}: a folder without model_final.pth")
        run_config = os.path.join(path, "config.yaml")
        return checkpoint, run_config if os.path.isfile(run_config) else default_config
    if not os.path.isfile(path):
        raise UserError(f"{option(name)}: checkpoint not found: {path}")
    return path, default_config


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


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def format_main_table(records: Mapping[str, dict]) -> str:
    """Ours vs the paper with all modalities; not-present benchmarks keep their row."""
    lines = ["| benchmark | " + " | ".join(METRICS) + " | paper mAP | paper Rank-1 | Δ mAP | Δ Rank-1 | checkpoint |",
             "|---" * (len(METRICS) + 6) + "|"]
    for name, rec in records.items():
        paper = PAPER.get(name, (None, None))
        ours = [rec.get(k) for k in METRICS]
        delta = ["—" if p is None or o is None else f"{o - p:+.1f}" for o, p in zip(ours[:2], paper)]
        source = rec.get("weight") or f"not present: {rec['status']}"
        lines.append(f"| {name} | " + " | ".join(_cell(v) for v in [*ours, *paper]) + " | " + " | ".join(delta)
                     + f" | {source} |")
    return "\n".join(lines)


def format_sweep_table(records: Mapping[str, dict], modalities: Sequence[str]) -> str:
    """mAP / Rank-1 with missing modalities (the six settings and their average) per benchmark."""
    settings = miss_settings(modalities)[1:]
    names = ["w/o " + "+".join(missing_modalities(s, modalities)) for s in settings]
    lines = ["| benchmark | " + " | ".join(names) + " | average |", "|---" * (len(names) + 2) + "|"]
    for name, rec in records.items():
        swept = rec.get("settings")
        if swept is None:
            lines.append(f"| {name} | " + " | ".join("—" for _ in names) + " | not present |")
            continue
        cells = [f"{swept[s]['mAP']:.1f} / {swept[s]['Rank-1']:.1f}" if s in swept else "—" for s in settings]
        avg = rec["average_missing"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg['mAP']:.1f} / {avg['Rank-1']:.1f} |")
    return "\n".join(lines)


def reproduce(args: argparse.Namespace) -> dict[str, dict]:
    """Evaluate every present benchmark; ``{name: record or {"status": reason}}`` in the paper's order."""
    records: dict[str, dict] = {}
    for name in BENCHMARKS:
        found = locate(name, getattr(args, name), args.runs)
        if isinstance(found, str):
            if name != "Synthetic":
                records[name] = {"status": found}
            continue
        if not dataset_present(name, args.root, bool(getattr(args, name))):
            tried = " or ".join(os.path.join(args.root, d) for d in DATASETS[name].dirnames)
            records[name] = {"status": f"dataset not found ({tried})", "checkpoint": found[0]}
            continue
        records[name] = evaluate_benchmark(name, *found, args.root, args.out, args.opts, not args.no_sweep)
    return records


def run(args: argparse.Namespace) -> dict[str, dict]:
    records = reproduce(args)
    modalities = next((r["modalities"] for r in records.values() if "modalities" in r),
                      list(load_config().MODEL.MODALITIES))
    text = ("## All modalities (percent; paper = the figures published in the MHCF paper)\n\n"
            + format_main_table(records))
    if not args.no_sweep:
        text += ("\n\n## Missing modalities (mAP / Rank-1, percent; missing in query and gallery)\n\n"
                 + format_sweep_table(records, modalities))
    write_report(args.out, "tables", records, text)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
