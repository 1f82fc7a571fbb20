"""``python -m tools.gpu_memory``: the estimate against an independent count on real CPU tensors, and its CLI."""

import os

import pytest
import torch

from loss import make_loss
from model import make_model
from tests.conftest import REPO, tiny_config
from tools import gpu_memory

SIZE = ["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]"]   # ViT-Mini-8: a 4 x 2 grid, 9 tokens


def saved_bytes_on_cpu(cfg, samples: int, num_classes: int) -> int:
    """Bytes of the tensors the autograd graph of a real CPU forward + losses holds for backward (parameters
    aside), each storage once, found by walking the graph from the loss rather than by hooks."""
    torch.manual_seed(0)
    model = make_model(cfg, num_classes, load_pretrained=False).train()
    batch = {m: torch.rand(samples, 3, *cfg.INPUT.SIZE_TRAIN) for m in model.modalities}
    pids = torch.arange(samples // cfg.DATALOADER.NUM_INSTANCE).repeat_interleave(cfg.DATALOADER.NUM_INSTANCE)
    total = sum(make_loss(cfg, num_classes)(model(batch), pids).values())
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen_nodes, storages, stack = set(), {}, [total.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
        saved = [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
        saved += list(getattr(node, "saved_tensors", ()))   # custom autograd functions
        for value in saved:
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in parameters:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_estimate_equals_the_saved_tensors_of_a_real_forward(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path), *SIZE, "MODEL.DROP_PATH", "0.0")
    figures = gpu_memory.estimate(cfg, 8, num_classes=8)
    model = make_model(cfg, 8, load_pretrained=False)
    numel = sum(p.numel() for p in model.parameters())
    frozen = sum(h.bn.bias.numel() for h in model.heads.values())   # the BNNecks' biases do not train
    assert figures["parameters"] == 4 * numel and figures["gradients"] == 4 * (numel - frozen)   # float32
    assert figures["optimizer state"] == 2 * figures["gradients"]       # Adam: two moments
    activations = sum(v for k, v in figures.items() if k.startswith("activations: "))
    assert min(figures[f"activations: {part}"] for part in gpu_memory.PARTS) > 0
    assert figures["one block recomputed in backward"] == 0                # MODEL.GRAD_CKPT False
    assert figures["total"] == 4 * numel + 12 * (numel - frozen) + activations
    # on CPU the attention is PyTorch's flash kernel, which keeps what the GPU's memory-efficient one keeps
    # (q, k, v, output, log-sum-exp; only the padding of the log-sum-exp differs)
    assert activations == pytest.approx(saved_bytes_on_cpu(cfg, 8, 8), rel=0.01)


def test_precision_gradient_checkpointing_and_the_share_of_each_gpu(tiny_root, tmp_path):
    def activations(*opts, samples=8):
        figures = gpu_memory.estimate(tiny_config(tiny_root, str(tmp_path), *SIZE, *opts), samples, 8)
        return {k.split(": ")[1]: v for k, v in figures.items() if k.startswith("activations: ")}

    full = activations()
    half = activations(samples=4)
    assert half["backbone"] == pytest.approx(full["backbone"] / 2, rel=0.05)   # per-sample activations
    assert half["heat"] == pytest.approx(full["heat"] / 2, rel=0.05)
    fp16 = activations("SOLVER.AMP", "fp16")
    assert 0.4 < fp16["backbone"] / full["backbone"] < 0.9    # half precision, but LayerNorm and softmax in fp32
    ckpt = activations("MODEL.GRAD_CKPT", "True")   # the checkpointed blocks keep their inputs only
    assert ckpt["heat"] < full["heat"] / 4 and ckpt["backbone"] < full["backbone"] / 2


def test_command_prints_a_column_per_gpu_count_and_refuses_a_split(tiny_root, capsys):
    config = os.path.join(REPO, "configs", "Synthetic", "MHCF.yml")
    opts = ["SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "4", *SIZE]
    gpu_memory.main(["--config_file", config, "--gpus", "1,2", "--num_classes", "8", *opts])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Estimated GPU memory per process (GiB), fake CUDA tensors: ")
    assert lines[1] == "| | 1 GPU (16 samples each) | 2 GPUs (8 samples each) |"
    assert [line.split(" |")[0] for line in lines[3:]] == [
        "| parameters", "| gradients", "| optimizer state", "| activations: backbone", "| activations: heat",
        "| activations: heads", "| one block recomputed in backward", "| total"]
    with pytest.raises(SystemExit) as stop:   # 4 identities cannot give 4 processes 2 each
        gpu_memory.main(["--config_file", config, "--gpus", "4", *opts])
    assert stop.value.code == 2
    assert "cannot give each of 4 processes the same number, at least 2" in capsys.readouterr().err
