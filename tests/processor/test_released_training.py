"""Training with configs/<DATASET>/MHCF_released.yml: one step equals the authors' released training step
(transcribed independently in tests/model/released_reference.py) in float64, and every benchmark's config
trains on a miniature tree of its published layout."""

import os

import pytest
import torch

from config import load_config
from model import read_checkpoint
from model.released import convert_released_state_dict
from processor.distributed import DistInfo
from processor.trainer import Trainer
from tests.conftest import REPO, kept_logging
from tests.datasets.test_benchmarks import make_market, make_msvr310, make_rgbnt100, make_rgbnt201
from tests.model.released_reference import MODALITIES, authors_lr, released_state_dict, released_training_step

pytestmark = pytest.mark.usefixtures("one_thread")

PERSONS, VEHICLES = ("RGBNT201", "Market-MM"), ("RGBNT100", "MSVR310")


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> str:
    """A root holding the four benchmarks' miniature trees (tests/datasets/test_benchmarks.py)."""
    root = str(tmp_path_factory.mktemp("benchmarks"))
    make_rgbnt201(root)
    make_market(root, "Market1501-MM")
    make_rgbnt100(root)
    make_msvr310(root)
    return root


def _trainer(name: str, root: str, out: str, *opts: str) -> Trainer:
    """A trainer of the benchmark's MHCF_released.yml, shrunk by overrides: random ViT-Mini-8 at 32 x 16
    (persons) or 16 x 32 (vehicles), a batch of 2 identities x 2 instances, float32, on CPU."""
    size = "[32, 16]" if name in PERSONS else "[16, 32]"
    cfg = load_config(os.path.join(REPO, "configs", name, "MHCF_released.yml"), [
        "DATASETS.ROOT_DIR", root, "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", "MODEL.NAME", "ViT-Mini-8",
        "MODEL.PRETRAIN_PATH", "", "INPUT.SIZE_TRAIN", size, "INPUT.SIZE_TEST", size, "INPUT.PADDING", "2",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCE", "2",
        "SOLVER.AMP", "off", *opts])
    return Trainer(cfg, DistInfo())


def test_every_released_config_trains_one_iteration(trees, tmp_path):
    """Each benchmark's recipe, as configured apart from the size of the model, data and batch: the authors'
    operator and heads, one P x K iteration at the authors' epoch-1 rates, every trainable tensor updated.
    (Mixed precision, fp16 in these configs, is tested in test_trainer.py.)"""
    for name in (*PERSONS, *VEHICLES):
        with kept_logging():
            trainer = _trainer(name, trees, str(tmp_path / name))
            model = trainer.model
            assert model.heat.operators[0].diffusion == "stencil" and model.heat.num_cycles == 3
            heads = {"ori", "heat_cls", "heat_pat", *(MODALITIES if name in VEHICLES else ())}
            assert set(model.heads) == heads
            assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(
                [authors_lr(1, 3.5e-5, 3.5e-5), authors_lr(1, 7e-5, 3.5e-5)], rel=1e-9)
            assert len(trainer.loader) == 1
            before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            batch = next(iter(trainer.loader))
            stats = trainer.train_step(batch)
            trainer.writer.close()
        values = {k: float(v) for k, v in stats.items() if not k.startswith("heat/") and k != "acc"}
        assert set(values) == {"loss", *(f"{kind}/{h}" for kind in ("id", "triplet") for h in heads)}
        assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
        assert values["loss"] == pytest.approx(sum(v for k, v in values.items() if k != "loss"), rel=1e-6)
        unchanged = [n for n, p in model.named_parameters() if n in before and torch.equal(p, before[n])]
        assert not unchanged, (name, unchanged[:5])


@pytest.mark.parametrize("name", ["RGBNT201", "RGBNT100"])
def test_one_step_equals_the_released_training_step(name, trees, tmp_path):
    """Random weights in the released format, read by the checkpoint reader; one step of the trainer in float64
    on a fixed batch against the transcription of the authors' step: the loss to 1e-10 relative, every
    gradient, updated parameter and BatchNorm statistic to 1e-8 (relative to the tensor's largest value)."""
    with kept_logging():
        trainer = _trainer(name, trees, str(tmp_path / "out"))
    vehicle = name in VEHICLES
    model = trainer.model
    grid = model.heat.operators[0].grid
    state, visual = released_state_dict(width=128, layers=4, heads=4, patch=8, grid=grid,
                                        num_classes=trainer.num_classes, vehicle=vehicle, seed=3)
    path = str(tmp_path / "released.pth")
    torch.save(state, path)
    read_checkpoint(path).load_into(model)
    model.double()

    gen = torch.Generator().manual_seed(4)
    height, width = trainer.cfg.INPUT.SIZE_TRAIN
    images = {m: torch.randn(6, 3, height, width, generator=gen, dtype=torch.float64) for m in MODALITIES}
    pids = torch.tensor([0, 0, 1, 1, 1, 0]) if trainer.num_classes == 2 else torch.tensor([0, 0, 2, 2, 1, 1])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.to_device = dict   # the images are already normalised, in float64: nothing to upload or normalise
    loss_value = float(trainer.train_step({**images, "pid": pids})["loss"])
    trainer.writer.close()

    loss, expected = released_training_step(state, visual, images, pids, vehicle=vehicle,
                                            margin=trainer.cfg.SOLVER.MARGIN)
    assert loss_value == pytest.approx(loss.item(), rel=1e-10, abs=0)
    params = {k: v for k, v in expected.items() if not k.startswith("grad/")}
    grads = {k[len("grad/"):]: v for k, v in expected.items() if k.startswith("grad/")}
    expected_state = convert_released_state_dict(params, model)
    expected_grads = convert_released_state_dict({**params, **grads}, model)
    ours = model.state_dict()
    assert set(expected_state) == set(ours)
    for key, value in expected_state.items():
        scale = value.double().abs().max()
        assert (ours[key].double() - value.double()).abs().max() <= 1e-8 * scale, key
    trained = 0
    for key, p in model.named_parameters():
        if p.grad is None:
            continue
        trained += 1
        assert not torch.equal(p, before[key]), key
        scale = expected_grads[key].abs().max()
        assert (p.grad - expected_grads[key]).abs().max() <= 1e-8 * scale, key
    assert trained == sum(p.requires_grad for p in model.parameters())
