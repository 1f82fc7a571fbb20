"""Results records: the ``test_results.json`` record of an evaluation, where it is written, its Markdown tables."""

import json
import os
import re
from collections.abc import Mapping, Sequence

from utils.files import atomic_write_text
from utils.metrics import RankResult
from utils.modalities import DROP, NONE, ZERO, kept_modalities, missing_modalities

from .evaluation import View

__all__ = ["BEST_ON_TEST", "METRICS", "RESULTS", "any_to_any_record", "format_any_to_any", "format_results",
           "results_path", "results_record", "write_results"]

#: The record of a run's evaluation, in its OUTPUT_DIR.
RESULTS = "test_results.json"
#: The figures of a record, in table order (percent).
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
#: Field of a training run's record with SOLVER.EVAL_PERIOD: the evaluated epoch of highest mAP (the final
#: one included), ``{"epoch", figures}``, chosen on the test set -- the authors' protocol, not the result
#: this repository reports (the record's top-level figures, the final epoch).
BEST_ON_TEST = "best_epoch_chosen_on_test_set"

#: One line per missing-modality protocol, heading its table.
PROTOCOL_TITLES = {ZERO: "protocol zero: a missing modality's image is zeros, the model runs as usual "
                         "(as DeMo, TOP-ReID and IDEA evaluate)",
                   DROP: "protocol drop: a missing modality is left out of the model's computation"}


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def _sweep(results: Mapping[str, RankResult]) -> dict:
    """Every setting (percent), the mean over the missing-modality settings and, with "none" among them, the
    average retention: the missing settings' mean mAP as a percentage of the full-modality mAP."""
    record = {"settings": {s: r.as_percent() for s, r in results.items()}}
    missing = [r.as_percent() for s, r in results.items() if s != NONE]
    if missing:
        record["average_missing"] = _average(missing)
        if NONE in results and results[NONE].mAP > 0:
            record["retention"] = 100 * record["average_missing"]["mAP"] / results[NONE].as_percent()["mAP"]
    return record


def results_record(sweeps: Mapping[str, Mapping[str, RankResult]], setting: str, protocol: str = ZERO,
                   extra: dict | None = None) -> dict:
    """The ``test_results.json`` record of ``sweeps`` (protocol -> TEST.MISS setting -> result): the figures
    of ``setting`` under ``protocol`` at top level (percent); with several settings, each protocol's under
    ``"protocols"``: every setting, their mean over the missing settings ("average_missing") and the
    average retention in percent of the full-modality mAP ("retention")."""
    top = sweeps[protocol][setting]
    record = {**(extra or {}), "miss": setting, **({"protocol": protocol} if setting != NONE else {}),
              **top.as_percent(), "num_valid_queries": top.num_valid}
    if any(len(results) > 1 for results in sweeps.values()):
        record["protocols"] = {p: _sweep(results) for p, results in sweeps.items()}
    return record


def format_results(results: Mapping[str, RankResult], protocol: str | None = None) -> str:
    """A Markdown table of the settings of one protocol (headed by its title when given), with each missing
    setting's mAP retention (percent of the full-modality mAP) and their average."""
    rows = {s: r.as_percent() for s, r in results.items()}
    missing = [v for s, v in rows.items() if s != NONE]
    if len(missing) > 1:
        rows["average (missing)"] = _average(missing)
    full = rows.get(NONE, {}).get("mAP")
    retention = missing and full
    lines = [PROTOCOL_TITLES[protocol]] if protocol is not None and missing else []
    lines += ["| missing | " + " | ".join(METRICS) + (" | retention |" if retention else " |"),
              "|---" * (len(METRICS) + 1 + bool(retention)) + "|"]
    for s, v in rows.items():
        kept = f" | {100 * v['mAP'] / full:.0f}%" if retention and s != NONE else (" | " if retention else "")
        lines.append(f"| {s} | " + " | ".join(f"{v[k]:.1f}" for k in METRICS) + kept + " |")
    return "\n".join(lines)


def _names(settings: Sequence[str], modalities: Sequence[str]) -> list[str]:
    return [kept_modalities(missing_modalities(s, modalities), modalities) for s in settings]


def _grid(results: Mapping[tuple[View, View], RankResult]) -> tuple[list[str], list[str], str]:
    """The query settings, the gallery settings (first-seen order) and the protocol of an any-to-any sweep."""
    queries = list(dict.fromkeys(q.setting for q, _ in results))
    galleries = list(dict.fromkeys(g.setting for _, g in results))
    return queries, galleries, next(iter(results))[0].protocol


def any_to_any_record(results: Mapping[tuple[View, View], RankResult], modalities: Sequence[str]) -> dict:
    """The any-to-any part of a record: the protocol, the query and gallery modality subsets (the modalities
    they keep) and, per metric, the query x gallery matrix (percent)."""
    queries, galleries, protocol = _grid(results)
    figures = {(q.setting, g.setting): r.as_percent() for (q, g), r in results.items()}
    return {"protocol": protocol, "query": _names(queries, modalities), "gallery": _names(galleries, modalities),
            **{k: [[figures[(q, g)][k] for g in galleries] for q in queries] for k in METRICS}}


def format_any_to_any(results: Mapping[tuple[View, View], RankResult], modalities: Sequence[str]) -> str:
    """A Markdown table: one row per query modality subset, one column per gallery subset, cells mAP / Rank-1."""
    queries, galleries, protocol = _grid(results)
    figures = {(q.setting, g.setting): r.as_percent() for (q, g), r in results.items()}
    lines = [f"any-to-any retrieval, {PROTOCOL_TITLES[protocol]}; rows: the query's modalities, columns: the "
             f"gallery's; mAP / Rank-1",
             "| query \\ gallery | " + " | ".join(_names(galleries, modalities)) + " |",
             "|---" * (len(galleries) + 1) + "|"]
    for q, name in zip(queries, _names(queries, modalities)):
        cells = [f"{figures[(q, g)]['mAP']:.1f} / {figures[(q, g)]['Rank-1']:.1f}" for g in galleries]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    miss = "all" if "settings" in record or "protocols" in record else record.get("miss")
    if "any_to_any" in record:  # TEST.QUERY_MISS / TEST.GALLERY_MISS: the grid's first cell and its size
        grid = record["any_to_any"]
        miss = (f"{record.get('query_miss')}-to-{record.get('gallery_miss')}"
                f"-{len(grid.get('query', []))}x{len(grid.get('gallery', []))}")
    return command, record.get("weight"), record.get("epoch"), miss, record.get("protocol"), record.get("re_ranking")


def _evaluation_name(record: dict) -> str:
    command, weight, epoch, miss, protocol, re_ranking = _evaluation(record)
    if command == "train.py":
        name = f"train_epoch{epoch}"
    else:
        stem = os.path.splitext(os.path.basename(str(weight)))[0]
        name = f"test_{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)}_miss-{miss}" + (f"_{protocol}" if protocol else "")
    return name + ("_rerank" if re_ranking else "")
