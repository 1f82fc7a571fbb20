"""The CPU fast path is applied by the runner, on CPU only: the model package builds timm's own modules, a GPU
(faked) or MODEL.ONEDNN False build keeps them, and the swap changes neither parameters nor outputs."""

import torch
from timm.layers import Attention, Mlp
from torch._subclasses.fake_tensor import FakeTensorMode

import accel
from accel.attention import FastAttention
from accel.onednn import OneDNNLinear, QuickGELUMlp
from model import make_model
from processor.device import prepare_model
from tests.conftest import tiny_config

ACCEL_TYPES = (OneDNNLinear, QuickGELUMlp, FastAttention)


def _types(model: torch.nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


def test_only_the_cpu_runner_swaps_modules(tiny_root, tmp_path, monkeypatch):
    tuned = []
    monkeypatch.setattr(accel, "tune_glibc_malloc", lambda: tuned.append(True))
    cfg = tiny_config(tiny_root, str(tmp_path))
    plain = make_model(cfg, 8)
    assert not _types(plain) & set(ACCEL_TYPES) and {Attention, Mlp} <= _types(plain)
    assert "FastAttention" not in str(plain) and "OneDNN" not in str(plain)

    gpu = make_model(cfg, 8)
    with FakeTensorMode(allow_non_fake_inputs=True):  # a CUDA build, without a GPU
        gpu = prepare_model(gpu, cfg, torch.device("cuda"))
        assert next(gpu.parameters()).device.type == "cuda"
    assert not _types(gpu) & set(ACCEL_TYPES) and not tuned

    no_onednn = tiny_config(tiny_root, str(tmp_path), "MODEL.ONEDNN", "False")
    off = prepare_model(make_model(no_onednn, 8), no_onednn, torch.device("cpu"))
    assert not _types(off) & set(ACCEL_TYPES) and tuned == [True]   # the allocator is tuned on CPU regardless

    torch.manual_seed(0)
    stock = make_model(cfg, 8).eval()
    fast = prepare_model(make_model(cfg, 8), cfg, torch.device("cpu")).eval()
    fast.load_state_dict(stock.state_dict())
    if accel.onednn_available():
        assert set(ACCEL_TYPES) & _types(fast)
    assert fast.state_dict().keys() == stock.state_dict().keys()
    batch = {m: torch.randn(2, 3, 64, 32) for m in cfg.MODEL.MODALITIES}
    with torch.no_grad():
        torch.testing.assert_close(fast(batch), stock(batch), rtol=1e-4, atol=1e-5)
