"""The TEST.MODAL_BIAS hook: a training run logs the modal-bias figures to TensorBoard at evaluation."""

import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import processor
from tests.conftest import tiny_config


def test_training_logs_modal_bias_scalars(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path), "SOLVER.MAX_EPOCHS", "1", "TEST.MODAL_BIAS", "True")
    record = processor.train(cfg)
    events = EventAccumulator(os.path.join(str(tmp_path), "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("bias/summary/fused", "bias/retrieval/RGB/mAP", "bias/retrieval/NI+TI/Rank-1",
                "bias/gap/class_token/backbone/sample/mean", "bias/gap/class_token/cycle_3/centroid/RGB-NI",
                "bias/shares/energy/test/TI", "bias/shares/variance/ori/NI",
                "bias/gap/patch_mean/heat/modality_share", "bias/heat/edges/TI->RGB/spatial_gate",
                "bias/heat/parameters/tau"):
        assert tag in tags
    fused = events.Scalars("bias/summary/fused")
    assert [e.step for e in fused] == [1]
    # the fused figure is the mAP of the final evaluation (same model, same test set)
    assert fused[0].value == pytest.approx(events.Scalars("eval/mAP")[0].value, abs=1e-4)
    assert fused[0].value == pytest.approx(record["mAP"], abs=1e-4)
