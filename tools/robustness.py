"""Missing and mismatched modalities: a model trained for missing modalities against the standard one and
against models trained on one modality subset each, under both missing-modality protocols, and any-to-any
retrieval.

    python -m tools.robustness --config_file configs/Synthetic/MHCF_robust.yml

The config must train with INPUT.MODALITY_DROPOUT. The tool trains what it needs into ``--runs`` (default
``output/robustness``), one folder per model:

- ``robust/``: the config as given;
- ``standard/``: the same without INPUT.MODALITY_DROPOUT;
- ``only_<modalities>/`` (``only_NI+TI``, ..., ``only_RGB``): the standard config with MODEL.MODALITIES
  (and MODEL.HEAT.ORDER) cut to one proper subset: a *dedicated* model, trained from scratch on that subset
  alone with the same recipe and epochs.

A folder that holds a finished run of that config is reused, an interrupted one is resumed: the settings
that decide the trained model (the keys of role model, training and length in config/validate.py) must be
equal, a key the run's ``config.yaml`` lacks (added since) counting as its default. A folder holding anything
else stops the tool before any training (it never overwrites a run). Trailing
``KEY VALUE`` pairs override every run's config (they are part of the config a run is recognised by).

Then it evaluates, on the test set, with the dataset's own protocol:

1. every missing-modality setting under ``drop`` for the robust, the standard and the dedicated models,
   and the ratio robust / dedicated (target: at least 90% in every setting);
2. both protocols (``zero``, ``drop``) with the average retention (missing-setting mAP / full mAP) of the
   robust and the standard model, and their full-modality figures (target: the robust model at most 1 mAP
   point below the standard one);
3. any-to-any retrieval under ``drop``: every query modality subset against every gallery subset (7 x 7 for
   three modalities, mAP / Rank-1) for the robust and the standard model, against a random-feature
   baseline (features drawn independently per sample, mean and spread over 20 draws). Target: every
   single-modality -> single-modality cell of the robust model at least MARGIN (3) mAP points above the
   baseline; the same cells again with each side centred on its modality's training mean
   (TEST.CENTRE_VIEWS). On the Synthetic set the only identity cue two modalities share is the build (4
   values), so the table also gives the ceiling of such a cell: features that know the build exactly and
   nothing else, and a probe of the single-modality features: how well each tells the build apart, and
   whether another modality's features express it alike (nearest build centre, two folds of the test
   identities).

Prints the tables and writes ``robustness.json`` and ``robustness.md`` into ``--runs``. Every figure is
the final epoch of a run with a recipe fixed before it was evaluated; nothing is selected on the test set by
the tool (the README says which choices of the recipe and of the evaluation were made on it).
"""

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from config import load_config, saved_values
from config.validate import LENGTH, MODEL, RULES, TRAINING, flat_items
from datasets import MultiModalDataset, Sample, make_dataset
from processor.device import resolve_device
from processor.evaluation import View, evaluation_samples, pair_views, score_pairs, view_features
from processor.results import any_to_any_record, format_any_to_any, format_results
from processor.trainer import train
from processor.view_centres import score_centred, training_centres
from utils.errors import UserError
from utils.logger import setup_logging
from utils.metrics import evaluate_features
from utils.modalities import DROP, NONE, PROTOCOLS, kept_modalities, miss_settings, missing_modalities

from .common import add_config_arguments, load_trained_model, run_tool, tool_parser, write_report

logger = logging.getLogger(__name__)

#: Targets of the tool's report.
RATIO_TARGET = 90.0     # robust / dedicated mAP under drop, percent, in every missing setting
FULL_TOLERANCE = 1.0    # robust full-modality mAP at most this far below the standard model's (points)
MARGIN = 3.0            # single -> single any-to-any cells above the random-feature baseline (mAP points)
RANDOM_DRAWS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("robustness", __doc__)
    parser.add_argument("--runs", default=os.path.join("output", "robustness"),
                        help="folder of the runs and of the report (default output/robustness)")
    add_config_arguments(parser)
    return parser


# --- the runs -------------------------------------------------------------------------------------------
def run_configs(config_file: str, opts: Sequence[str], runs: str) -> dict[str, CfgNode]:
    """name -> config of every run: ``robust``, ``standard`` and ``only_<modalities>`` per proper subset."""
    robust = load_config(config_file or None, [*opts, "OUTPUT_DIR", os.path.join(runs, "robust")])
    if robust.INPUT.MODALITY_DROPOUT == 0:
        raise UserError(f"{config_file or 'the default config'}: INPUT.MODALITY_DROPOUT is 0, nothing trains for "
                        f"missing modalities; give a config that does, e.g. configs/Synthetic/MHCF_robust.yml")
    plain = [*opts, "INPUT.MODALITY_DROPOUT", "0.0", "INPUT.MODALITY_DROPOUT_RAMP", "0"]
    configs = {"robust": robust,
               "standard": load_config(config_file or None, [*plain, "OUTPUT_DIR", os.path.join(runs, "standard")])}
    modalities, order = list(robust.MODEL.MODALITIES), list(robust.MODEL.HEAT.ORDER)
    for setting in miss_settings(modalities)[1:]:
        missing = missing_modalities(setting, modalities)
        name = "only_" + kept_modalities(missing, modalities)
        configs[name] = load_config(config_file or None, [
            *plain, "MODEL.MODALITIES", str([m for m in modalities if m not in missing]),
            "MODEL.HEAT.ORDER", str([m for m in order if m not in missing]), "OUTPUT_DIR", os.path.join(runs, name)])
    return configs


def _differences(cfg: CfgNode, saved: dict[str, object]) -> list[str]:
    """The keys that decide a trained model (role model, training or length in config/validate.py) whose
    value in ``cfg`` differs from ``saved`` (:func:`config.saved_values`: a key added since has its default)."""
    return [key for key, value in flat_items(cfg)
            if RULES[key].role in (MODEL, TRAINING, LENGTH) and saved.get(key, value) != value]


def run_state(cfg: CfgNode) -> str:
    """``"done"`` (a finished run of this config), ``"resume"`` (an interrupted one), ``"train"`` (no run
    yet); a UserError when the folder holds something else."""
    folder = cfg.OUTPUT_DIR
    if not os.path.isdir(folder) or not os.listdir(folder):
        return "train"
    config = os.path.join(folder, "config.yaml")
    if not os.path.isfile(config):
        raise UserError(f"{folder} is not empty and holds no training run (no config.yaml); remove it or choose "
                        f"another --runs folder")
    with open(config) as f:
        differences = _differences(cfg, saved_values(f.read()))
    if differences:
        raise UserError(f"{folder} holds a run of another config (it differs in {', '.join(differences[:5])}); "
                        f"remove it or choose another --runs folder")
    if os.path.isfile(os.path.join(folder, "model_final.pth")):
        return "done"
    return "resume" if os.path.isfile(os.path.join(folder, "last.pth")) else "train"


def ensure_trained(configs: dict[str, CfgNode]) -> dict[str, str]:
    """Train (or resume) every run that is not finished; name -> what was done."""
    states = {name: run_state(cfg) for name, cfg in configs.items()}  # every folder checked before training
    for name, cfg in configs.items():
        if states[name] == "done":
            logger.info("%s: reusing the finished run in %s", name, cfg.OUTPUT_DIR)
            continue
        logger.info("%s: %s in %s", name, "resuming" if states[name] == "resume" else "training", cfg.OUTPUT_DIR)
        if states[name] == "resume":
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.RESUME = True
            cfg.freeze()
        train(cfg)
        setup_logging()  # back to the console only: the run's train.log is complete
    return states


# --- the evaluation -------------------------------------------------------------------------------------
def random_baseline(cfg: CfgNode, dataset: MultiModalDataset, dim: int, draws: int = RANDOM_DRAWS,
                    labels: dict[int, int] | None = None) -> dict[str, float]:
    """mAP and Rank-1 (percent; mean and standard deviation over ``draws``) of features drawn independently
    per sample (standard normal, ``dim``-d) under the dataset's protocol. With ``labels`` (raw identity ->
    attribute), features that know the attribute exactly and nothing else (ties broken at random)."""
    gen = torch.Generator().manual_seed(0)
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    figures = []
    for _ in range(draws):
        def features(samples):
            noise = torch.randn(len(samples), dim, generator=gen)
            if labels is None:
                return F.normalize(noise, dim=1)
            known = F.one_hot(torch.tensor([labels[s.pid] for s in samples]), max(labels.values()) + 1).float()
            return F.normalize(known + 1e-3 * noise[:, :known.shape[1]], dim=1)
        result = evaluate_features(features(dataset.query), features(dataset.gallery), **meta,
                                   chunk_size=cfg.TEST.EVAL_CHUNK)
        figures.append(torch.tensor([100 * result.mAP, 100 * float(result.cmc[0])], dtype=torch.float64))
    stacked = torch.stack(figures)
    mean, std = stacked.mean(0).tolist(), stacked.std(0).tolist()
    return {"mAP": mean[0], "mAP_std": std[0], "Rank-1": mean[1], "Rank-1_std": std[1], "draws": draws}


def single_settings(modalities: Sequence[str]) -> dict[str, str]:
    """Modality -> the missing-modality setting that keeps it alone (``{"RGB": "nt", ...}``)."""
    out = {}
    for setting in miss_settings(modalities)[1:]:
        missing = missing_modalities(setting, modalities)
        if len(missing) == len(modalities) - 1:
            out[kept_modalities(missing, modalities)] = setting
    return out


def nearest_centre_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                            test_labels: torch.Tensor) -> float:
    """Percent of the ``test`` rows whose nearest class centre (Euclidean; a centre: the mean of ``train``'s rows
    of one class) is that of their own class."""
    classes = train_labels.unique()
    centres = torch.stack([train[train_labels == c].mean(0) for c in classes])
    predicted = classes[torch.cdist(test, centres).argmin(1)]
    return 100 * (predicted == test_labels).double().mean().item()


def shared_cue_probe(features: Mapping[str, torch.Tensor], samples: Sequence[Sample], labels: Mapping[int, int],
                     normalise: bool) -> dict:
    """How much of a shared attribute (``labels``: raw identity -> value) single-modality features carry, and
    whether in the same directions. ``features``: modality -> (N, D) features of ``samples`` seen in that
    modality alone (normalised first with ``normalise``, as retrieval compares them: TEST.FEAT_NORM). For every
    modality A (centres) and B (classified): the nearest-centre accuracy of the attribute from B's features
    with centres from A's, over two folds of the identities (alternate identities in sorted order; the centres
    come from one fold, the other is classified, and the other way round). The diagonal (A = B) is what one
    modality's features know of the attribute; off it, whether another modality's features express it alike,
    as single -> other single retrieval needs. Returns ``{"accuracy": {A: {B: percent}}, "chance": percent}``."""
    feats = {m: F.normalize(f, dim=1) if normalise else f for m, f in features.items()}
    value = torch.tensor([labels[s.pid] for s in samples])
    order = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    fold = torch.tensor([order[s.pid] % 2 for s in samples], dtype=torch.bool)
    accuracy = {a: {b: two_fold_accuracy(feats[a], feats[b], value, fold) for b in feats} for a in feats}
    return {"accuracy": accuracy, "chance": 100 / len(set(labels.values()))}


def two_fold_accuracy(centres_from: torch.Tensor, classified: torch.Tensor, labels: torch.Tensor,
                      fold: torch.Tensor) -> float:
    """:func:`nearest_centre_accuracy` of ``classified``'s rows of one fold (``fold`` (N,) bool) with centres
    from ``centres_from``'s rows of the other fold, both ways, over all N rows (percent)."""
    right = sum(nearest_centre_accuracy(centres_from[fold == f], labels[fold == f], classified[fold != f],
                                        labels[fold != f]) * int((fold != f).sum()) for f in (True, False))
    return right / len(labels)


def evaluate_model(cfg: CfgNode, dataset: MultiModalDataset, device: torch.device, any_to_any: bool,
                   shared: Mapping[int, int] | None = None) -> dict:
    """The model of ``cfg.OUTPUT_DIR``: both protocols' sweeps and, with ``any_to_any``, the drop table, its
    single -> other single cells with centred views (TEST.CENTRE_VIEWS) and, given the shared attribute,
    :func:`shared_cue_probe` (on the features of the table's single modalities)."""
    model = load_trained_model(cfg, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), device)
    settings = miss_settings(model.modalities)
    pairs = [(View(p, s), View(p, s)) for p in PROTOCOLS for s in settings]
    cross = [(View(DROP, q), View(DROP, g)) for q in settings for g in settings] if any_to_any else []
    compared = list(dict.fromkeys(pairs + cross))
    feats = view_features(cfg, model, dataset, device, pair_views(compared), progress=False)
    results = score_pairs(cfg, dataset, feats, compared, device)
    out = {"sweeps": {p: {s: results[(View(p, s), View(p, s))] for s in settings} for p in PROTOCOLS},
           "feature_dim": model.feature_dim}
    if any_to_any:
        out["any_to_any"] = {pair: results[pair] for pair in cross}
        setting = single_settings(model.modalities)
        singles = [View(DROP, setting[m]) for m in model.modalities]
        centres = training_centres(cfg, model, dataset, device, singles, progress=False)
        out["centred"] = score_centred(cfg, dataset, feats, [(q, g) for q in singles for g in singles if q != g],
                                       device, centres)
        if shared is not None:
            alone = {m: feats[view] for m, view in zip(model.modalities, singles)}
            out["probe"] = shared_cue_probe(alone, evaluation_samples(dataset), shared, cfg.TEST.FEAT_NORM)
    return out


def _check(passed: bool) -> str:
    return "yes" if passed else "**no**"


def report(configs: dict[str, CfgNode], states: dict[str, str], device: torch.device) -> tuple[dict, str]:
    """Evaluate every run; the JSON record and the Markdown text of the tables."""
    robust_cfg = configs["robust"]
    dataset = make_dataset(robust_cfg.DATASETS.NAMES, robust_cfg.DATASETS.ROOT_DIR)
    modalities = list(robust_cfg.MODEL.MODALITIES)
    settings = miss_settings(modalities)
    builds = getattr(dataset, "builds", None)
    shared = builds() if builds is not None else None
    evaluated = {name: evaluate_model(cfg, dataset, device, any_to_any=name in ("robust", "standard"), shared=shared)
                 for name, cfg in configs.items()}
    mAP = {name: {p: {s: r.as_percent()["mAP"] for s, r in sweep.items()} for p, sweep in e["sweeps"].items()}
           for name, e in evaluated.items()}
    names = {s: kept_modalities(missing_modalities(s, modalities), modalities) for s in settings}
    sections, record = [], {"runs": {name: {"folder": cfg.OUTPUT_DIR, "state": states[name]}
                                     for name, cfg in configs.items()}}

    # 1. robust vs dedicated under drop
    rows, ratios = [], {}
    lines = ["| kept modalities | dedicated | robust (drop) | robust / dedicated | target >= 90% | standard (drop) "
             "| robust (zero) | standard (zero) |", "|---" * 8 + "|"]
    for s in settings[1:]:
        dedicated = mAP["only_" + names[s]][DROP][NONE]
        ratios[s] = 100 * mAP["robust"][DROP][s] / dedicated if dedicated > 0 else float("nan")
        rows.append({"setting": s, "kept": names[s], "dedicated": dedicated, "robust_drop": mAP["robust"][DROP][s],
                     "ratio": ratios[s], "standard_drop": mAP["standard"][DROP][s],
                     "robust_zero": mAP["robust"]["zero"][s], "standard_zero": mAP["standard"]["zero"][s]})
        lines.append(f"| {names[s]} | {dedicated:.1f} | {mAP['robust'][DROP][s]:.1f} | {ratios[s]:.0f}% | "
                     f"{_check(ratios[s] >= RATIO_TARGET)} | {mAP['standard'][DROP][s]:.1f} | "
                     f"{mAP['robust']['zero'][s]:.1f} | {mAP['standard']['zero'][s]:.1f} |")
    record["dedicated"] = rows
    sections.append("## Missing modalities: one robust model against dedicated models (mAP, percent)\n\n"
                    "Dedicated: trained from scratch on the kept modalities alone, same recipe and epochs.\n\n"
                    + "\n".join(lines))

    # 2. both protocols, retention, full modalities
    full = {name: evaluated[name]["sweeps"][DROP][NONE].as_percent() for name in ("robust", "standard")}
    gap = full["standard"]["mAP"] - full["robust"]["mAP"]
    tables = [f"### {name}\n\n" + "\n\n".join(format_results(evaluated[name]["sweeps"][p], p) for p in PROTOCOLS)
              for name in ("robust", "standard")]
    record["protocols"] = {name: {p: {s: r.as_percent() for s, r in evaluated[name]["sweeps"][p].items()}
                                  for p in PROTOCOLS} for name in ("robust", "standard")}
    record["full"] = {**full, "gap": gap, "target_met": gap <= FULL_TOLERANCE}
    sections.append("## Both missing-modality protocols (missing in query and gallery)\n\n"
                    f"Full modalities: robust {full['robust']['mAP']:.1f} mAP / {full['robust']['Rank-1']:.1f} "
                    f"Rank-1, standard {full['standard']['mAP']:.1f} / {full['standard']['Rank-1']:.1f}: "
                    f"{abs(gap):.1f} points {'below' if gap > 0 else 'above'} the standard model (target: at most "
                    f"{FULL_TOLERANCE:.0f} below: "
                    f"{_check(gap <= FULL_TOLERANCE)}).\n\n" + "\n\n".join(tables))

    # 3. any-to-any
    dim = evaluated["robust"]["feature_dim"]
    baseline = random_baseline(robust_cfg, dataset, dim)
    ceiling = None
    if shared is not None:
        ceiling = random_baseline(robust_cfg, dataset, dim, labels=shared)
    singles = list(single_settings(modalities).values())
    cross = [(View(DROP, q), View(DROP, g)) for q in singles for g in singles if q != g]

    def cell_mAP(table) -> dict[str, float]:  # "RGB->NI" -> mAP of the single -> other single cells
        return {f"{names[q.setting]}->{names[g.setting]}": table[(q, g)].as_percent()["mAP"] for q, g in cross}

    models = ("robust", "standard")
    cells = {name: cell_mAP(evaluated[name]["any_to_any"]) for name in models}
    centred = {name: cell_mAP(evaluated[name]["centred"]) for name in models}
    record["any_to_any"] = {name: any_to_any_record(evaluated[name]["any_to_any"], modalities) for name in models}
    worst = min(cells["robust"], key=cells["robust"].get)
    worst_centred = min(centred["robust"], key=centred["robust"].get)
    threshold = baseline["mAP"] + MARGIN
    met, met_centred = cells["robust"][worst] >= threshold, centred["robust"][worst_centred] >= threshold
    record["any_to_any"]["random_baseline"] = baseline
    record["any_to_any"]["shared_cue_ceiling"] = ceiling
    record["any_to_any"]["cross_modal_cells"] = cells
    record["any_to_any"]["cross_modal_cells_centred"] = centred
    record["any_to_any"]["target"] = {"margin": MARGIN, "threshold": threshold, "worst_cell": worst,
                                      "met": met, "worst_cell_centred": worst_centred, "met_centred": met_centred}
    text = ["## Any-to-any retrieval (protocol drop)",
            f"Random features: {baseline['mAP']:.2f} ± {baseline['mAP_std']:.2f} mAP, {baseline['Rank-1']:.2f} "
            f"± {baseline['Rank-1_std']:.2f} Rank-1 (mean ± standard deviation over {baseline['draws']} draws)."]
    if ceiling is not None:
        text.append(f"Features that know the shared build exactly and nothing else (the best a single -> other "
                    f"single cell can do on this set): {ceiling['mAP']:.1f} mAP, {ceiling['Rank-1']:.1f} Rank-1.")
    text.append(f"Single -> other single modality, robust model: worst cell {worst} {cells['robust'][worst]:.1f} "
                f"mAP; target: every such cell >= {threshold:.1f} (baseline + {MARGIN:.0f}): "
                f"{_check(met)}. Standard model: "
                + ", ".join(f"{k} {v:.1f}" for k, v in cells["standard"].items()) + ".")
    text.append("The same cells with each side centred on its modality's mean over the training set "
                "(`TEST.CENTRE_VIEWS`): robust " + ", ".join(f"{k} {v:.1f}" for k, v in centred["robust"].items())
                + f" (worst {worst_centred}: {_check(met_centred)}); standard "
                + ", ".join(f"{k} {v:.1f}" for k, v in centred["standard"].items()) + ".")
    for name in ("robust", "standard"):
        text.append(f"### {name}\n\n" + format_any_to_any(evaluated[name]["any_to_any"], modalities))
    if shared is not None:
        probes = {name: evaluated[name]["probe"] for name in ("robust", "standard")}
        record["any_to_any"]["build_probe"] = probes
        text.append(_format_probe(probes, modalities))
    sections.append("\n\n".join(text))
    record["targets"] = {"drop_ratio": {names[s]: ratios[s] >= RATIO_TARGET for s in ratios},
                         "full_gap": gap <= FULL_TOLERANCE, "any_to_any": met, "any_to_any_centred": met_centred}
    return record, "\n\n".join(sections)


def _format_probe(probes: dict[str, dict], modalities: Sequence[str]) -> str:
    """The build probe of the robust and the standard model as one Markdown table."""
    lines = [f"Build probe (`shared_cue_probe` in tools/robustness.py): nearest-build-centre accuracy, percent, chance "
             f"{probes['robust']['chance']:.0f}; rows: the modality whose features give the centres, columns: the "
             f"modality classified; robust / standard model.",
             "| centres \\ classified | " + " | ".join(modalities) + " |", "|---" * (len(modalities) + 1) + "|"]
    for a in modalities:
        lines.append(f"| {a} | " + " | ".join(f"{probes['robust']['accuracy'][a][b]:.0f} / "
                                              f"{probes['standard']['accuracy'][a][b]:.0f}" for b in modalities) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    configs = run_configs(args.config_file, args.opts, args.runs)
    states = ensure_trained(configs)
    device = resolve_device(configs["robust"].MODEL.DEVICE)
    record, text = report(configs, states, device)
    write_report(args.runs, "robustness", record, text)
    return record


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
