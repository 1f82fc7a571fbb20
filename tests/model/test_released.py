"""The authors' released checkpoint format: conversion to our model, and the errors that say which key to set.

Small CLIP towers (ViT-Mini-8 sizes) keep these fast; the ViT-B/16 end-to-end run through test.py is in
tests/processor/test_released_checkpoint.py.
"""

import pytest
import torch

from model import make_model
from model.released import convert_released_state_dict, is_released_state_dict, stencil_adjacency
from tests.conftest import tiny_config
from tests.model.released_reference import dense_adjacency, released_features, released_state_dict
from utils.errors import UserError

GRID = (8, 4)  # ViT-Mini-8 (patch 8) at the Synthetic config's 64 x 32


def _model(tmp_path, *opts):
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"), "MODEL.HEAT.DIFFUSION", "stencil", *opts)
    return make_model(cfg, num_classes=5)


def _released(vehicle: bool = False, grid=GRID, seed: int = 0):
    return released_state_dict(width=128, layers=4, heads=4, patch=8, grid=grid, num_classes=5, vehicle=vehicle,
                               seed=seed)


@pytest.mark.parametrize("vehicle, opts", [
    (False, []),
    (True, ["MODEL.MODALITY_HEADS", "True"]),
    (False, ["MODEL.SHARED_BACKBONE", "False", "MODEL.HEAT.SHARE_OPERATOR", "False"]),
])
def test_converted_checkpoint_computes_the_released_model(tmp_path, vehicle, opts):
    state, visual = _released(vehicle)
    assert is_released_state_dict(state)
    model = _model(tmp_path, *opts)
    converted = convert_released_state_dict({"module." + k: v for k, v in state.items()}, model)  # DDP prefix
    model.load_state_dict(converted, strict=True)
    model.eval()
    gen = torch.Generator().manual_seed(3)
    images = {m: torch.randn(3, 3, 64, 32, generator=gen) for m in ("RGB", "NI", "TI")}
    with torch.no_grad():
        ours = model(images)
        # a presence mask with nothing missing (training for missing modalities) changes no bit
        assert torch.equal(model({**images, "present": {m: torch.ones(3, dtype=torch.bool) for m in images}}), ours)
    ref = released_features(state, visual, images)
    assert ours.shape == ref.shape == (3, 9 * 128)
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5
    # the heads carry their weights and BatchNorm statistics over
    for theirs, head in (("bottleneck", "ori"), ("bn_heat_cls", "heat_cls"), ("bn_heat_pat", "heat_pat")):
        torch.testing.assert_close(model.heads[head].bn.running_var, state[f"{theirs}.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(model.heads["heat_pat"].classifier.weight, state["fc_heat_pat.weight"], rtol=0, atol=0)
    if vehicle:
        for modality, s in (("RGB", "r"), ("NI", "n"), ("TI", "t")):
            torch.testing.assert_close(model.heads[modality].classifier.weight, state[f"fc_{s}.weight"], rtol=0,
                                       atol=0)
            torch.testing.assert_close(model.heads[modality].bn.running_mean, state[f"bn_{s}.running_mean"], rtol=0,
                                       atol=0)


def test_our_stencil_is_the_released_adjacency():
    for h, w in ((16, 8), (8, 16), (3, 5)):
        torch.testing.assert_close(stencil_adjacency(h, w), dense_adjacency(h, w), rtol=0, atol=1e-7)


def test_dct_diffusion_asks_for_the_stencil(tmp_path):
    state, _ = _released()
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(UserError, match="MODEL.HEAT.DIFFUSION stencil"):
        convert_released_state_dict(state, make_model(cfg, num_classes=5), "817.pth")


def test_per_modality_heads_ask_for_the_matching_direct_setting(tmp_path):
    vehicle, _ = _released(vehicle=True)
    with pytest.raises(UserError, match="vehicle checkpoints.*set MODEL.MODALITY_HEADS True"):
        convert_released_state_dict(vehicle, _model(tmp_path), "872.pth")
    person, _ = _released(vehicle=False)
    with pytest.raises(UserError, match="set MODEL.MODALITY_HEADS False"):
        convert_released_state_dict(person, _model(tmp_path, "MODEL.MODALITY_HEADS", "True"), "817.pth")


def test_token_grid_must_match_the_input_size(tmp_path):
    transposed, _ = _released(grid=(4, 8))  # a "vehicle" grid, configured as persons
    message = r"trained on a 4x8 token grid \(input \[32, 64\]\).*INPUT.SIZE_TRAIN gives 8x4"
    with pytest.raises(UserError, match=message):
        convert_released_state_dict(transposed, _model(tmp_path), "ckpt.pth")
    state, _ = _released()
    square = _model(tmp_path, "INPUT.SIZE_TRAIN", "[32, 32]", "INPUT.SIZE_TEST", "[32, 32]")
    with pytest.raises(UserError, match="grid of 32 tokens; INPUT.SIZE_TRAIN gives 4x4"):
        convert_released_state_dict(state, square, "ckpt.pth")


def test_unknown_keys_are_refused(tmp_path):
    state, _ = _released()
    state["heat.heat_conductor.temperature"] = torch.zeros(1)
    with pytest.raises(UserError, match="1 keys unknown.*heat.heat_conductor.temperature"):
        convert_released_state_dict(state, _model(tmp_path), "ckpt.pth")
