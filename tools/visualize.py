"""Visualisations of a checkpoint on a dataset's test samples (PNG with PIL; projector with TensorBoard).

    python -m tools.visualize ranks     --config_file ... TEST.WEIGHT <ckpt>   # ranked lists
    python -m tools.visualize heatmaps  --config_file ... TEST.WEIGHT <ckpt>   # heat-cycle change and gate
    python -m tools.visualize embedding --config_file ... TEST.WEIGHT <ckpt>   # TensorBoard projector

- ``ranks``: per query, its modalities (stacked) and its top-k gallery under the evaluation protocol,
  framed green (same identity) or red; missing modalities (TEST.MISS) are drawn grey, as the model sees
  them (a zero normalised image).
- ``heatmaps``: per sample and modality, the image, the per-patch change of the patch tokens over the
  heat cycles ``‖P_after − P_before‖`` (colours span the sample's smallest to largest change over its
  modalities; the range is printed) and the spatial gate G of the edges into that modality (mean over
  cycles, absolute scale 0..1), upsampled and overlaid.
- ``embedding``: the test features under each missing-modality setting, with pid / camera / setting and
  thumbnails, for TensorBoard's projector (PCA, t-SNE, UMAP in the browser).
"""

import argparse
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch.utils.tensorboard import SummaryWriter

from datasets import MultiModalDataset, Sample, make_test_loader
from model import MHCF
from processor.device import BatchToDevice
from processor.evaluation import evaluation_samples, extract_features
from utils.bias_measures import mean_spatial_gates, patch_change, ranked_lists
from utils.errors import UserError
from utils.metrics import pairwise_sq_distances
from utils.modalities import ALL, kept_modalities, miss_settings, missing_modalities, setting_error

from .common import add_config_arguments, load_model_and_data, run_tool, tool_parser

MATCH = (0, 170, 0)       # frame of a gallery item with the query's identity
MISMATCH = (220, 0, 0)    # frame of any other gallery item
QUERY = (40, 90, 220)     # frame of the query
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MISSING = (128, 128, 128)  # a missing modality: the zero normalised image is the mean grey
#: colour map from low (dark purple) to high (light yellow), as (position, RGB) anchors
COLORMAP = [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
            (1.0, (252, 255, 164))]
LINE = 12  # text line height in pixels


def load_font(size: int = 10) -> ImageFont.ImageFont:
    """PIL's built-in font at ``size`` (the fixed bitmap font on Pillow < 10.1 or without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> RGB (H, W, 3) uint8 through :data:`COLORMAP` (clipped outside)."""
    values = np.clip(values, 0.0, 1.0)
    positions = [p for p, _ in COLORMAP]
    channels = [np.interp(values, positions, [c[i] for _, c in COLORMAP]) for i in range(3)]
    return np.stack(channels, -1).round().astype(np.uint8)


def overlay(image: Image.Image, heat: torch.Tensor, vmin: float, vmax: float, alpha: float = 0.55) -> Image.Image:
    """``heat`` (h, w) on the token grid, mapped from [vmin, vmax] to [0, 1], upsampled (bilinear) to
    ``image`` and blended over it."""
    W, H = image.size
    up = F.interpolate(heat[None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    colours = colorize(((up - vmin) / max(vmax - vmin, 1e-12)).numpy())
    return Image.blend(image.convert("RGB"), Image.fromarray(colours), alpha)


def tile_size(image_size: Sequence[int], height: int) -> tuple[int, int]:
    """(width, height) of a tile ``height`` pixels high with the aspect of ``image_size`` (H, W)."""
    return max(1, round(height * image_size[1] / image_size[0])), height


def thumbnails(images: Mapping[str, Image.Image], modalities: Sequence[str], size: tuple[int, int],
               missing: Sequence[str] = ()) -> list[Image.Image]:
    """One tile of ``size`` (W, H) per modality; a missing modality is a uniform grey tile."""
    return [Image.new("RGB", size, MISSING) if m in missing else resize(images[m], size) for m in modalities]


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.convert("RGB").resize(size, Image.Resampling.BILINEAR)


# ---------------------------------------------------------------------------------------------------
# Ranked lists
# ---------------------------------------------------------------------------------------------------
def render_ranked_lists(rows: Sequence[Mapping], frame: int = 3, gap: int = 6, query_gap: int = 18,
                        font: ImageFont.ImageFont | None = None) -> tuple[Image.Image, list[list[tuple]]]:
    """Draw ranked lists: one row per query, one column per item, an item's modality tiles stacked.

    ``rows``: ``{"query": item, "gallery": [item, ...]}`` with items ``{"tiles": [PIL tiles, same size],
    "label": [text lines], "match": bool}`` (``match`` only for gallery items). The query is framed
    :data:`QUERY`, gallery items :data:`MATCH` or :data:`MISMATCH`. Returns the image and, per row, the
    frame rectangles ``(x0, y0, x1, y1)`` (inclusive) of the query and of each gallery item.
    """
    font = font or load_font()
    tile_w, tile_h = rows[0]["query"]["tiles"][0].size
    num_tiles = len(rows[0]["query"]["tiles"])
    lines = max(len(item["label"]) for row in rows for item in [row["query"], *row["gallery"]])
    label_h = LINE * lines + 2
    box_w, col_h = tile_w + 2 * frame, tile_h * num_tiles + 2 * frame
    widest = max(font.getlength(text) for row in rows for item in [row["query"], *row["gallery"]]
                 for text in item["label"])
    col_w = max(box_w, int(widest) + 2)  # labels may be wider than the tiles
    row_h = label_h + col_h
    most = max(len(row["gallery"]) for row in rows)
    width = gap + col_w + query_gap + most * (col_w + gap)
    height = gap + len(rows) * (row_h + gap)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for r, row in enumerate(rows):
        y = gap + r * (row_h + gap)
        row_boxes = []
        items = [(row["query"], QUERY)] + [(item, MATCH if item["match"] else MISMATCH) for item in row["gallery"]]
        for j, (item, colour) in enumerate(items):
            x = gap + (0 if j == 0 else col_w + query_gap + (j - 1) * (col_w + gap))
            for k, text in enumerate(item["label"]):
                draw.text((x, y + k * LINE), text, fill=TEXT, font=font)
            top = y + label_h
            box = (x, top, x + box_w - 1, top + col_h - 1)
            draw.rectangle(box, fill=colour)
            for t, tile in enumerate(item["tiles"]):
                canvas.paste(tile, (x + frame, top + frame + t * tile_h))
            row_boxes.append(box)
        boxes.append(row_boxes)
    return canvas, boxes


def pick_indices(count: int, num: int, indices: Sequence[int] | None) -> list[int]:
    """``indices`` when given (checked against ``count``), else ``num`` evenly spaced indices."""
    if indices:
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise UserError(f"sample indices {bad} out of range (0..{count - 1})")
        return list(indices)
    return sorted({int(i) for i in np.linspace(0, count - 1, min(num, count)).round()})


def ranked_rows(dataset: MultiModalDataset, modalities: Sequence[str], features: torch.Tensor,
                picks: Sequence[int], setting: str, topk: int, tile_height: int,
                image_size: Sequence[int]) -> list[dict]:
    """The rows of :func:`render_ranked_lists` for queries ``picks`` from the test ``features`` (query
    first, then the gallery when it differs) of one TEST.MISS ``setting``."""
    query, gallery = dataset.query, dataset.gallery
    qf = features[: len(query)]
    gf = features if gallery is query else features[len(query):]
    chosen = [query[i] for i in picks]
    dist = pairwise_sq_distances(qf[list(picks)], gf)                                            # (Q, G)
    lists = ranked_lists(dist, **dataset.eval_metadata(chosen, gallery), topk=topk)
    missing = missing_modalities(setting, modalities)
    size = tile_size(image_size, tile_height)

    def item(sample: Sample, label: list[str], match: bool | None = None) -> dict:
        return {"tiles": thumbnails(dataset.read(sample), modalities, size, missing), "label": label,
                "match": match}

    rows = []
    for q, ranked in zip(chosen, lists):
        items = []
        for k, (g, d, match) in enumerate(zip(ranked["index"], ranked["distance"], ranked["match"])):
            s = gallery[g]
            items.append(item(s, [f"{k + 1}: id {s.pid}", f"c{s.camid + 1} d={d:.2g}"], match))
        rows.append({"query": item(q, ["query", f"id {q.pid} c{q.camid + 1}"]), "gallery": items})
    return rows


def ranks(args: argparse.Namespace) -> str:
    cfg, model, dataset, device = load_model_and_data(args)
    setting = cfg.TEST.MISS
    if setting == ALL:
        choices = ", ".join(miss_settings(model.modalities))
        raise UserError(f"visualize ranks: TEST.MISS must be one setting ({choices}), not 'all'")
    samples = evaluation_samples(dataset)
    loader = make_test_loader(cfg, dataset, samples, pin_memory=device.type == "cuda")
    features = extract_features(model, loader, BatchToDevice(cfg, device), [setting])[setting]
    if cfg.TEST.FEAT_NORM:
        features = F.normalize(features, dim=1)
    picks = pick_indices(len(dataset.query), args.num, args.indices)
    rows = ranked_rows(dataset, model.modalities, features, picks, setting, args.topk, args.tile_height,
                       cfg.INPUT.SIZE_TEST)
    image, _ = render_ranked_lists(rows)
    return save_png(image, args.out or os.path.join(cfg.OUTPUT_DIR, "visualize", f"ranks_{setting}.png"),
                    args.colors)


# ---------------------------------------------------------------------------------------------------
# Heat maps
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


def render_heat_maps(samples: Sequence[Sample], images: Sequence[Mapping[str, Image.Image]],
                     maps: Mapping[str, Mapping[str, torch.Tensor]], modalities: Sequence[str],
                     size: tuple[int, int], per_map: bool = False, gap: int = 6,
                     font: ImageFont.ImageFont | None = None) -> Image.Image:
    """Rows of samples; per modality three tiles: the image, the change overlay (colour scale from the
    sample's smallest to its largest change over all its modalities, printed) and the gate overlay
    (absolute scale 0..1). ``per_map``: every overlay spans its own minimum to maximum instead (shows
    the spatial pattern of nearly uniform maps, hides the differences between modalities)."""
    font = font or load_font()
    tile_w, tile_h = size
    cols = [(m, kind) for m in modalities for kind in ("image", "change", "gate")]
    header = 2 * LINE
    row_h = LINE + tile_h
    width = gap + len(cols) * (tile_w + gap)
    canvas = Image.new("RGB", (width, header + len(samples) * (row_h + gap) + gap), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    titles = {"image": "image", "change": "change", "gate": "gate G"}
    for c, (m, kind) in enumerate(cols):
        draw.text((gap + c * (tile_w + gap), 2), f"{m}", fill=TEXT, font=font)
        draw.text((gap + c * (tile_w + gap), 2 + LINE), titles[kind], fill=TEXT, font=font)
    for r, (sample, imgs) in enumerate(zip(samples, images)):
        y = header + gap + r * (row_h + gap)
        vmin = min(float(maps["change"][m][r].min()) for m in modalities)
        vmax = max(float(maps["change"][m][r].max()) for m in modalities)
        gmin = min(float(maps["gate"][m][r].min()) for m in modalities)
        gmax = max(float(maps["gate"][m][r].max()) for m in modalities)
        draw.text((gap, y), f"id {sample.pid} c{sample.camid + 1}: change {vmin:.3g} to {vmax:.3g}, "
                            f"gate {gmin:.3g} to {gmax:.3g}", fill=TEXT, font=font)
        scales = {"change": (vmin, vmax), "gate": (0.0, 1.0)}
        for c, (m, kind) in enumerate(cols):
            base = resize(imgs[m], size)
            if kind != "image":
                heat = maps[kind][m][r]
                low, high = (float(heat.min()), float(heat.max())) if per_map else scales[kind]
                base = overlay(base, heat, low, high)
            canvas.paste(base, (gap + c * (tile_w + gap), y + LINE))
    return canvas


def heatmaps(args: argparse.Namespace) -> str:
    cfg, model, dataset, device = load_model_and_data(args)
    samples = evaluation_samples(dataset)
    picked = [samples[i] for i in pick_indices(len(samples), args.num, args.indices)]
    loader = make_test_loader(cfg, dataset, picked, pin_memory=device.type == "cuda")
    maps: dict[str, dict[str, list[torch.Tensor]]] = {"change": {}, "gate": {}}
    to_device = BatchToDevice(cfg, device)
    for batch in loader:
        for kind, per_modality in heat_maps(model, to_device(batch)).items():
            for m, value in per_modality.items():
                maps[kind].setdefault(m, []).append(value)
    merged = {kind: {m: torch.cat(v) for m, v in d.items()} for kind, d in maps.items()}
    size = tile_size(cfg.INPUT.SIZE_TEST, args.tile_height)
    image = render_heat_maps(picked, [dataset.read(s) for s in picked], merged, model.modalities, size,
                             per_map=args.per_map)
    return save_png(image, args.out or os.path.join(cfg.OUTPUT_DIR, "visualize", "heatmaps.png"), args.colors)


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
    features = extract_features(model, loader, BatchToDevice(cfg, device), settings)
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


def save_png(image: Image.Image, path: str, colors: int = 0) -> str:
    """Save ``image`` as PNG; ``colors`` > 0 quantises it to a palette of that many colours (smaller file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    print(f"wrote {path} ({image.size[0]}x{image.size[1]})")
    return path


def parse_indices(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("visualize", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    specs = {
        "ranks": (ranks, "ranked lists (PNG)", 4, 96),
        "heatmaps": (heatmaps, "heat-cycle change and spatial gate overlays (PNG)", 4, 128),
        "embedding": (embedding, "test features for TensorBoard's projector", 300, 32),
    }
    for name, (func, help_text, num, height) in specs.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        sub.add_argument("--num", type=int, default=num,
                         help=f"number of {'queries' if name == 'ranks' else 'test samples'}, evenly spaced "
                              f"(default {num})")
        sub.add_argument("--tile-height", type=int, default=height, help=f"pixels per image tile (default {height})")
        out_help = ("output folder (default OUTPUT_DIR/projector)" if name == "embedding"
                    else "output PNG (default under OUTPUT_DIR/visualize/)")
        sub.add_argument("--out", default="", help=out_help)
        if name == "ranks":
            sub.add_argument("--topk", type=int, default=8, help="gallery items per query (default 8)")
        if name in ("ranks", "heatmaps"):
            sub.add_argument("--colors", type=int, default=0,
                             help="quantise the PNG to this many colours (smaller files); 0 keeps full colour")
            sub.add_argument("--indices", type=parse_indices, default=None, metavar="I,J,...",
                             help="explicit indices, comma-separated (into the query for ranks, into the test "
                                  "samples otherwise)")
        if name == "heatmaps":
            sub.add_argument("--per-map", action="store_true",
                             help="colour every map from its own minimum to maximum (default: the change "
                                  "maps of a sample share one scale, gates use 0..1)")
        if name == "embedding":
            sub.add_argument("--miss", default="all", help="missing-modality settings: 'all' or a comma list "
                             "such as none,r,nt (default all)")
        add_config_arguments(sub)
    return parser


def run(args: argparse.Namespace):
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
