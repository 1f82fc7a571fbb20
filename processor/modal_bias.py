"""Modal-bias analysis of a model on a dataset's test samples (``tools/modal_bias.py``, TEST.MODAL_BIAS).

One pass over the test samples measures the modality gap of the class tokens after the backbone and
after each heat cycle (and of the patch means before and after the heat cycles), each modality's share
of the features' energy and variance, and the heat operators' conductivities and gates per edge; the
missing-modality sweep of :func:`processor.evaluation.evaluate` gives retrieval with each single modality
and each pair.
"""

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from tqdm import tqdm
from yacs.config import CfgNode

from datasets import MultiModalDataset, make_test_loader
from model import MHCF
from model.mhcf import TEST_FEATURES
from utils.bias_measures import (
    RunningMean,
    energy_shares,
    flatten_scalars,
    modality_gap,
    retrieval_by_modalities,
    retrieval_summary,
    variance_shares,
)
from utils.metrics import RankResult
from utils.modalities import miss_settings, missing_modalities

from .device import BatchToDevice
from .evaluation import evaluate, evaluation_samples

__all__ = ["analyse_modal_bias", "feature_statistics", "format_modal_bias", "log_modal_bias",
           "modal_bias_scalars"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def feature_statistics(model: MHCF, loader, to_device: BatchToDevice, feat_norm: bool = True,
                       progress: bool = True) -> dict:
    """Modality gaps, energy and variance shares and heat statistics of ``model`` over ``loader`` (all
    modalities). The test feature is L2-normalised first when ``feat_norm`` (as retrieval sees it)."""
    model.eval()
    modalities = model.modalities
    cycles = [f"cycle {c + 1}" for c in range(model.heat.num_cycles)]
    cls_stages: dict[str, dict[str, list[torch.Tensor]]] = {s: {m: [] for m in modalities}
                                                             for s in ["backbone", *cycles]}
    patch_stages: dict[str, dict[str, list[torch.Tensor]]] = {s: {m: [] for m in modalities}
                                                               for s in ("backbone", "heat")}
    named: dict[str, list[torch.Tensor]] = {name: [] for name in [*TEST_FEATURES, "test"]}
    heat = RunningMean()
    for batch in tqdm(loader, desc="modal bias", disable=not progress, leave=False):
        batch = to_device(batch)
        tokens = model.encode(batch)
        features, out = model.fuse(tokens)
        test = model.test_feature(features)
        size = test.shape[0]
        for m in modalities:
            cls_stages["backbone"][m].append(tokens[m][:, 0].float().cpu())                      # (B, C)
            for stage, cls in zip(cycles, out.cls_trace):
                cls_stages[stage][m].append(cls[m].float().cpu())
            patch_stages["backbone"][m].append(tokens[m][:, 1:].float().mean(1).cpu())
            patch_stages["heat"][m].append(out.patches[m].float().mean(1).cpu())
        for name in TEST_FEATURES:
            named[name].append(features[name].float().cpu())
        named["test"].append((F.normalize(test.float(), dim=1) if feat_norm else test.float()).cpu())
        for (cycle, src, tgt), stats in out.stats.items():
            for key, value in stats.items():  # kappa (B,), gate (B,), spatial_gate (B, N)
                per_sample = value.float().reshape(size, -1).mean(1)                             # (B,)
                heat.update({f"{src}->{tgt}/{key}": per_sample,
                             f"{src}->{tgt}/cycle {cycle + 1}/{key}": per_sample}, size)

    def gaps(stages: dict[str, dict[str, list[torch.Tensor]]]) -> dict:
        return {s: modality_gap({m: torch.cat(f) for m, f in per_modality.items()})
                for s, per_modality in stages.items()}

    shares: dict[str, dict[str, dict[str, float]]] = {"energy": {}, "variance": {}}
    for name, chunks in named.items():
        feature = torch.cat(chunks)                                                               # (N, D)
        parts = len(TEST_FEATURES) if name == "test" else 1
        for kind, values in (("energy", energy_shares(feature, len(modalities), parts).mean(0)),
                             ("variance", variance_shares(feature, len(modalities), parts))):
            shares[kind][name] = dict(zip(modalities, values.tolist()))
    return {"gap": {"class token": gaps(cls_stages), "patch mean": gaps(patch_stages)},
            "shares": shares,
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
                       results: Mapping[str, RankResult] | None = None, max_samples: int = 2000,
                       progress: bool = True) -> dict:
    """The modal-bias report of ``model`` on ``dataset``'s test samples (a JSON-serialisable dict).

    ``results``: the missing-modality sweep when already computed (every setting of
    :func:`miss_settings`); otherwise it is run here. The feature statistics use at most
    ``max_samples`` test samples, evenly spaced (their features are held in memory).
    """
    modalities = list(model.modalities)
    settings = miss_settings(modalities)
    if results is None or set(results) != set(settings):
        results = evaluate(cfg, model, dataset, device, settings, progress=progress)
    missing = {s: missing_modalities(s, modalities) for s in settings}
    by_modalities = retrieval_by_modalities(results, missing, modalities)
    samples = evaluation_samples(dataset)
    if len(samples) > max_samples:
        samples = [samples[i] for i in torch.linspace(0, len(samples) - 1, max_samples).round().long().tolist()]
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    report = {"dataset": dataset.name, "modalities": modalities, "analysed_samples": len(samples),
              "retrieval": by_modalities, "summary": retrieval_summary(by_modalities, modalities)}
    report.update(feature_statistics(model, loader, BatchToDevice(cfg, device), cfg.TEST.FEAT_NORM, progress))
    return report


def modal_bias_scalars(report: Mapping) -> dict[str, float]:
    """The report's numbers as flat TensorBoard tags (``retrieval/RGB/mAP``, ``gap/class_token/...``)."""
    keep = ("retrieval", "summary", "gap", "shares", "heat")
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
        lines += ["", f"Modality gap of the {kind}s (sample: cosine distance between the modalities of one "
                      "sample, centred; centroid: distance between the modality centroids / within-modality "
                      "spread; share: variance explained by the modality):", "",
                  "| stage | " + " | ".join(f"sample {p}" for p in pairs) + " | sample mean | "
                  + " | ".join(f"centroid {p}" for p in pairs) + " | centroid mean | modality share |",
                  "|---" * (2 * len(pairs) + 4) + "|"]
        for stage, gap in stages.items():
            cells = [gap["sample"][p] for p in [*pairs, "mean"]] + [gap["centroid"][p] for p in [*pairs, "mean"]]
            lines.append(f"| {stage} | " + " | ".join(f"{v:.3f}" for v in cells) + f" | {gap['modality_share']:.3f} |")

    lines += ["", "Share of each modality in the features' energy (squared norm, mean over samples) and in "
                  "their variance over the samples (what distances see; test feature as retrieval uses it):", "",
              "| feature | " + " | ".join(f"energy {m}" for m in modalities) + " | "
              + " | ".join(f"variance {m}" for m in modalities) + " |", "|---" * (2 * len(modalities) + 1) + "|"]
    for name, energy in report["shares"]["energy"].items():
        variance = report["shares"]["variance"][name]
        lines.append(f"| {name} | " + " | ".join(f"{energy[m]:.3f}" for m in modalities) + " | "
                     + " | ".join(f"{variance[m]:.3f}" for m in modalities) + " |")

    edges = report["heat"]["edges"]
    lines += ["", "Heat operators per edge (test-set means over samples and cycles):", "",
              "| edge | kappa | gate g | spatial gate G |", "|---|---|---|---|"]
    for edge, stats in edges.items():
        lines.append(f"| {edge} | {stats['kappa']:.4f} | {stats['gate']:.4f} | {stats['spatial_gate']:.4f} |")
    params = report["heat"]["parameters"]
    lines += ["", "Learned parameters: " + ", ".join(f"{k} {v:.4f}" for k, v in params.items())]
    return "\n".join(lines)
