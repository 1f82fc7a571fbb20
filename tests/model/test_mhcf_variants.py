"""MODEL.SHARED_BACKBONE False (one encoder per modality) and MODEL.MODALITY_HEADS True (per-modality heads) train."""

import torch

from loss import make_loss
from model import ClipViT, make_model
from solver import make_optimizer
from tests.conftest import tiny_config


def test_separate_encoders_and_per_modality_heads_train(tmp_path):
    cfg = tiny_config(str(tmp_path), str(tmp_path / "out"), "MODEL.SHARED_BACKBONE", "False",
                      "MODEL.MODALITY_HEADS", "True", "SOLVER.BASE_LR", "0.001")
    torch.manual_seed(0)
    model = make_model(cfg, num_classes=4).train()
    modalities = list(cfg.MODEL.MODALITIES)
    assert set(model.backbone) == set(modalities)
    assert all(isinstance(model.encoder(m), ClipViT) for m in modalities)
    pointers = [{p.data_ptr() for p in model.encoder(m).parameters()} for m in modalities]
    assert all(not (a & b) for i, a in enumerate(pointers) for b in pointers[i + 1:])  # nothing shared

    gen = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(8, 3, *cfg.INPUT.SIZE_TRAIN, generator=gen) for m in modalities}
    batch["pid"] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    outputs = model(batch)
    for m in modalities:  # per-modality logits come from that modality's own class token
        assert outputs["logits"][m].shape == (8, 4)
        torch.testing.assert_close(outputs["features"][m], model.encoder(m)(batch[m])[:, 0])
    losses = make_loss(cfg, 4)(outputs, batch["pid"])
    assert {f"id/{m}" for m in modalities} <= set(losses)
    before = {m: model.encoder(m).patch_embed.proj.weight.detach().clone() for m in modalities}
    heads_before = {m: model.heads[m].classifier.weight.detach().clone() for m in modalities}
    optimizer = make_optimizer(cfg, model)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    for m in modalities:
        assert model.heads[m].classifier.weight.grad.abs().sum() > 0
    optimizer.step()
    steps = {m: model.encoder(m).patch_embed.proj.weight.detach() - before[m] for m in modalities}
    for m in modalities:
        assert steps[m].abs().sum() > 0 and not torch.equal(model.heads[m].classifier.weight, heads_before[m])
    assert not torch.allclose(steps["RGB"], steps["NI"])  # each encoder learns from its own modality
