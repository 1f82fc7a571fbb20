"""The benchmark's baseline (the authors' structure) computes what our released-variant operator computes."""

import torch

from model.heat import HeatConductionOperator, stencil_average
from tools.reference_mhcf import HeatOperator, ReferenceMHCF, dense_adjacency


def test_dense_adjacency_is_the_sparse_stencil():
    x = torch.randn(2, 5, 3, 4)                                          # (B, H, W, C)
    dense = dense_adjacency(5, 3) @ x.reshape(2, 15, 4)                  # (B, N, C)
    torch.testing.assert_close(dense.reshape(2, 5, 3, 4), stencil_average(x))


def test_reference_operator_equals_ours_with_the_same_weights():
    torch.manual_seed(0)
    dim, grid = 16, (4, 2)
    theirs, ours = HeatOperator(dim, grid), HeatConductionOperator(dim, grid, diffusion="stencil")
    with torch.no_grad():
        for name_t, name_o in (("conductivity_predictor", "conductivity_mlp"),
                               ("cls_patch_gate", "interaction_gate_mlp"), ("patch_spatial_gate", "spatial_gate_mlp")):
            for lt, lo in zip(getattr(theirs, name_t), getattr(ours, name_o)):
                if isinstance(lt, torch.nn.Linear):
                    lo.weight.copy_(lt.weight)
                    lo.bias.copy_(lt.bias)
        ours.alpha.copy_(theirs.alpha_cls)
        ours.beta.copy_(theirs.beta)
    src_cls, tgt_cls = torch.randn(3, dim), torch.randn(3, dim)
    src_pat, tgt_pat = torch.randn(3, 8, dim), torch.randn(3, 8, dim)
    cls_t, pat_t, _ = theirs(src_cls[:, None], src_pat, tgt_cls[:, None], tgt_pat)
    cls_o, pat_o, _ = ours(src_cls, src_pat, tgt_cls, tgt_pat)
    torch.testing.assert_close(pat_o, pat_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_o, cls_t[:, 0], rtol=1e-5, atol=1e-5)


def test_reference_model_outputs():
    model = ReferenceMHCF(num_classes=5, img_size=(32, 16), patch=8, width=32, layers=2, heads=2).train()
    batch = {m: torch.randn(4, 3, 32, 16) for m in ("RGB", "NI", "TI")}
    logits, features = model(batch)
    assert [tuple(z.shape) for z in logits] == [(4, 5)] * 3
    assert [tuple(f.shape) for f in features] == [(4, 96)] * 3
    model.eval()
    with torch.no_grad():
        test = model(batch)
    assert test.shape == (4, 288)
    torch.testing.assert_close(test[:, :96], torch.cat([model.image_encoder(batch[m])[1][:, 0]
                                                        for m in ("RGB", "NI", "TI")], 1))
