"""The TEST.MODAL_BIAS hook: a training run logs the modal-bias figures to TensorBoard at every evaluation."""

import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_training_logs_modal_bias_scalars(trained_run):
    events = EventAccumulator(os.path.join(trained_run, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("bias/summary/fused", "bias/retrieval/RGB/mAP", "bias/retrieval/NI+TI/Rank-1",
                "bias/gap/class_token/backbone/sample/mean", "bias/gap/class_token/cycle_3/centroid/RGB-NI",
                "bias/shares/energy/test/TI", "bias/shares/variance/ori/NI",
                "bias/gap/patch_mean/heat/modality_share", "bias/heat/edges/TI->RGB/spatial_gate",
                "bias/heat/parameters/tau"):
        assert tag in tags
    fused = events.Scalars("bias/summary/fused")
    assert [e.step for e in fused] == [1, 2]    # SOLVER.EVAL_PERIOD 1, and the final epoch
    # the fused figure is the mAP of the same evaluation (same model, same test set)
    assert [e.value for e in fused] == pytest.approx([e.value for e in events.Scalars("eval/mAP")], abs=1e-4)
    with open(os.path.join(trained_run, "test_results.json")) as f:
        assert fused[-1].value == pytest.approx(json.load(f)["mAP"], abs=1e-4)
