"""The real training step and ``Trainer.train_epoch`` on CUDA, without a GPU: fake CUDA tensors
(``FakeTensorMode``: shapes, dtypes and devices, no data) with CUDA's autocast rules.

An audit mode above the fake mode sees every operation: a value read back to the host (a sync), a copy from
the host (an upload) and any other operation that takes or makes a CPU tensor. Per model variant and
precision it asserts: no device mismatch (the fake mode raises on one), no CPU tensor in the step, uploads
only of the loader's batch and non-blocking, no sync except at a SOLVER.LOG_PERIOD boundary, autocast active
on the GPU, the loss handed to backward a float32 CUDA scalar, TF32 as configured (never in the triplet
mining's distances).

Fake tensors cannot run backward (autograd's engine needs a CUDA context): ``Tensor.backward`` is replaced
by a stub that records the loss and gives every trainable parameter a gradient like the real one (same
shape, dtype and device), so that the gradient scaler and the fused optimizer step after it run for real.
"""

import copy
import unittest.mock
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import processor.trainer as trainer_module
from processor.distributed import DistInfo
from processor.trainer import Trainer
from tests.conftest import kept_logging, tiny_config

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)


class StepAudit(TorchDispatchMode):
    """Records, with the iteration they happen in, syncs, uploads and every other operation that takes or
    makes a CPU tensor; a sync returns a placeholder value (the fake tensor has none).

    Work on the loader's host tensors alone (real CPU tensors in, e.g. the missing-modality masks) is the host's
    own: it runs for real, its values are read without a wait for the device, and it is recorded apart
    (``host_ops``)."""

    def __init__(self):
        super().__init__()
        self.iteration = 0
        self.in_step = False    # inside Trainer.train_step
        self.syncs: list[tuple[int, bool]] = []
        self.uploads: list[tuple[int, torch.dtype, bool]] = []
        self.cpu_ops: list[tuple[int, str]] = []
        self.host_ops: list[tuple[int, str]] = []
        self.matmuls: list[tuple[torch.dtype, bool]] = []   # (output dtype, TF32 allowed)
        self.gram: list[tuple[torch.dtype, bool]] = []      # the same, of the (N, D) @ (D, N)-view products

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:   # a tensor's .device asked: no operation
            return func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if (inputs and all(type(t) is torch.Tensor and t.device.type == "cpu" for t in inputs)
                and torch.device(kwargs.get("device") or "cpu").type == "cpu"):
            self.host_ops.append((self.iteration, str(func)))
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            self.syncs.append((self.iteration, self.in_step))
            dtype = inputs[0].dtype
            return True if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in inputs + outputs}
        if func in (aten._to_copy.default, aten.copy_.default) and devices == {"cpu", "cuda"}:
            source = inputs[0] if func is aten._to_copy.default else inputs[1]
            if source.device.type == "cpu":
                self.uploads.append((self.iteration, source.dtype, bool(kwargs.get("non_blocking", False))))
            else:
                self.syncs.append((self.iteration, self.in_step))
        elif "cpu" in devices:
            self.cpu_ops.append((self.iteration, str(func)))
        if func in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default):
            self.matmuls.append((outputs[0].dtype, torch.backends.cuda.matmul.allow_tf32))
            a, b = inputs[:2]
            if func is aten.mm.default and b.shape == a.shape[::-1] and b.stride() == (1, a.shape[1]):  # x @ x.T
                self.gram.append((outputs[0].dtype, torch.backends.cuda.matmul.allow_tf32))
        return out


_drawn: dict[tuple, list[dict]] = {}   # epoch 1 of a loader, by batch size: the same for every variant


class Batches:
    """The trainer's loader replaced by the batches of its epoch 1, drawn from it outside the fake mode (real
    CPU tensors, as the loader yields them); iterating tells the audit which iteration runs."""

    def __init__(self, loader, audit: StepAudit):
        self.sampler = loader.sampler
        key = (loader.batch_size, loader.sampler.num_instances, repr(loader.sampler.dropout))
        if key not in _drawn:
            with unset_fake_temporarily():
                loader.sampler.set_epoch(1)
                _drawn[key] = list(loader)
        self.batches = _drawn[key]
        self.audit = audit

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        for i, batch in enumerate(self.batches, 1):
            self.audit.iteration = i
            yield batch


_built: dict[str, torch.nn.Module] = {}   # host-built models by MODEL config (TF32 aside: the precisions share one)


@contextmanager
def fake_cuda():
    """Fake CUDA tensors under CUDA's autocast rules (torch.cuda.is_available() stays False: with it True, the
    fake mode would move real parameters to the missing GPU for real)."""
    with ExitStack() as stack:
        stack.enter_context(unittest.mock.patch("torch.cuda.is_bf16_supported", return_value=True))
        stack.enter_context(unittest.mock.patch("torch.cuda.amp.common.amp_definitely_not_available",
                                                return_value=False))
        make_model = trainer_module.make_model

        def built_on_the_host(cfg, *args, **kwargs):  # initialisers read values; the runner then moves it
            key = str([(k, v) for k, v in sorted(cfg.MODEL.items()) if k != "TF32"])
            with unset_fake_temporarily():
                if key not in _built:
                    _built[key] = make_model(cfg, *args, **kwargs)
                return copy.deepcopy(_built[key])

        stack.enter_context(unittest.mock.patch.object(trainer_module, "make_model", built_on_the_host))
        # a forward per model part, counting FLOPs for the log: not the training step, and slow on fake tensors
        stack.enter_context(unittest.mock.patch.object(trainer_module, "parameter_summary", lambda *a: ""))
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        yield


def _stub_backward(model: torch.nn.Module, losses: list):
    def backward(loss, *args, **kwargs):
        losses.append((loss.device, loss.dtype, loss.dim()))
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    return backward


VARIANTS = {"default": [], "stencil": ["MODEL.HEAT.DIFFUSION", "stencil"],
            "modality heads": ["MODEL.MODALITY_HEADS", "True"], "one backbone per modality":
            ["MODEL.SHARED_BACKBONE", "False"]}
AUTOCAST = {"off": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _epoch_on_fake_cuda(cfg) -> tuple[Trainer, StepAudit, list, list]:
    """``Trainer(cfg).train_epoch(1)`` on fake CUDA under the audit; also the (device, dtype, dim) of each loss
    handed to backward and the (device, dtype) of the ``ori`` head's logits."""
    audit, losses, logits = StepAudit(), [], []
    step = Trainer.train_step

    def audited_step(self, batch):
        audit.in_step = True
        try:
            return step(self, batch)
        finally:
            audit.in_step = False

    with kept_logging(), fake_cuda():
        trainer = Trainer(cfg, DistInfo(device=CUDA))
        assert {p.device for p in trainer.model.parameters()} == {CUDA}
        trainer.loader = Batches(trainer.loader, audit)
        trainer.model.heads["ori"].classifier.register_forward_hook(
            lambda m, i, out: logits.append((out.device, out.dtype)))
        with unittest.mock.patch.object(torch.Tensor, "backward", _stub_backward(trainer.model, losses)), \
                unittest.mock.patch.object(Trainer, "train_step", audited_step), audit:
            trainer.train_epoch(1)
        trainer.writer.close()
    return trainer, audit, losses, logits


def _config(tiny_root, out, *opts):
    """Tiny and cheap: 8 identities x 8 instances = the whole training set in one step (one iteration per
    epoch), one heat cycle (the operator's code is the same at every cycle)."""
    return tiny_config(tiny_root, out, "MODEL.DEVICE", "cuda", "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST",
                       "[32, 16]", "INPUT.PADDING", "2", "SOLVER.IMS_PER_BATCH", "64", "DATALOADER.NUM_INSTANCE", "8",
                       "DATALOADER.PIN_MEMORY", "False", "DATALOADER.CACHE", "False", "MODEL.DROP_PATH", "0.1",
                       "MODEL.HEAT.NUM_CYCLES", "1", *opts)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_step_on_fake_cuda(variant, tiny_root, tmp_path):
    for amp, dtype in AUTOCAST.items():
        tf32 = amp == "off"   # TF32 matters for float32 products: on where they dominate, off elsewhere
        cfg = _config(tiny_root, str(tmp_path / amp), *VARIANTS[variant], "SOLVER.AMP", amp, "MODEL.TF32", str(tf32))
        trainer, audit, losses, logits = _epoch_on_fake_cuda(cfg)
        assert trainer.scaler.is_enabled() == (amp == "fp16")
        assert not audit.cpu_ops, audit.cpu_ops[:10]
        # the loader's batch only, without blocking: per modality its uint8 images and erased boxes, and labels
        assert Counter((t, non_blocking) for _, t, non_blocking in audit.uploads) == {
            (torch.uint8, True): 3, (torch.int64, True): 4}
        assert audit.syncs and not [s for s in audit.syncs if s[1]], audit.syncs   # none inside the step
        assert losses == [(CUDA, torch.float32, 0)] and logits == [(CUDA, dtype)]
        assert {d for d, _ in audit.matmuls} >= {dtype}            # autocast acts on the GPU
        assert {allowed for _, allowed in audit.matmuls} == {tf32, False}   # TF32 as configured, mining aside
        # triplet mining: a Gram matrix per head's features, always in full float32
        assert audit.gram and set(audit.gram) == {(torch.float32, False)}


def test_epoch_syncs_only_at_log_period_boundaries(tiny_root, tmp_path):
    """Two iterations, SOLVER.LOG_PERIOD 2: nothing reaches the host in the first."""
    cfg = _config(tiny_root, str(tmp_path), "SOLVER.IMS_PER_BATCH", "32", "SOLVER.LOG_PERIOD", "2",
                  "SOLVER.AMP", "fp16")
    trainer, audit, losses, _ = _epoch_on_fake_cuda(cfg)
    assert len(trainer.loader) == 2 and len(losses) == 2
    assert {iteration for iteration, _ in audit.syncs} == {2} and not audit.cpu_ops


def test_benchmark_step_and_matmul_on_fake_cuda(tiny_root, tmp_path):
    """tools.benchmark's training step (as the trainer's: the host batch uploaded, normalised and erased on the
    device) and its matmul yardstick in the step's precision. Its timer and memory probe need a real GPU."""
    from tools import benchmark

    cfg = _config(tiny_root, str(tmp_path), "SOLVER.AMP", "bf16")
    assert [benchmark.step_precision(c, CUDA)[1] for c in (cfg, _config(tiny_root, str(tmp_path), "MODEL.TF32", "True"))
            ] == ["bf16", "fp32 (TF32)"]
    with unset_fake_temporarily():
        model = benchmark.build_model(cfg, "ours", 8, torch.device("cpu"))
    batch = benchmark.random_batch(cfg, 16, torch.device("cpu"))   # pinned for a real GPU; pinning needs one
    audit, losses = StepAudit(), []
    with fake_cuda():
        model.to(CUDA)
        step = benchmark.make_step(cfg, model, "ours", batch, CUDA, benchmark.make_optimizer(cfg, model))
        kernels = benchmark.matmul_kernels(CUDA, 64, torch.bfloat16)
        with unittest.mock.patch.object(torch.Tensor, "backward", _stub_backward(model, losses)), audit:
            step()
            product = kernels["torch.mm"]()
    assert not audit.cpu_ops and not audit.syncs and losses == [(CUDA, torch.float32, 0)]
    assert {non_blocking for _, _, non_blocking in audit.uploads} == {True}
    assert torch.bfloat16 in {d for d, _ in audit.matmuls}
    assert (product.device, product.dtype) == (CUDA, torch.bfloat16) and list(kernels) == ["torch.mm"]


def test_training_for_missing_modalities_on_fake_cuda(tiny_root, tmp_path):
    """INPUT.MODALITY_DROPOUT: every sample twice, the copy with modalities left out. What the presence masks
    decide (which images to encode, which edges run, the triplet groups) is read on the host from the
    loader's masks: still no sync inside the step, and the masks reach the device as non-blocking uploads."""
    cfg = _config(tiny_root, str(tmp_path), "SOLVER.AMP", "fp16", "INPUT.MODALITY_DROPOUT", "1.0")
    trainer, audit, losses, logits = _epoch_on_fake_cuda(cfg)
    assert not audit.cpu_ops, audit.cpu_ops[:10]
    assert audit.host_ops                                          # the masks' checks and rows, on the host
    assert audit.syncs and not [s for s in audit.syncs if s[1]], audit.syncs   # none inside the step
    kinds = Counter((t, non_blocking) for _, t, non_blocking in audit.uploads)
    assert set(kinds) == {(torch.uint8, True), (torch.int64, True), (torch.bool, True)}, kinds
    assert kinds[(torch.uint8, True)] == 3                         # each modality's images once
    assert losses == [(CUDA, torch.float32, 0)] and logits == [(CUDA, torch.float16)]
