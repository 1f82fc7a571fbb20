import pytest
import torch

from loss import make_loss
from model import make_model
from tests.conftest import tiny_config


def _batch(cfg, b=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.INPUT.SIZE_TRAIN
    batch = {m: torch.randn(b, 3, h, w, generator=gen) for m in cfg.MODEL.MODALITIES}
    batch["pid"] = torch.tensor([0, 0, 1, 1][:b])
    return batch


@pytest.mark.parametrize("opts", [
    [],
    ["MODEL.HEAT.DIFFUSION", "stencil"],
    ["MODEL.MODALITY_HEADS", "True", "MODEL.SHARED_BACKBONE", "False"],
    ["MODEL.HEAT.SHARE_OPERATOR", "False", "MODEL.HEAT.NUM_CYCLES", "2"],
])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, opts):
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"), *opts)
    torch.manual_seed(0)
    model = make_model(cfg, num_classes=5)
    model.train()
    batch = _batch(cfg)
    outputs = model(batch)
    heads = {"ori", "heat_cls", "heat_pat"} | (set(cfg.MODEL.MODALITIES) if cfg.MODEL.MODALITY_HEADS else set())
    assert set(outputs["logits"]) == heads and set(outputs["features"]) == heads
    losses = make_loss(cfg, 5)(outputs, batch["pid"])
    assert set(losses) == {f"{kind}/{h}" for kind in ("id", "triplet") for h in heads}
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_eval_returns_the_test_feature(tmp_path, neck_feat):
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"), "TEST.NECK_FEAT", neck_feat)
    model = make_model(cfg, num_classes=5).eval()
    batch = _batch(cfg)
    with torch.no_grad():
        feat = model(batch)
        features, _ = model.fuse(model.encode(batch))
    dim = model.encoder("RGB").embed_dim
    assert feat.shape == (4, 3 * 3 * dim) == (4, model.feature_dim)
    parts = [features[n] for n in ("ori", "heat_cls", "heat_pat")]
    if neck_feat == "after":
        parts = [model.heads[n].bn(p) for n, p in zip(("ori", "heat_cls", "heat_pat"), parts)]
    torch.testing.assert_close(feat, torch.cat(parts, 1))
    # ori is the backbone class tokens of the modalities, in MODEL.MODALITIES order
    tokens = model.encode(batch)
    torch.testing.assert_close(features["ori"][:, dim:2 * dim], tokens["NI"][:, 0])


def test_shared_backbone_batches_modalities_like_separate_calls(tmp_path):
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"))
    model = make_model(cfg, num_classes=5).eval()
    batch = _batch(cfg)
    with torch.no_grad():
        tokens = model.encode(batch)
        for m in cfg.MODEL.MODALITIES:
            torch.testing.assert_close(tokens[m], model.backbone(batch[m]), atol=1e-5, rtol=1e-5)
