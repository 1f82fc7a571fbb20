"""Modal-bias analysis of a model on a dataset's test samples (``tools/modal_bias.py``, TEST.MODAL_BIAS).

One pass over the test samples measures the modality gap of the class tokens after the backbone and
after each heat cycle (and of the patch means before and after the heat cycle), each modality's share
of the features' energy, and the heat operators' conductivities and gates per edge; the missing-modality
sweep of :func:`processor.inference.evaluate` gives retrieval with each single modality and each pair.
"""

import logging
from collections.abc import Mapping

import torch
from tqdm import tqdm
from yacs.config import CfgNode

from datasets import MultiModalDataset, make_test_loader
from model import MHCF
from model.mhcf import TEST_FEATURES
from utils.analysis import (
    ModalityGap,
    RunningMean,
    energy_shares,
    flatten_scalars,
    retrieval_by_modalities,
    retrieval_summary,
)
from utils.metrics import RankResult

from .inference import autocast_context, batch_to, evaluate, miss_settings, missing_modalities

logger = logging.getLogger(__name__)


def test_samples(dataset: MultiModalDataset) -> list:
    """Every test sample once: the query (when it is also the gallery) or query + gallery."""
    return list(dataset.query) if dataset.gallery is dataset.query else [*dataset.query, *dataset.gallery]


@torch.no_grad()
def feature_statistics(model: MHCF, loader, device: torch.device, amp: str = "off",
                       progress: bool = True) -> dict:
    """Modality gaps, energy shares and heat statistics of ``model`` over ``loader`` (all modalities)."""
    model.eval()
    modalities = model.modalities
    stages = ["backbone", *[f"cycle {c + 1}" for c in range(model.heat.num_cycles)]]
    cls_gaps = {stage: ModalityGap(modalities) for stage in stages}
    patch_gaps = {stage: ModalityGap(modalities) for stage in ("backbone", "heat")}
    energy, heat = RunningMean(), RunningMean()
    for batch in tqdm(loader, desc="modal bias", disable=not progress, leave=False):
        batch = batch_to(batch, modalities, device)
        with autocast_context(device, amp):
            tokens = model.encode(batch)
            features, out = model.fuse(tokens)
            test = model.test_feature(features)
        size = test.shape[0]
        cls_gaps["backbone"].update({m: t[:, 0] for m, t in tokens.items()})
        for stage, cls in zip(stages[1:], out.cls_trace):
            cls_gaps[stage].update(cls)
        patch_gaps["backbone"].update({m: t[:, 1:].mean(1) for m, t in tokens.items()})
        patch_gaps["heat"].update({m: p.mean(1) for m, p in out.patches.items()})
        named = {**{name: (features[name], 1) for name in TEST_FEATURES}, "test": (test, len(TEST_FEATURES))}
        for name, (feature, parts) in named.items():
            shares = energy_shares(feature, len(modalities), parts)                              # (B, M)
            energy.update({f"{name}/{m}": shares[:, i] for i, m in enumerate(modalities)}, size)
        for (cycle, src, tgt), stats in out.stats.items():
            for key, value in stats.items():  # kappa (B,), gate (B,), spatial_gate (B, N)
                per_sample = value.float().reshape(size, -1).mean(1)                             # (B,)
                heat.update({f"{src}->{tgt}/{key}": per_sample,
                             f"{src}->{tgt}/cycle {cycle + 1}/{key}": per_sample}, size)
    return {"gap": {"class token": {s: g.compute() for s, g in cls_gaps.items()},
                    "patch mean": {s: g.compute() for s, g in patch_gaps.items()}},
            "energy": _nest(energy.compute()),
            "heat": {"edges": _nest(heat.compute()), "parameters": model.heat.parameter_stats()}}


def _nest(flat: Mapping[str, float]) -> dict:
    """``{"a/b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def analyse_modal_bias(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, device: torch.device,
                       results: Mapping[str, RankResult] | None = None, progress: bool = True) -> dict:
    """The modal-bias report of ``model`` on ``dataset``'s test samples (a JSON-serialisable dict).

    ``results``: the missing-modality sweep when already computed (every setting of
    :func:`miss_settings`); otherwise it is run here.
    """
    modalities = list(model.modalities)
    settings = miss_settings(modalities)
    if results is None or set(results) != set(settings):
        results = evaluate(cfg, model, dataset, device, settings, progress=progress)
    missing = {s: missing_modalities(s, modalities) for s in settings}
    by_modalities = retrieval_by_modalities(results, missing, modalities)
    loader = make_test_loader(cfg, dataset, test_samples(dataset), pin_memory=device.type == "cuda")
    report = {"dataset": dataset.name, "modalities": modalities,
              "retrieval": by_modalities, "summary": retrieval_summary(by_modalities, modalities)}
    report.update(feature_statistics(model, loader, device, cfg.SOLVER.AMP, progress))
    return report


def modal_bias_scalars(report: Mapping) -> dict[str, float]:
    """The report's numbers as flat TensorBoard tags (``retrieval/RGB/mAP``, ``gap/class_token/...``)."""
    keep = ("retrieval", "summary", "gap", "energy", "heat")
    flat = flatten_scalars({k: report[k] for k in keep if k in report})
    return {tag.replace(" ", "_"): value for tag, value in flat.items()}


def log_modal_bias(writer, report: Mapping, step: int) -> None:
    """The report's scalars under ``bias/`` in a TensorBoard ``SummaryWriter``, and its tables in the log."""
    for tag, value in modal_bias_scalars(report).items():
        writer.add_scalar(f"bias/{tag}", value, step)
    logger.info("modal bias at epoch %d:\n%s", step, format_modal_bias(report))


def format_modal_bias(report: Mapping) -> str:
    """Readable Markdown tables of a report."""
    modalities = report["modalities"]
    lines = ["Retrieval with the modalities used (missing-modality sweep, percent):", "",
             "| modalities | mAP | Rank-1 | Rank-5 | Rank-10 | mINP |", "|---|---|---|---|---|---|"]
    for name, r in report["retrieval"].items():
        lines.append(f"| {name} | {r['mAP']:.1f} | {r['Rank-1']:.1f} | {r['Rank-5']:.1f} | {r['Rank-10']:.1f} "
                     f"| {r['mINP']:.1f} |")
    s = report["summary"]
    if "best_single" in s:
        lines += ["", f"fused mAP {s['fused']:.1f}; best single modality {s['best_single']} "
                      f"{s['single'][s['best_single']]:.1f}, worst {s['worst_single']} "
                      f"{s['single'][s['worst_single']]:.1f} (spread {s['single_spread']:.1f}); "
                      f"fusion gain over the best single {s['fusion_gain']:+.1f}"]
    if "drop_without" in s:
        lines.append("mAP lost without each modality: "
                     + ", ".join(f"{m} {v:.1f}" for m, v in s["drop_without"].items()))

    for kind, stages in report["gap"].items():
        pairs = [p for p in next(iter(stages.values()))["sample"] if p != "mean"]
        lines += ["", f"Modality gap of the {kind}s (cosine distance; sample = same sample's modalities, "
                      "centroid = modality centroids):", "",
                  "| stage | " + " | ".join(f"sample {p}" for p in pairs) + " | sample mean | "
                  + " | ".join(f"centroid {p}" for p in pairs) + " | centroid mean |",
                  "|---" * (2 * len(pairs) + 3) + "|"]
        for stage, gap in stages.items():
            cells = [gap["sample"][p] for p in [*pairs, "mean"]] + [gap["centroid"][p] for p in [*pairs, "mean"]]
            lines.append(f"| {stage} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")

    lines += ["", "Share of each modality in the features' energy (squared norm):", "",
              "| feature | " + " | ".join(modalities) + " |", "|---" * (len(modalities) + 1) + "|"]
    for name, shares in report["energy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{shares[m]:.3f}" for m in modalities) + " |")

    edges = report["heat"]["edges"]
    lines += ["", "Heat operators per edge (test-set means over samples and cycles):", "",
              "| edge | kappa | gate g | spatial gate G |", "|---|---|---|---|"]
    for edge, stats in edges.items():
        lines.append(f"| {edge} | {stats['kappa']:.4f} | {stats['gate']:.4f} | {stats['spatial_gate']:.4f} |")
    params = report["heat"]["parameters"]
    lines += ["", "Learned parameters: " + ", ".join(f"{k} {v:.4f}" for k, v in params.items())]
    return "\n".join(lines)
