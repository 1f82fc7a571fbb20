"""Figures of a checkpoint on a dataset's test samples, drawn with matplotlib (PNG, PDF or SVG: the extension
of --out chooses), and TensorBoard projector data.

    python -m tools.visualize ranks     --config_file ... TEST.WEIGHT <ckpt>   # ranked lists
    python -m tools.visualize heatmaps  --config_file ... TEST.WEIGHT <ckpt>   # heat-cycle change and gate
    python -m tools.visualize cam       --config_file ... TEST.WEIGHT <ckpt>   # class activation maps
    python -m tools.visualize tsne      --config_file ... TEST.WEIGHT <ckpt>   # t-SNE by identity and modality
    python -m tools.visualize embedding --config_file ... TEST.WEIGHT <ckpt>   # TensorBoard projector

Every figure's title names the checkpoint, the dataset and the setting (TEST.MISS, re-ranking, scales); every
colour map has a colour bar whose ticks are the range shown. Figures go to ``<OUTPUT_DIR>/visualize/`` unless
``--out`` names the file.

- ``ranks``: per query, its modalities (stacked) and its top-k gallery under the evaluation protocol, framed
  green (same identity) or red, with the distance that ranked them: the squared distance of the test features
  as evaluation computes it, or the re-ranked distance with ``TEST.RE_RANKING True``. Missing modalities
  (TEST.MISS) are drawn grey, as the model sees them (a zero normalised image).
- ``heatmaps``: per sample and modality, the image, the per-patch change of the patch tokens over the heat
  cycles ``‖P_after − P_before‖`` and the spatial gate G of the edges into that modality (mean over cycles),
  upsampled and overlaid. By default each kind shares one colour scale over the figure, from its smallest to
  its largest value (maps compare across samples and modalities); ``--per-map`` gives every map its own range
  and its own colour bar (the pattern of a nearly uniform map, with the range it spans written on its bar).
- ``cam``: Grad-CAM (Selvaraju et al., ICCV 2017) per modality: the patch tokens entering the backbone's last
  block, weighted by the mean gradient of the predicted training identity's logit (summed over the fused
  heads), ReLU; one colour scale over the figure, so the modalities' shares compare.
- ``tsne``: exact t-SNE (utils/tsne.py) of the test features: the fused features by identity, and each
  modality's part of them (its ``ori``, ``heat_cls`` and ``heat_pat`` blocks) by identity and modality -- the
  modality gap: do one identity's modalities meet?
- ``embedding``: the test features under each missing-modality setting, with pid / camera / setting and
  thumbnails, for TensorBoard's projector (PCA, t-SNE, UMAP in the browser).
"""

import argparse
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from yacs.config import CfgNode

from datasets import MultiModalDataset, Sample, make_test_loader
from model import MHCF
from processor.device import BatchToDevice
from processor.evaluation import evaluation_samples, extract_features
from utils.bias_measures import mean_spatial_gates, patch_change, ranked_lists
from utils.errors import UserError
from utils.metrics import pairwise_sq_distances
from utils.modalities import ALL, kept_modalities, miss_settings, missing_modalities, setting_error
from utils.reranking import re_ranking
from utils.tsne import tsne

from .common import add_config_arguments, at_least, load_model_and_data, run_tool, tool_parser

MATCH, MISMATCH, QUERY = "#00a000", "#dc0000", "#285adc"   # frames: same identity, another, the query
MISSING = (128, 128, 128)  # a missing modality: the zero normalised image is the mean grey
HEAT_CMAP = "inferno"
OVERLAY_ALPHA = 0.6
MARKERS = "os^Dv<>p"       # one per modality in the t-SNE figure


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.convert("RGB").resize(size, Image.Resampling.BILINEAR)


def thumbnails(images: Mapping[str, Image.Image], modalities: Sequence[str], size: tuple[int, int],
               missing: Sequence[str] = ()) -> list[Image.Image]:
    """One tile of ``size`` (W, H) per modality; a missing modality is a uniform grey tile."""
    return [Image.new("RGB", size, MISSING) if m in missing else resize(images[m], size) for m in modalities]


def tile_size(image_size: Sequence[int], height: int) -> tuple[int, int]:
    """(width, height) of a tile ``height`` pixels high with the aspect of ``image_size`` (H, W)."""
    return max(1, round(height * image_size[1] / image_size[0])), height


def pick_indices(count: int, num: int, indices: Sequence[int] | None) -> list[int]:
    """``indices`` when given (checked against ``count``), else ``num`` evenly spaced indices."""
    if indices:
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise UserError(f"sample indices {bad} out of range (0..{count - 1})")
        return list(indices)
    return sorted({int(i) for i in np.linspace(0, count - 1, min(num, count)).round()})


def describe(cfg: CfgNode, dataset: MultiModalDataset, setting: str | None = None) -> str:
    """The line naming what a figure shows: checkpoint, dataset, TEST.MISS setting."""
    text = f"checkpoint {cfg.TEST.WEIGHT}, {dataset.name} test set"
    if setting is not None:
        kept = kept_modalities(missing_modalities(setting, dataset.modalities), dataset.modalities)
        text += f"\nTEST.MISS {setting} (modalities seen: {kept})"
    return text


def readable_colorbar(fig: Figure, mappable, axes, label: str, **kwargs):
    """A colour bar whose ticks are the ends of the range shown (and its middle), written in plain decimals
    with as many digits as the range needs (no offset notation, no 1e-5)."""
    bar = fig.colorbar(mappable, ax=axes, **kwargs)
    low, high = mappable.norm.vmin, mappable.norm.vmax
    digits = max(2, math.ceil(-math.log10(high - low)) + 2) if high > low else 3
    bar.set_ticks([low, (low + high) / 2, high])
    bar.formatter = FormatStrFormatter(f"%.{digits}f")
    bar.update_ticks()
    span = f"span {high - low:.{max(1, digits - 1)}g}"
    bar.set_label(f"{label} ({span})" if label else span, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return bar


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: str, dpi: int = 200) -> str:
    """Save ``fig`` (the format from the extension of ``path``: png, pdf, svg, ...)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    print(f"wrote {path}")
    return path


def _features(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, samples: Sequence[Sample], setting: str,
              device: torch.device) -> torch.Tensor:
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    features = extract_features(model, loader, BatchToDevice(cfg, device), [setting],
                                protocol=cfg.TEST.MISS_PROTOCOL)[setting]
    return F.normalize(features, dim=1) if cfg.TEST.FEAT_NORM else features


def _one_setting(cfg: CfgNode, modalities: Sequence[str], command: str) -> str:
    if cfg.TEST.MISS == ALL:
        raise UserError(f"visualize {command}: TEST.MISS must be one setting "
                        f"({', '.join(miss_settings(modalities))}), not 'all'")
    return cfg.TEST.MISS


# ---------------------------------------------------------------------------------------------------
# Ranked lists
# ---------------------------------------------------------------------------------------------------
def ranking(dataset: MultiModalDataset, features: torch.Tensor, picks: Sequence[int], topk: int,
            re_rank: tuple[int, int, float] | None = None) -> list[dict]:
    """Per picked query (index into the query set): ``{"query", "index", "distance", "match"}`` of its top
    ``topk`` gallery items under the dataset's protocol, ranked as evaluation ranks them: by the squared
    distance of ``features`` (query first, then the gallery when it differs), or with ``re_rank = (k1, k2,
    lambda)`` by the k-reciprocal re-ranked distance of the whole query set (as evaluation computes it)."""
    query, gallery = dataset.query, dataset.gallery
    qf = features[: len(query)]
    gf = features if gallery is query else features[len(query):]
    if re_rank is None:
        dist = pairwise_sq_distances(qf[list(picks)], gf).numpy()                                     # (Q, G)
    else:
        dist = re_ranking(qf, gf, *re_rank)[list(picks)]
    lists = ranked_lists(dist, **dataset.eval_metadata([query[i] for i in picks], gallery), topk=topk)
    return [{"query": pick, **ranked} for pick, ranked in zip(picks, lists)]


def distance_unit(distances: Sequence[float]) -> int:
    """The power of ten in which the figure's distances read as plain numbers with 3 decimals: 0 when the
    largest is at least 0.01, else k with the largest in [1, 10) x 10^k (squared distances of L2-normalised
    features after a LayerNorm are often ~1e-5)."""
    largest = max(distances, default=0.0)
    return 0 if largest >= 0.01 or largest <= 0 else math.floor(math.log10(largest))


def ranks_figure(dataset: MultiModalDataset, rows: Sequence[dict], setting: str, title: str,
                 tile_height: int = 64, image_size: Sequence[int] = (256, 128)) -> Figure:
    """One row per query: the query and its ranked gallery items, each with its modalities stacked, framed
    :data:`QUERY`, :data:`MATCH` or :data:`MISMATCH`, labelled with rank, identity, camera and distance (in
    the unit of :func:`distance_unit`, said in the title)."""
    modalities = dataset.modalities
    power = distance_unit([d for r in rows for d in r["distance"]])
    missing = missing_modalities(setting, modalities)
    size = tile_size(image_size, tile_height)
    cols = 1 + max(len(r["index"]) for r in rows)
    cell_w, cell_h = max(1.3, 0.25 + size[0] / 60), 0.45 + len(modalities) * size[1] / 60  # inches
    fig = Figure(figsize=(max(7.0, cols * cell_w), len(rows) * cell_h + 1.2), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)

    def draw(ax, sample: Sample, colour: str, label: str) -> None:
        tiles = thumbnails(dataset.read(sample), modalities, size, missing)
        ax.imshow(np.concatenate([np.asarray(t) for t in tiles], axis=0))                  # (M*h, w, 3)
        _bare(ax)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(label, fontsize=7)

    for r, row in enumerate(rows):
        q = dataset.query[row["query"]]
        draw(axes[r, 0], q, QUERY, f"query\nid {q.pid} · cam {q.camid + 1}")
        for k, (g, d, match) in enumerate(zip(row["index"], row["distance"], row["match"]), 1):
            s = dataset.gallery[g]
            draw(axes[r, k], s, MATCH if match else MISMATCH,
                 f"{k}. id {s.pid} · cam {s.camid + 1}\nd = {d / 10.0 ** power:.3f}")
        for ax in axes[r, 1 + len(row["index"]):]:
            ax.axis("off")
    handles = [Patch(facecolor="none", edgecolor=c, linewidth=2, label=text)
               for c, text in ((QUERY, "query"), (MATCH, "same identity"), (MISMATCH, "another identity"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title + (f" (d in units of $10^{{{power}}}$)" if power else ""), fontsize=9)
    return fig


def ranks(args: argparse.Namespace) -> Figure:
    cfg, model, dataset, device = load_model_and_data(args)
    setting = _one_setting(cfg, model.modalities, "ranks")
    features = _features(cfg, model, dataset, evaluation_samples(dataset), setting, device)
    picks = pick_indices(len(dataset.query), args.num, args.indices)
    t = cfg.TEST
    re_rank = (t.RE_RANKING_K1, t.RE_RANKING_K2, t.RE_RANKING_LAMBDA) if t.RE_RANKING else None
    rows = ranking(dataset, features, picks, args.topk, re_rank)
    if re_rank:
        distance = f"d: k-reciprocal re-ranked distance (k1 {re_rank[0]}, k2 {re_rank[1]}, lambda {re_rank[2]})"
    else:
        distance = "d: squared distance of the " + ("L2-normalised " if t.FEAT_NORM else "") + "test features"
    fig = ranks_figure(dataset, rows, setting, f"Ranked lists: {describe(cfg, dataset, setting)}\n{distance}",
                       args.tile_height, cfg.INPUT.SIZE_TEST)
    save_figure(fig, args.out or os.path.join(cfg.OUTPUT_DIR, "visualize", f"ranks_{setting}.png"), args.dpi)
    return fig


# ---------------------------------------------------------------------------------------------------
# Heat maps and class activation maps
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def heat_maps(model: MHCF, batch: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"change": {m: (B, h, w)}, "gate": {m: (B, h, w)}}`` on the token grid, on CPU: the per-patch
    change of modality m's patch tokens over the heat cycles and the mean spatial gate of the edges into m."""
    model.eval()
    tokens = model.encode(batch)
    _, out = model.fuse(tokens)
    grid = model.encoder(model.modalities[0]).grid_size
    change = {m: patch_change(tokens[m][:, 1:], out.patches[m], grid).cpu() for m in model.modalities}
    gate = {m: g.cpu() for m, g in mean_spatial_gates(out.stats, grid).items()}
    return {"change": change, "gate": gate}


def token_gradients(model: MHCF, batch: Mapping[str, torch.Tensor], classes: torch.Tensor | None = None):
    """Grad-CAM's inputs: per modality the tokens entering the backbone's last block (after its first
    LayerNorm) ``(B, 1 + N, C)`` and the gradient there of the logit of ``classes`` (default: each sample's
    predicted training identity), the logits summed over the fused heads. Returns ``(tokens, grads,
    classes)``, on the model's device."""
    model.eval()
    captured: list[torch.Tensor] = []
    encoders = [model.backbone] if model.shared_backbone else [model.backbone[m] for m in model.modalities]
    hooks = [e.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: captured.append(out)) for e in encoders]
    try:
        with torch.enable_grad():
            features, _ = model.fuse(model.encode(batch))
            fused = [name for name in model.heads if name not in model.modalities]
            logits = sum(model.heads[name](features[name])[1] for name in fused)                      # (B, K)
            classes = logits.argmax(1) if classes is None else classes.to(logits.device)
            grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), captured)
    finally:
        for hook in hooks:
            hook.remove()
    m = len(model.modalities)
    if model.shared_backbone:  # one call on the modalities as one batch: (M * B, 1 + N, C)
        tokens, grads = dict(zip(model.modalities, captured[0].detach().chunk(m))), dict(zip(model.modalities,
                                                                                              grads[0].chunk(m)))
    else:
        tokens = {mod: t.detach() for mod, t in zip(model.modalities, captured)}
        grads = dict(zip(model.modalities, grads))
    return tokens, grads, classes


def grad_cam(tokens: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
             grid: Sequence[int]) -> dict[str, torch.Tensor]:
    """Grad-CAM per modality on the token grid ``(B, h, w)``: ``ReLU(sum_c w_c P_nc)`` over the patch tokens P
    (class token left out), ``w_c`` the mean over patches of the gradient."""
    out = {}
    for m, t in tokens.items():
        weights = grads[m][:, 1:].float().mean(1, keepdim=True)                                     # (B, 1, C)
        out[m] = F.relu((t[:, 1:].float() * weights).sum(-1)).reshape(-1, *grid).cpu()              # (B, h, w)
    return out


def _overlay(ax, image: Image.Image, heat: torch.Tensor, norm: Normalize) -> None:
    """``image`` with ``heat`` (on the token grid) upsampled bilinearly over it, coloured through ``norm``."""
    ax.imshow(np.asarray(image))
    w, h = image.size
    ax.imshow(heat.numpy(), cmap=HEAT_CMAP, norm=norm, alpha=OVERLAY_ALPHA, interpolation="bilinear",
              extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    _bare(ax)


def _range(maps: Sequence[torch.Tensor]) -> Normalize:
    return Normalize(min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))


def heat_map_figure(samples: Sequence[Sample], images: Sequence[Mapping[str, Image.Image]],
                    maps: Mapping[str, Mapping[str, torch.Tensor]], modalities: Sequence[str],
                    size: tuple[int, int], title: str, per_map: bool = False) -> Figure:
    """Rows of samples; per modality the image, the change overlay and the gate overlay. Shared scale: one
    colour bar per kind, from the figure's smallest to its largest value; ``per_map``: one per map."""
    kinds = {"change": "change ‖P_after − P_before‖", "gate": "spatial gate G"}
    cols = [(m, kind) for m in modalities for kind in ("image", *kinds)]
    fig = Figure(figsize=(len(cols) * (0.4 + size[0] / 55), len(samples) * (0.3 + size[1] / 55) + 1.3),
                 layout="constrained")
    axes = fig.subplots(len(samples), len(cols), squeeze=False)
    shared = {kind: _range([maps[kind][m][r] for m in modalities for r in range(len(samples))]) for kind in kinds}
    for r, (sample, imgs) in enumerate(zip(samples, images)):
        for c, (m, kind) in enumerate(cols):
            ax, base = axes[r, c], resize(imgs[m], size)
            if r == 0:
                ax.set_title(f"{m} {'image' if kind == 'image' else kind}", fontsize=8)
            if kind == "image":
                ax.imshow(np.asarray(base))
                _bare(ax)
                if c == 0:
                    ax.set_ylabel(f"id {sample.pid} · cam {sample.camid + 1}", fontsize=8)
                continue
            heat = maps[kind][m][r]
            norm = _range([heat]) if per_map else shared[kind]
            _overlay(ax, base, heat, norm)
            if per_map:
                readable_colorbar(fig, ScalarMappable(norm=norm, cmap=HEAT_CMAP), ax, "", fraction=0.08, pad=0.02)
    if not per_map:  # both bars at the right of the whole grid
        for kind, label in kinds.items():
            readable_colorbar(fig, ScalarMappable(norm=shared[kind], cmap=HEAT_CMAP), axes.ravel().tolist(),
                              f"{label}, one scale over the figure", shrink=0.8, aspect=30)
    scale = ("each map on its own scale (its colour bar gives its range)" if per_map
             else "one colour scale per kind over the figure")
    fig.suptitle(f"{title}\nchange of the patch tokens over the heat cycles and spatial gate G; {scale}",
                 fontsize=9)
    return fig


def cam_figure(samples: Sequence[Sample], images: Sequence[Mapping[str, Image.Image]],
               cams: Mapping[str, torch.Tensor], classes: torch.Tensor, modalities: Sequence[str],
               size: tuple[int, int], title: str) -> Figure:
    """Rows of samples; per modality the image and its Grad-CAM overlay, one colour scale over the figure."""
    fig = Figure(figsize=(2 * len(modalities) * (0.4 + size[0] / 55), len(samples) * (0.3 + size[1] / 55) + 1.3),
                 layout="constrained")
    axes = fig.subplots(len(samples), 2 * len(modalities), squeeze=False)
    norm = _range([cams[m] for m in modalities])
    overlays = []
    for r, (sample, imgs) in enumerate(zip(samples, images)):
        for i, m in enumerate(modalities):
            base = resize(imgs[m], size)
            axes[r, 2 * i].imshow(np.asarray(base))
            _bare(axes[r, 2 * i])
            _overlay(axes[r, 2 * i + 1], base, cams[m][r], norm)
            overlays.append(axes[r, 2 * i + 1])
            if r == 0:
                axes[r, 2 * i].set_title(f"{m} image", fontsize=8)
                axes[r, 2 * i + 1].set_title(f"{m} Grad-CAM", fontsize=8)
        axes[r, 0].set_ylabel(f"id {sample.pid} · cam {sample.camid + 1}\n(predicted train id "
                              f"{int(classes[r])})", fontsize=7)
    readable_colorbar(fig, ScalarMappable(norm=norm, cmap=HEAT_CMAP), overlays,
                      "Grad-CAM, one scale over the figure", shrink=0.8, aspect=30)
    fig.suptitle(f"{title}\nGrad-CAM of the predicted training identity (logits of the fused heads summed) at "
                 f"the input of the backbone's last block", fontsize=9)
    return fig


def _picked_batches(cfg: CfgNode, model: MHCF, dataset: MultiModalDataset, args: argparse.Namespace, device):
    samples = evaluation_samples(dataset)
    picked = [samples[i] for i in pick_indices(len(samples), args.num, args.indices)]
    loader = make_test_loader(cfg, dataset, picked, pin_memory=device.type == "cuda")
    to_device = BatchToDevice(cfg, device)
    return picked, [to_device(batch) for batch in loader]


def heatmaps(args: argparse.Namespace) -> Figure:
    cfg, model, dataset, device = load_model_and_data(args)
    picked, batches = _picked_batches(cfg, model, dataset, args, device)
    parts = [heat_maps(model, batch) for batch in batches]
    merged = {kind: {m: torch.cat([p[kind][m] for p in parts]) for m in model.modalities} for kind in parts[0]}
    size = tile_size(cfg.INPUT.SIZE_TEST, args.tile_height)
    fig = heat_map_figure(picked, [dataset.read(s) for s in picked], merged, model.modalities, size,
                          f"Heat maps: {describe(cfg, dataset)}", per_map=args.per_map)
    save_figure(fig, args.out or os.path.join(cfg.OUTPUT_DIR, "visualize", "heatmaps.png"), args.dpi)
    return fig


def cam(args: argparse.Namespace) -> Figure:
    cfg, model, dataset, device = load_model_and_data(args)
    picked, batches = _picked_batches(cfg, model, dataset, args, device)
    grid = model.encoder(model.modalities[0]).grid_size
    cams: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    classes = []
    for batch in batches:
        tokens, grads, predicted = token_gradients(model, batch)
        for m, value in grad_cam(tokens, grads, grid).items():
            cams[m].append(value)
        classes.append(predicted.cpu())
    size = tile_size(cfg.INPUT.SIZE_TEST, args.tile_height)
    fig = cam_figure(picked, [dataset.read(s) for s in picked], {m: torch.cat(v) for m, v in cams.items()},
                     torch.cat(classes), model.modalities, size, f"Class activation maps: {describe(cfg, dataset)}")
    save_figure(fig, args.out or os.path.join(cfg.OUTPUT_DIR, "visualize", "cam.png"), args.dpi)
    return fig


# ---------------------------------------------------------------------------------------------------
# t-SNE
# ---------------------------------------------------------------------------------------------------
def modality_parts(features: torch.Tensor, num_modalities: int, num_parts: int = 3) -> torch.Tensor:
    """``(M, N, parts * C)``: each modality's blocks of the test features ``(N, parts * M * C)`` (``ori``,
    ``heat_cls``, ``heat_pat``, each the concatenation over the modalities), L2-normalised."""
    n, d = features.shape
    blocks = features.reshape(n, num_parts, num_modalities, d // (num_parts * num_modalities))   # (N, P, M, C)
    return F.normalize(blocks.permute(2, 0, 1, 3).reshape(num_modalities, n, -1), dim=-1)


def tsne_figure(features: torch.Tensor, pids: Sequence[int], modalities: Sequence[str], title: str,
                perplexity: float = 30.0, seed: int = 0) -> Figure:
    """Two t-SNE panels: the fused test features coloured by identity, and the modalities' parts of them,
    coloured by identity, one marker per modality."""
    ids = sorted(set(pids))
    cmap = colormaps["tab20"]
    colours = np.array([cmap(ids.index(p) % 20) for p in pids])
    fig = Figure(figsize=(11, 5.4), layout="constrained")
    fused_ax, parts_ax = fig.subplots(1, 2)
    y = tsne(F.normalize(features, dim=1).numpy(), perplexity=perplexity, seed=seed)
    fused_ax.scatter(y[:, 0], y[:, 1], c=colours, s=14, marker="o", linewidths=0)
    fused_ax.set_title("fused test features", fontsize=9)
    parts = modality_parts(features, len(modalities))                                              # (M, N, D')
    y = tsne(parts.reshape(-1, parts.shape[-1]).numpy(), perplexity=perplexity, seed=seed)
    n = features.shape[0]
    for i in range(len(modalities)):
        parts_ax.scatter(y[i * n:(i + 1) * n, 0], y[i * n:(i + 1) * n, 1], c=colours, s=14,
                         marker=MARKERS[i % len(MARKERS)], linewidths=0)
    parts_ax.set_title("each modality's part of them (ori, heat_cls, heat_pat)", fontsize=9)
    parts_ax.legend(handles=[Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="", label=m)
                             for i, m in enumerate(modalities)], title="modality", fontsize=8, loc="best")
    for ax in (fused_ax, parts_ax):
        _bare(ax)
    fig.suptitle(f"{title}\nt-SNE (exact, perplexity {min(perplexity, (n - 1) / 3):g}); colour: identity "
                 f"({len(ids)} identities{', colours repeat' if len(ids) > 20 else ''})", fontsize=9)
    return fig


def tsne_command(args: argparse.Namespace) -> Figure:
    cfg, model, dataset, device = load_model_and_data(args)
    setting = _one_setting(cfg, model.modalities, "tsne")
    samples = evaluation_samples(dataset)
    samples = [samples[i] for i in pick_indices(len(samples), args.num, args.indices)]
    if len(samples) < 4:
        raise UserError(f"visualize tsne: t-SNE needs at least 4 samples, got {len(samples)} (--num, --indices)")
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    features = extract_features(model, loader, BatchToDevice(cfg, device), [setting],
                                protocol=cfg.TEST.MISS_PROTOCOL)[setting]
    fig = tsne_figure(features, [s.pid for s in samples], model.modalities,
                      f"Test features: {describe(cfg, dataset, setting)}", args.perplexity, cfg.SOLVER.SEED)
    save_figure(fig, args.out or os.path.join(cfg.OUTPUT_DIR, "visualize", f"tsne_{setting}.png"), args.dpi)
    return fig


# ---------------------------------------------------------------------------------------------------
# Embedding projector
# ---------------------------------------------------------------------------------------------------
def projector_inputs(features: Mapping[str, torch.Tensor], samples: Sequence[Sample],
                     images: Sequence[Mapping[str, Image.Image]], modalities: Sequence[str],
                     thumb: tuple[int, int]) -> tuple[torch.Tensor, list[list], torch.Tensor]:
    """``(matrix (S*N, D), metadata rows [pid, camid, miss, modalities], thumbnails (S*N, 3, h, M*w))``
    for the features of S settings over N samples; thumbnails show the modalities side by side, missing
    ones grey."""
    mats, meta, thumbs = [], [], []
    for setting, feat in features.items():
        missing = missing_modalities(setting, modalities)
        mats.append(feat)
        for sample, imgs in zip(samples, images):
            meta.append([sample.pid, sample.camid, setting, kept_modalities(missing, modalities)])
            tiles = [np.asarray(t) for t in thumbnails(imgs, modalities, thumb, missing)]
            thumbs.append(torch.from_numpy(np.concatenate(tiles, axis=1)).permute(2, 0, 1))      # (3, h, M*w)
    return torch.cat(mats), meta, torch.stack(thumbs).float() / 255


def embedding(args: argparse.Namespace) -> str:
    cfg, model, dataset, device = load_model_and_data(args)
    settings = miss_settings(model.modalities) if args.miss == ALL else args.miss.split(",")
    for setting in settings:
        problem = setting_error(setting, model.modalities, allow_all=False)
        if problem:
            raise UserError(f"visualize embedding: each --miss setting {problem}")
    samples = evaluation_samples(dataset)
    samples = [samples[i] for i in pick_indices(len(samples), args.num, None)]
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    features = extract_features(model, loader, BatchToDevice(cfg, device), settings, protocol=cfg.TEST.MISS_PROTOCOL)
    if cfg.TEST.FEAT_NORM:
        features = {s: F.normalize(f, dim=1) for s, f in features.items()}
    thumb = tile_size(cfg.INPUT.SIZE_TEST, args.tile_height)
    mat, meta, label_img = projector_inputs(features, samples, [dataset.read(s) for s in samples],
                                            model.modalities, thumb)
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "projector")
    writer = SummaryWriter(out)
    writer.add_embedding(mat, metadata=meta, label_img=label_img, tag="test_features",
                         metadata_header=["pid", "camid", "miss", "modalities"])
    writer.close()
    print(f"wrote {len(meta)} points ({len(samples)} samples x {len(settings)} settings) to {out}; "
          f"view with: tensorboard --logdir {out}  (PROJECTOR tab)")
    return out


def parse_indices(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("visualize", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    specs = {
        "ranks": (ranks, "ranked lists", 4, 64),
        "heatmaps": (heatmaps, "heat-cycle change and spatial gate overlays", 4, 96),
        "cam": (cam, "class activation maps per modality (Grad-CAM)", 4, 96),
        "tsne": (tsne_command, "t-SNE of the test features by identity and modality", 300, 0),
        "embedding": (embedding, "test features for TensorBoard's projector", 300, 32),
    }
    for name, (func, help_text, num, height) in specs.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        sub.add_argument("--num", type=at_least(1), default=num,
                         help=f"number of {'queries' if name == 'ranks' else 'test samples'}, evenly spaced "
                              f"(default {num})")
        if height:
            sub.add_argument("--tile-height", type=at_least(1), default=height,
                             help=f"pixels per image tile (default {height})")
        if name == "embedding":
            sub.add_argument("--out", default="", help="output folder (default OUTPUT_DIR/projector)")
            sub.add_argument("--miss", default="all", help="missing-modality settings: 'all' or a comma list "
                             "such as none,r,nt (default all)")
        else:
            sub.add_argument("--out", default="", help="output file, .png, .pdf or .svg (default under "
                                                       "OUTPUT_DIR/visualize/)")
            sub.add_argument("--dpi", type=at_least(1), default=200, help="resolution of raster output (default 200)")
            sub.add_argument("--indices", type=parse_indices, default=None, metavar="I,J,...",
                             help="explicit indices, comma-separated (into the query for ranks, into the test "
                                  "samples otherwise)")
        if name == "ranks":
            sub.add_argument("--topk", type=at_least(1), default=8, help="gallery items per query (default 8)")
        if name == "heatmaps":
            sub.add_argument("--per-map", action="store_true",
                             help="give every map its own colour range and colour bar (default: one scale per "
                                  "kind over the figure)")
        if name == "tsne":
            sub.add_argument("--perplexity", type=at_least(1, float), default=30.0,
                             help="t-SNE perplexity (default 30)")
        add_config_arguments(sub)
    return parser


def run(args: argparse.Namespace):
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
