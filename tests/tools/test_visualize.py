"""Visualisations: ranked-list colours on known matches, colour map, heat maps of a known operator, the
three commands end to end on the tiny Synthetic tree."""

import csv
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from config import load_config
from datasets import make_dataset
from model import load_model, read_checkpoint
from tools import visualize
from tools.visualize import (
    COLORMAP,
    MATCH,
    MISMATCH,
    QUERY,
    colorize,
    heat_maps,
    overlay,
    ranked_rows,
    render_ranked_lists,
)

MODS = ["RGB", "NI", "TI"]


def _frame_colour(image: Image.Image, box: tuple) -> tuple:
    """The colour of the frame's left edge, halfway down."""
    return image.getpixel((box[0] + 1, (box[1] + box[3]) // 2))


def test_ranked_list_colours_on_known_matches(tiny_root):
    dataset = make_dataset("Synthetic", tiny_root)  # query = gallery: 4 ids x 4 cameras x 2 shots
    pids = sorted({s.pid for s in dataset.query})
    # features: one direction per identity, so a query's nearest items are its own identity's
    features = torch.stack([torch.eye(len(pids))[pids.index(s.pid)] for s in dataset.query])
    picks = [0, 9, 31]
    rows = ranked_rows(dataset, MODS, features, picks, "none", topk=8, tile_height=20, image_size=(64, 32))
    image, boxes = render_ranked_lists(rows)
    for pick, row, row_boxes in zip(picks, rows, boxes):
        query = dataset.query[pick]
        # the protocol keeps the 6 same-id items of the 3 other cameras (same id and camera removed)
        assert [item["match"] for item in row["gallery"]] == [True] * 6 + [False] * 2
        gallery_pids = [int(item["label"][0].split("id ")[1]) for item in row["gallery"]]
        assert gallery_pids[:6] == [query.pid] * 6 and query.pid not in gallery_pids[6:]
        assert _frame_colour(image, row_boxes[0]) == QUERY
        assert [_frame_colour(image, b) for b in row_boxes[1:]] == [MATCH] * 6 + [MISMATCH] * 2
    # three modality tiles per column, each 10 x 20 inside a 3-pixel frame
    x0, y0, x1, y1 = boxes[0][1]
    assert (x1 - x0 + 1, y1 - y0 + 1) == (10 + 6, 3 * 20 + 6)


def test_missing_modalities_are_grey_tiles(tiny_root):
    dataset = make_dataset("Synthetic", tiny_root)
    features = torch.randn(len(dataset.query), 4)
    rows = ranked_rows(dataset, MODS, features, [0], "rt", topk=2, tile_height=8, image_size=(64, 32))
    tiles = rows[0]["query"]["tiles"]
    assert np.all(np.asarray(tiles[0]) == 128) and np.all(np.asarray(tiles[2]) == 128)  # RGB, TI missing
    assert not np.all(np.asarray(tiles[1]) == 128)


def test_colour_map_and_overlay():
    values = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]])
    colours = colorize(values)
    assert tuple(colours[0, 0]) == COLORMAP[0][1] == tuple(colours[0, 1])     # clipped below
    assert tuple(colours[0, 2]) == COLORMAP[2][1]
    assert tuple(colours[0, 3]) == COLORMAP[-1][1] == tuple(colours[0, 4])    # clipped above
    image = Image.new("RGB", (4, 6), (200, 100, 0))
    heat = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])   # 3 x 2 grid, rows 1, 2, 3
    blended = np.asarray(overlay(image, heat, vmin=1.0, vmax=3.0, alpha=0.5)).astype(float)  # (6, 4, 3)
    base = np.array([200, 100, 0])
    # the top and bottom image rows lie beyond the first and last grid rows' centres: value 1 and 3
    assert np.abs(blended[0] - (0.5 * base + 0.5 * np.array(COLORMAP[0][1]))).max() <= 1.0
    assert np.abs(blended[-1] - (0.5 * base + 0.5 * np.array(COLORMAP[-1][1]))).max() <= 1.0
    # image rows 2 and 3 straddle the middle grid row's centre: values 1.75 and 2.25 -> 0.375 and 0.625,
    # halfway between the colour map's anchors at 0.25 / 0.5 and at 0.5 / 0.75
    anchors = [np.array(c) for _, c in COLORMAP]
    assert np.abs(blended[2] - (0.5 * base + 0.25 * (anchors[1] + anchors[2]))).max() <= 1.0
    assert np.abs(blended[3] - (0.5 * base + 0.25 * (anchors[2] + anchors[3]))).max() <= 1.0


def test_heat_maps_of_a_known_operator(trained_run):
    cfg = load_config(os.path.join(trained_run, "config.yaml"))
    model = load_model(cfg, read_checkpoint(os.path.join(trained_run, "model_final.pth"))).eval()
    gate_bias = 0.7
    with torch.no_grad():
        for op in model.heat.operators:
            op.alpha.zero_()                       # no class <-> patch conduction
            op.beta.zero_()                        # no cross-modal patch heat
            last = op.spatial_gate_mlp[-1]
            last.weight.zero_()
            last.bias.fill_(gate_bias)             # G = sigmoid(0.7) on every patch
    batch = {m: torch.randn(2, 3, 64, 32) for m in MODS}
    maps = heat_maps(model, batch)
    grid = model.encoder("RGB").grid_size
    for m in MODS:
        assert maps["gate"][m].shape == (2, *grid)
        assert torch.allclose(maps["gate"][m], torch.full((2, *grid), 1 / (1 + math.exp(-gate_bias))))
        # only diffusion remains: it changes the patches but keeps each channel's mean over the grid
        assert maps["change"][m].shape == (2, *grid) and maps["change"][m].max() > 0
    with torch.no_grad():
        for op in model.heat.operators:
            op.spatial_gate_mlp[-1].bias.fill_(-50.0)   # G = 0: diffusion is switched off too
    maps = heat_maps(model, batch)
    for m in MODS:
        assert maps["change"][m].abs().max() < 1e-5


def test_ranks_and_heatmaps_commands(trained_run, tmp_path):
    config = os.path.join(trained_run, "config.yaml")
    weight = os.path.join(trained_run, "model_final.pth")
    ranks_png = str(tmp_path / "ranks.png")
    visualize.main(["ranks", "--num", "2", "--topk", "3", "--tile-height", "16", "--out", ranks_png,
                   "--config_file", config, "TEST.WEIGHT", weight, "TEST.MISS", "n"])
    image = Image.open(ranks_png)
    # 2 rows x (query + 3 items); frames 8 + 6 wide, 3 x 16 + 6 high; columns as wide as the labels
    gap, col_h, label_h = 6, 48 + 6, 2 * 12 + 2
    assert image.size[1] == gap + 2 * (label_h + col_h + gap)
    columns = image.size[0] - (gap + 18 + 3 * gap)          # = 4 column widths
    assert columns % 4 == 0 and columns // 4 >= 8 + 6
    heat_png = str(tmp_path / "heat.png")
    visualize.main(["heatmaps", "--indices", "0,5", "--tile-height", "32", "--colors", "32", "--per-map",
                   "--out", heat_png, "--config_file", config, "TEST.WEIGHT", weight])
    heat = Image.open(heat_png)
    assert heat.size == (6 + 9 * (16 + 6), 24 + 2 * (12 + 32 + 6) + 6)
    assert heat.mode == "P" and len(heat.getcolors()) <= 32


def test_embedding_command_writes_the_projector_files(trained_run, tmp_path):
    out = str(tmp_path / "projector")
    visualize.main(["embedding", "--num", "5", "--miss", "none,rn", "--tile-height", "8", "--out", out,
                   "--config_file", os.path.join(trained_run, "config.yaml"),
                   "TEST.WEIGHT", os.path.join(trained_run, "model_final.pth")])
    folder = os.path.join(out, "00000", "test_features")
    with open(os.path.join(folder, "metadata.tsv")) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["pid", "camid", "miss", "modalities"]
    assert len(rows) == 1 + 10
    assert [r[2] for r in rows[1:]] == ["none"] * 5 + ["rn"] * 5
    assert {r[3] for r in rows[1:6]} == {"RGB+NI+TI"} and {r[3] for r in rows[6:]} == {"TI"}
    assert rows[1][:2] == rows[6][:2]            # the same samples under both settings
    with open(os.path.join(folder, "tensors.tsv")) as f:
        vectors = [list(map(float, line.split("\t"))) for line in f]
    assert len(vectors) == 10
    assert all(sum(v * v for v in vec) == pytest.approx(1.0, rel=1e-4) for vec in vectors)  # TEST.FEAT_NORM
    assert os.path.isfile(os.path.join(folder, "sprite.png"))
    assert os.path.isfile(os.path.join(out, "projector_config.pbtxt"))


def test_bad_arguments_are_user_errors(trained_run, capsys):
    with pytest.raises(SystemExit) as exc:
        visualize.main(["ranks", "--config_file", os.path.join(trained_run, "config.yaml"),
                       "TEST.WEIGHT", os.path.join(trained_run, "model_final.pth"), "TEST.MISS", "all"])
    assert exc.value.code == 2
    assert "TEST.MISS" in capsys.readouterr().err
