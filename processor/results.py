"""Results records: the ``test_results.json`` record of an evaluation and its Markdown table."""

import json
import os

from utils.files import atomic_write_text
from utils.metrics import RankResult
from utils.modalities import NONE

__all__ = ["METRICS", "format_results", "results_record", "write_results"]

#: The figures of a record, in table order (percent).
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


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


def write_results(output_dir: str, record: dict, filename: str = "test_results.json") -> str:
    """Write ``record`` as JSON to ``output_dir/filename`` (atomically); returns the path."""
    path = os.path.join(output_dir, filename)
    atomic_write_text(path, json.dumps(record, indent=2))
    return path
