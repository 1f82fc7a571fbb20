"""The spectral part of the heat operator runs in float32 under mixed precision, even on half inputs."""

import pytest
import torch

from model.heat import heat_diffuse


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_is_diffused_in_float32(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5).to(dtype)
    k = torch.rand(2, 8) * 3
    with torch.autocast("cpu", dtype=dtype):
        got = heat_diffuse(x, k, 0.7)
    # a half-precision computation would round every intermediate; this is the float32 result, rounded once
    assert got.dtype == dtype
    assert torch.equal(got, heat_diffuse(x.float(), k, 0.7).to(dtype))
