"""The training engine: exact resumption after SIGKILL, non-finite losses, mixed precision, TensorBoard."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from config import load_config
from model import read_checkpoint
from processor.cli import run_cli
from processor.distributed import DistInfo
from processor.trainer import Trainer, train
from tests.conftest import REPO, kept_logging, tiny_config

# a smaller input (4 x 2 patches) keeps each epoch well under a second; drop path makes the model draw
# from the global random stream, which the loaders and evaluation between epochs must leave alone
FAST = ["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]", "INPUT.PADDING", "2",
        "MODEL.DROP_PATH", "0.2", "SOLVER.MAX_EPOCHS", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def restore_logging():
    with kept_logging():
        yield


def _weights(path: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state


def _kill_during_epoch(config_file: str, output_dir: str, epoch: int, timeout: float = 120) -> None:
    """Run train.py and SIGKILL it as soon as its log shows the first iteration of ``epoch``."""
    log = os.path.join(output_dir, "train.log")
    proc = subprocess.Popen([sys.executable, "train.py", "--config_file", config_file], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.time() + timeout
    try:
        while True:
            if os.path.exists(log):
                with open(log) as f:
                    if f"epoch {epoch} iter 1/" in f.read():
                        break
            if proc.poll() is not None:
                pytest.fail(f"train.py ended before epoch {epoch}: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail(f"train.py did not reach epoch {epoch} in {timeout} s")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize(("workers", "eval_period"), [(0, 1), (2, 0)])
def test_resume_after_sigkill_equals_uninterrupted_run(tiny_root, tmp_path, workers, eval_period, restore_logging):
    """Killed with SIGKILL in epoch 2 and resumed: bit-identical final weights. Main-process loading with
    an evaluation after each epoch, and persistent worker processes (created at the first epoch of each
    run, so at different epochs in the two runs)."""
    opts = [*FAST, "DATALOADER.NUM_WORKERS", str(workers), "SOLVER.EVAL_PERIOD", str(eval_period)]
    full = tiny_config(tiny_root, str(tmp_path / "full"), *opts)
    train(full)

    killed_dir = str(tmp_path / "killed")
    config_file = str(tmp_path / "killed.yaml")
    with open(config_file, "w") as f:
        f.write(tiny_config(tiny_root, killed_dir, *opts).dump())
    _kill_during_epoch(config_file, killed_dir, epoch=2)
    first = read_checkpoint(os.path.join(killed_dir, "last.pth"))
    assert first.epoch == 1, "killed too late"
    assert not os.path.exists(os.path.join(killed_dir, "model_final.pth"))
    train(tiny_config(tiny_root, killed_dir, *opts, "SOLVER.RESUME", "True"))

    uninterrupted = _weights(os.path.join(full.OUTPUT_DIR, "model_final.pth"))
    resumed = _weights(os.path.join(killed_dir, "model_final.pth"))
    assert uninterrupted.keys() == resumed.keys()
    different = [k for k in uninterrupted if not torch.equal(uninterrupted[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # and the resumed run did train: its weights moved away from the first epoch's
    assert not torch.equal(first.state["heads.ori.classifier.weight"], resumed["heads.ori.classifier.weight"])
    # the best epoch chosen on the test set survives the interruption (epoch 1's evaluation is in last.pth)
    records = []
    for folder in (full.OUTPUT_DIR, killed_dir):
        with open(os.path.join(folder, "test_results.json")) as f:
            records.append(json.load(f).get("best_epoch_chosen_on_test_set"))
    assert records[0] == records[1] and (records[0] is None) == (eval_period == 0)
    assert (first.training["best_on_test"] is None) == (eval_period == 0)


def _config_file(tmp_path, cfg) -> str:
    path = str(tmp_path / "config.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path


def test_non_finite_loss_stops_with_one_line(tiny_root, tmp_path, capsys, restore_logging):
    """Epoch 1 trains at 1e30 * 1e-33 = 1e-3; epoch 2 at ~1e30, so its second step (of 4) sees exploded
    weights. The loss reaches the host only every SOLVER.LOG_PERIOD steps (here: once, at the end of the
    epoch), yet the message names the step where it went wrong, before last.pth could be overwritten."""
    out = str(tmp_path / "run")
    cfg = tiny_config(tiny_root, out, *FAST, "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_FACTOR", "1e-33",
                      "SOLVER.LOG_PERIOD", "100")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, "train", ["--config_file", _config_file(tmp_path, cfg)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "non-finite loss" in err and "at epoch 2, iteration 2/4;" in err and "last.pth" in err
    last = read_checkpoint(os.path.join(out, "last.pth"))
    assert last.epoch == 1 and all(torch.isfinite(v).all() for v in last.state.values() if v.is_floating_point())
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_step(tiny_root, tmp_path, amp, restore_logging):
    """Optimisation steps under autocast (CPU fp16 is slow, so small ones): finite losses, every trainable
    parameter updated, gradient scaling only for fp16 (where steps with overflowing gradients are skipped
    while the scale comes down)."""
    cfg = tiny_config(tiny_root, str(tmp_path), *FAST, "SOLVER.AMP", amp, "SOLVER.IMS_PER_BATCH", "8")
    trainer = Trainer(cfg, DistInfo())
    trainer.loader.sampler.set_epoch(1)
    trainer.model.train()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    batch = next(iter(trainer.loader))
    dtypes = []
    trainer.model.heads["ori"].classifier.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    for _ in range(4):
        values = trainer.train_step(batch)
        assert all(math.isfinite(float(v)) for v in values.values())
        assert dtypes.pop() == (torch.float16 if amp == "fp16" else torch.bfloat16)
        unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])]
        if not unchanged:
            break
        assert amp == "fp16" and len(unchanged) == len(before)  # a skipped step leaves every parameter
    assert not unchanged
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    trainer.writer.close()


def test_run_artifacts_and_tensorboard(trained_run):
    out = trained_run
    files = set(os.listdir(out))
    assert {"last.pth", "model_epoch001.pth", "model_epoch002.pth", "model_final.pth", "train.log",
            "config.yaml", "test_results.json", "tensorboard"} <= files
    assert not [f for f in files if f.endswith(".tmp")]              # the stale temporary was removed
    cfg = load_config(os.path.join(out, "config.yaml"))
    last = read_checkpoint(os.path.join(out, "last.pth"))
    assert set(last.training) == {"optimizer", "scheduler", "scaler", "rng", "best_on_test"}
    assert last.config == cfg.dump()
    assert set(last.training["rng"]) >= {"python", "numpy", "torch"} and last.epoch == 2
    assert last.training["best_on_test"]["epoch"] == 1      # epoch 2's evaluation is the final one, after
    assert read_checkpoint(os.path.join(out, "model_epoch001.pth")).epoch == 1
    with open(os.path.join(out, "test_results.json")) as f:
        record = json.load(f)
    assert record["epoch"] == 2 and 0 <= record["mAP"] <= 100
    with open(os.path.join(out, "train.log")) as f:
        log = f.read()
    assert "chosen on the test set" in log and "final epoch 2" in log

    events = EventAccumulator(os.path.join(out, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/acc", "train/lr", "loss/id/ori", "loss/triplet/heat_cls",
                "eval/mAP", "eval/Rank-1", "eval/Rank-5", "eval/Rank-10", "eval/mINP",
                "heat/alpha", "heat/beta", "heat/tau"}
    edges = [("RGB", "NI"), ("NI", "TI"), ("TI", "RGB")]
    expected |= {f"heat/{s}->{t}/{name}" for s, t in edges for name in ("kappa", "gate", "spatial_gate")}
    expected |= {f"heat/conductivity/{m}" for m in ("RGB", "NI", "TI")}
    assert expected <= tags, sorted(expected - tags)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("eval/mAP")] == [1, 2]
    assert events.Scalars("eval/mAP")[-1].value == pytest.approx(record["mAP"], rel=1e-5)
    # SOLVER.EVAL_PERIOD: the evaluated epoch of highest mAP (a tie to the later one), labelled, beside the final
    maps = {e.step: e.value for e in events.Scalars("eval/mAP")}
    best = record["best_epoch_chosen_on_test_set"]
    assert best["epoch"] == (2 if maps[2] >= maps[1] else 1)
    assert best["mAP"] == pytest.approx(maps[best["epoch"]], rel=1e-5)
    assert set(best) == {"epoch", "mAP", "mINP", "Rank-1", "Rank-5", "Rank-10"}
    if best["epoch"] == 2:
        assert {k: best[k] for k in best if k != "epoch"} == {k: record[k] for k in best if k != "epoch"}


def test_fp16_restores_a_checkpoint_without_gradient_scale(trained_run, tmp_path, restore_logging):
    """last.pth of a run without fp16 holds an empty scaler state: an fp16 trainer restoring it starts from the
    initial scale (loading it crashed). Whether a resume may switch SOLVER.AMP at all is config/validate.py's
    policy; this is the restore itself."""
    checkpoint = read_checkpoint(os.path.join(trained_run, "last.pth"))
    assert checkpoint.training["scaler"] == {}
    cfg = load_config(os.path.join(trained_run, "config.yaml"), ["OUTPUT_DIR", str(tmp_path), "SOLVER.AMP", "fp16",
                                                                "SOLVER.EVAL_PERIOD", "0", "TEST.MODAL_BIAS", "False"])
    trainer = Trainer(cfg, DistInfo())
    assert trainer._restore(checkpoint) == 2
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 2.0**16
    trainer.writer.close()


def test_no_heat_ablation_trains_as_the_concatenation_baseline(tiny_root, tmp_path, restore_logging):
    """MODEL.HEAT.NUM_CYCLES 0: no operator; heat_cls is the backbone's class tokens (ori), heat_pat their patch
    means; every trainable parameter learns, and the epoch's statistics have no heat entries to log."""
    cfg = tiny_config(tiny_root, str(tmp_path), *FAST, "MODEL.HEAT.NUM_CYCLES", "0")
    trainer = Trainer(cfg, DistInfo())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train_epoch(1)
    assert not trainer.model.heat.operators and not list(trainer.model.heat.parameters())
    assert [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p, before[n])] == []
    trainer.model.eval()
    batch = trainer.to_device(next(iter(trainer.loader)))
    with torch.no_grad():
        features, _ = trainer.model.fuse(trainer.model.encode(batch))
    assert torch.equal(features["heat_cls"], features["ori"])
    trainer.writer.close()
