"""Visualisations: ranked lists on known matches (and re-ranked as evaluation ranks), heat maps of a known
operator, Grad-CAM's gradients against finite differences, colour bars with the ranges shown, and the five
commands end to end on the tiny Synthetic tree (the figures inspected as matplotlib objects)."""

import csv
import math
import os

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from config import load_config
from datasets import make_dataset
from model import load_model, read_checkpoint
from tools import visualize
from tools.visualize import (
    MATCH,
    MISMATCH,
    QUERY,
    grad_cam,
    heat_map_figure,
    heat_maps,
    modality_parts,
    ranking,
    ranks_figure,
    token_gradients,
)
from utils.reranking import re_ranking

MODS = ["RGB", "NI", "TI"]


def _colour_bars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _trained(trained_run):
    cfg = load_config(os.path.join(trained_run, "config.yaml"))
    return cfg, load_model(cfg, read_checkpoint(os.path.join(trained_run, "model_final.pth"))).eval()


def test_ranked_lists_on_known_matches_and_re_ranked_as_evaluation(tiny_root):
    dataset = make_dataset("Synthetic", tiny_root)  # query = gallery: 4 ids x 4 cameras x 2 shots
    pids = sorted({s.pid for s in dataset.query})
    # features: one direction per identity (plus noise), so a query's nearest items are its own identity's
    features = torch.stack([torch.eye(len(pids))[pids.index(s.pid)] for s in dataset.query])
    features = features + 0.01 * torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    picks = [0, 9, 31]
    rows = ranking(dataset, features, picks, topk=8)
    for pick, row in zip(picks, rows):
        # the protocol keeps the 6 same-id items of the 3 other cameras (same id and camera removed)
        assert row["query"] == pick and row["match"] == [True] * 6 + [False] * 2
        assert all(dataset.gallery[g].camid != dataset.query[pick].camid for g in row["index"][:6])
    fig = ranks_figure(dataset, rows, "rt", "a title naming model_final.pth", tile_height=16, image_size=(64, 32))
    axes = np.array(fig.axes).reshape(3, 9)
    assert [to_hex(ax.spines["left"].get_edgecolor()) for ax in axes[0]] == [QUERY] + [MATCH] * 6 + [MISMATCH] * 2
    power = visualize.distance_unit([d for r in rows for d in r["distance"]])
    assert axes[0, 1].get_title().endswith(f"d = {rows[0]['distance'][0] / 10.0 ** power:.3f}")
    image = axes[0, 0].get_images()[0].get_array()
    assert image.shape == (3 * 16, 8, 3) and np.all(image[:16] == 128) and np.all(image[32:] == 128)  # RGB, TI grey
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["query", "same identity", "another identity"]
    assert "model_final.pth" in fig._suptitle.get_text()

    re_ranked = ranking(dataset, features, picks, topk=8, re_rank=(20, 6, 0.3))
    full = re_ranking(features, features, 20, 6, 0.3)                         # what evaluation computes
    for pick, row in zip(picks, re_ranked):
        np.testing.assert_allclose(row["distance"], full[pick][row["index"]])
        assert row["distance"] == sorted(row["distance"])


def test_distances_read_as_plain_numbers():
    assert visualize.distance_unit([0.5, 1.7]) == 0
    assert visualize.distance_unit([2.1e-5, 9.7e-5]) == -5           # shown as 2.100 and 9.700, unit 10^-5
    assert visualize.distance_unit([]) == 0


def test_heat_maps_of_a_known_operator(trained_run):
    _, model = _trained(trained_run)
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
        assert maps["change"][m].shape == (2, *grid) and maps["change"][m].max() > 0
    with torch.no_grad():
        for op in model.heat.operators:
            op.spatial_gate_mlp[-1].bias.fill_(-50.0)   # G = 0: diffusion is switched off too
    maps = heat_maps(model, batch)
    for m in MODS:
        assert maps["change"][m].abs().max() < 1e-5


def test_colour_bars_show_the_ranges_drawn(tiny_root):
    dataset = make_dataset("Synthetic", tiny_root)
    samples = dataset.query[:2]
    gen = torch.Generator().manual_seed(0)
    maps = {"change": {m: 3 + torch.rand(2, 8, 4, generator=gen) for m in MODS},
            "gate": {m: 0.296 + 0.002 * torch.rand(2, 8, 4, generator=gen) for m in MODS}}   # a nearly flat gate
    images = [dataset.read(s) for s in samples]
    fig = heat_map_figure(samples, images, maps, MODS, (16, 32), "title")
    bars = _colour_bars(fig)
    assert len(bars) == 2                                            # one shared scale per kind
    for bar, kind in zip(bars, ("change", "gate")):
        values = torch.stack([maps[kind][m] for m in MODS])
        low, high = bar.get_ylim()                                   # vertical bars: the range on y
        assert (low, high) == pytest.approx((values.min().item(), values.max().item()))
        labels = bar.yaxis.get_major_formatter().format_ticks(bar.yaxis.get_ticklocs())
        assert "e" not in "".join(labels)                            # plain decimals, enough of them:
        assert float(labels[0]) == pytest.approx(low, abs=0.01 * (high - low))        # the ends, to 1% of the range
        assert float(labels[-1]) == pytest.approx(high, abs=0.01 * (high - low))
    per_map = heat_map_figure(samples, images, maps, MODS, (16, 32), "title", per_map=True)
    bars = _colour_bars(per_map)
    assert len(bars) == 2 * 3 * 2                                    # samples x modalities x kinds
    gate = maps["gate"]["RGB"][0]
    assert bars[1].get_ylim() == pytest.approx((gate.min().item(), gate.max().item()))  # its own real range


def test_grad_cam_gradients_are_the_logits(trained_run):
    _, model = _trained(trained_run)
    batch = {m: torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(MODS)}
    tokens, grads, classes = token_gradients(model, batch)
    assert tokens["NI"].shape == grads["NI"].shape == (2, 1 + 32, 128)

    # the directional derivative of the target along a random direction D, by central finite differences,
    # with D injected where the gradients were taken (the last block's norm1 output)
    direction = {m: torch.randn(tokens[m].shape, generator=torch.Generator().manual_seed(9)) for m in MODS}
    stacked = torch.cat([direction[m] for m in MODS])

    def target(eps: float) -> float:
        hook = model.backbone.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: out + eps * stacked)
        try:
            with torch.no_grad():
                features, _ = model.fuse(model.encode(batch))
                logits = sum(model.heads[n](features[n])[1] for n in ("ori", "heat_cls", "heat_pat"))
            return logits.gather(1, classes[:, None]).sum().item()
        finally:
            hook.remove()

    eps = 1e-2
    numeric = (target(eps) - target(-eps)) / (2 * eps)
    analytic = sum((grads[m] * direction[m]).sum().item() for m in MODS)
    assert numeric == pytest.approx(analytic, rel=2e-2)

    # the map: ReLU of the patch tokens weighted by the mean gradient over patches
    toy_tokens = {"RGB": torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, -4.0]]])}     # class token, 2 patches
    toy_grads = {"RGB": torch.tensor([[[5.0, 5.0], [1.0, 0.0], [3.0, 2.0]]])}       # mean over patches (2, 1)
    assert grad_cam(toy_tokens, toy_grads, (2, 1))["RGB"].flatten().tolist() == [4.0, 2.0]  # 2+2, relu(6-4)


def test_modality_parts_regroup_the_test_feature():
    c, m, n = 4, 3, 2
    ori, heat_cls, heat_pat = (torch.randn(n, m * c) for _ in range(3))
    parts = modality_parts(torch.cat([ori, heat_cls, heat_pat], dim=1), m)
    expected = torch.cat([ori[:, c:2 * c], heat_cls[:, c:2 * c], heat_pat[:, c:2 * c]], dim=1)  # NI's blocks
    torch.testing.assert_close(parts[1], torch.nn.functional.normalize(expected, dim=1))


def test_the_figure_commands_end_to_end(trained_run, tmp_path, monkeypatch):
    figures = {}
    save = visualize.save_figure

    def keep(fig, path, dpi=200):
        figures[os.path.basename(path)] = fig
        return save(fig, path, dpi)

    monkeypatch.setattr(visualize, "save_figure", keep)
    config = ["--config_file", os.path.join(trained_run, "config.yaml"),
              "TEST.WEIGHT", os.path.join(trained_run, "model_final.pth")]
    small = ["--dpi", "30", "--tile-height", "16"]
    visualize.main(["ranks", "--num", "2", "--topk", "3", *small, "--out", str(tmp_path / "r.png"), *config,
                    "TEST.MISS", "n", "TEST.RE_RANKING", "True"])
    visualize.main(["heatmaps", "--indices", "5", "--per-map", *small, "--out", str(tmp_path / "h.pdf"), *config])
    visualize.main(["cam", "--num", "2", *small, "--out", str(tmp_path / "c.png"), *config])
    visualize.main(["tsne", "--num", "12", "--perplexity", "3", "--dpi", "30", "--out", str(tmp_path / "t.svg"),
                    *config])
    assert all((tmp_path / name).stat().st_size > 0 for name in ("r.png", "h.pdf", "c.png", "t.svg"))
    assert "re-ranked" in figures["r.png"]._suptitle.get_text()
    assert "model_final.pth" in figures["h.pdf"]._suptitle.get_text()
    assert len(_colour_bars(figures["c.png"])) == 1
    assert len(_colour_bars(figures["h.pdf"])) == 3 * 2                       # per map: modalities x kinds
    legend = figures["t.svg"].axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == MODS


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
    with pytest.raises(SystemExit) as exc:
        visualize.main(["tsne", "--num", "3", "--config_file", os.path.join(trained_run, "config.yaml"),
                        "TEST.WEIGHT", os.path.join(trained_run, "model_final.pth")])
    assert exc.value.code == 2
    assert "t-SNE needs at least 4 samples" in capsys.readouterr().err
