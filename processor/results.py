"""Results records: the ``test_results.json`` record of an evaluation, where it is written, its Markdown table."""

import json
import os
import re

from utils.files import atomic_write_text
from utils.metrics import RankResult
from utils.modalities import NONE

__all__ = ["BEST_ON_TEST", "METRICS", "RESULTS", "format_results", "results_path", "results_record",
           "write_results"]

#: The record of a run's evaluation, in its OUTPUT_DIR.
RESULTS = "test_results.json"
#: The figures of a record, in table order (percent).
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
#: Field of a training run's record with SOLVER.EVAL_PERIOD: the evaluated epoch of highest mAP (the final
#: one included), ``{"epoch", figures}``, chosen on the test set -- the authors' protocol, not the result
#: this repository reports (the record's top-level figures, the final epoch).
BEST_ON_TEST = "best_epoch_chosen_on_test_set"


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def results_record(results: dict[str, RankResult], setting: str, extra: dict | None = None) -> dict:
    """The ``test_results.json`` record: the figures of ``setting`` at top level (percent); with several
    settings, every setting under "settings" and their mean over the missing-modality settings under
    "average_missing"."""
    record = {**(extra or {}), "miss": setting, **results[setting].as_percent(),
              "num_valid_queries": results[setting].num_valid}
    if len(results) > 1:
        record["settings"] = {s: r.as_percent() for s, r in results.items()}
        record["average_missing"] = _average([r.as_percent() for s, r in results.items() if s != NONE])
    return record


def format_results(results: dict[str, RankResult]) -> str:
    """A Markdown table of the settings (and their average when several are missing-modality ones)."""
    rows = {s: r.as_percent() for s, r in results.items()}
    missing = [v for s, v in rows.items() if s != NONE]
    if len(missing) > 1:
        rows["average (missing)"] = _average(missing)
    lines = ["| missing | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{v[k]:.1f}" for k in METRICS) + " |" for s, v in rows.items()]
    return "\n".join(lines)


def write_results(output_dir: str, record: dict, filename: str | None = None) -> str:
    """Write ``record`` as JSON (atomically) to ``output_dir/filename``, by default where
    :func:`results_path` puts it (never over another evaluation's record); returns the path."""
    path = os.path.join(output_dir, filename) if filename else results_path(output_dir, record)
    atomic_write_text(path, json.dumps(record, indent=2))
    return path


def results_path(output_dir: str, record: dict) -> str:
    """Where ``record`` is written: ``test_results.json``, unless that file holds the record of another
    evaluation (a training run's, or test.py's of another checkpoint, TEST.MISS or re-ranking setting). That
    file is kept, and the record goes beside it under a name that says what it is, e.g.
    ``test_results.test_model_final_miss-all.json`` or ``test_results.train_epoch40.json``."""
    path = os.path.join(output_dir, RESULTS)
    try:
        with open(path) as f:
            existing = json.load(f)
    except (OSError, ValueError):  # absent (or not a record: it was never complete)
        return path
    if isinstance(existing, dict) and _evaluation(existing) == _evaluation(record):
        return path  # the same evaluation again: its record is replaced
    return os.path.join(output_dir, f"test_results.{_evaluation_name(record)}.json")


def _evaluation(record: dict) -> tuple:
    """What identifies the evaluation a record holds: the command, checkpoint and settings. Records written
    before the "command" field existed come from train.py when they carry an epoch."""
    command = record.get("command") or ("train.py" if "epoch" in record else "test.py")
    miss = "all" if "settings" in record else record.get("miss")
    return command, record.get("weight"), record.get("epoch"), miss, record.get("re_ranking")


def _evaluation_name(record: dict) -> str:
    command, weight, epoch, miss, re_ranking = _evaluation(record)
    if command == "train.py":
        name = f"train_epoch{epoch}"
    else:
        stem = os.path.splitext(os.path.basename(str(weight)))[0]
        name = f"test_{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}_miss-{miss}"
    return name + ("_rerank" if re_ranking else "")
