"""Training and input throughput of MHCF for a config, optionally side by side with the authors' structure.

    python -m tools.benchmark --config_file configs/RGBNT201/MHCF.yml --batch 4 --baseline SOLVER.AMP off

Measures, on the config's device (MODEL.DEVICE) with random weights and random images:

- the full training step (the loader's uint8 batch to the device, normalisation and erasing there,
  zero_grad, forward, losses, backward, optimizer step) and an inference batch: median / min / max time,
  images/s, and the sustained GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) against the machine's
  matmul rate in the step's precision (fp32, fp32 with TF32, fp16 or bf16, as SOLVER.AMP and MODEL.TF32
  say; named in the output), measured here on a large square product with the same thread count
  (PyTorch's default GEMM and, on CPU in fp32, oneDNN's; the faster counts):
  timed in a burst after every measured iteration, so that it sees the machine in the same state (a CPU's
  clock and its co-tenants drift by several percent within minutes), and compared by median with the
  loop's median; the run's best burst is reported too, as the strictest yardstick;
- peak memory of our training step, and of forward + losses + backward of each model, each in a fresh
  process: on CPU the resident-set high-water mark, on a GPU ``max_memory_allocated``;
- with ``--baseline``: forward + losses + backward of our model and of ``tools/reference_mhcf.py`` (the
  authors' structure: encoder called once per modality, ``nn.MultiheadAttention``, dense-adjacency
  diffusion) doing the same work, iterations interleaved (alternating which goes first);
- the input pipeline alone when the dataset is present: decode and augmentation of the three modalities,
  samples/s of one loader worker with and without DATALOADER.CACHE, against the rate at which the model
  consumes samples, hence the DATALOADER.NUM_WORKERS that keeps it fed;
- with ``--epoch``: one real training epoch, ``Trainer.train_epoch`` with its loader and workers, into a
  temporary OUTPUT_DIR (needs the dataset): its time per iteration against the training step's alone
  shows what the loader and the host cost.

GPU timings use device events, CPU timings wall time. ``--json PATH`` also writes every figure.
"""

import argparse
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from yacs.config import CfgNode

from accel import onednn_available, tune_glibc_malloc
from config import load_config
from datasets import TransformedSamples, make_dataset, train_transform
from datasets.transforms import ErasingBox
from loss import make_loss
from model import make_model
from model.backbone import ARCHS
from processor.device import BatchToDevice, autocast_context, prepare_model, resolve_device, tf32
from processor.distributed import DistInfo
from processor.trainer import Trainer
from solver import make_optimizer
from utils.errors import UserError
from utils.flops import count_flops, format_costs, model_costs

from .common import REPO, at_least, run_tool, tool_parser
from .reference_mhcf import ReferenceMHCF

HEAD_NAMES = ("ori", "heat_cls", "heat_pat")  # the reference model's heads, in its order


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
class Timer:
    """Seconds taken by a callable: device events on an accelerator, wall time on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.module = getattr(torch, device.type)   # torch.cuda on a GPU

    def sync(self) -> None:
        if self.device.type != "cpu":
            self.module.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cpu":
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = (self.module.Event(enable_timing=True) for _ in range(2))
        self.sync()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000.0


def summarise(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def repeat(timer: Timer, fn: Callable[[], object], warmup: int, iters: int,
           between: Callable[[], object] | None = None) -> list[float]:
    """Times of ``iters`` calls of ``fn`` after ``warmup`` untimed ones; ``between`` (untimed) runs after each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        times.append(timer(fn))
        if between is not None:
            between()
    return times


def step_precision(cfg: CfgNode, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype of the training step's matrix products and its name: SOLVER.AMP's, or float32 ("fp32 (TF32)"
    with MODEL.TF32 on a GPU)."""
    if cfg.SOLVER.AMP != "off":
        return (torch.float16 if cfg.SOLVER.AMP == "fp16" else torch.bfloat16), cfg.SOLVER.AMP
    return torch.float32, "fp32 (TF32)" if cfg.MODEL.TF32 and device.type == "cuda" else "fp32"


def matmul_kernels(device: torch.device, n: int, dtype: torch.dtype = torch.float32,
                   tf32_allowed: bool = False) -> dict[str, Callable[[], object]]:
    """An ``n x n`` product in ``dtype`` with PyTorch's default GEMM (TF32 as ``tf32_allowed`` says), and with
    oneDNN on CPU in float32."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def product():
        with tf32(tf32_allowed):
            return torch.mm(a, b)

    kernels = {"torch.mm": product}
    if device.type == "cpu" and dtype == torch.float32 and onednn_available():
        kernels["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return kernels


def matmul_rate(timer: Timer, kernel: Callable[[], object], n: int, reps: int = 3) -> float:
    """GFLOP/s of the fastest of ``reps`` runs of an ``n x n`` product (one burst, ~0.1 s on a CPU)."""
    return 2 * n ** 3 / min(repeat(timer, kernel, 0, reps)) / 1e9


class AlongsideMatmul:
    """The matmul rate measured between the iterations of a timed loop (a burst after each), so that it sees
    the machine in the same state as the loop (clock, other tenants); its median is what the loop's
    GFLOP/s are compared with."""

    def __init__(self, timer: Timer, kernel: Callable[[], object], n: int):
        self.timer, self.kernel, self.n, self.rates = timer, kernel, n, []

    def __call__(self) -> None:
        self.rates.append(matmul_rate(self.timer, self.kernel, self.n))

    def median(self) -> float:
        return statistics.median(self.rates)


# ---------------------------------------------------------------------------------------------------
# Models, batches, steps
# ---------------------------------------------------------------------------------------------------
def build_model(cfg: CfgNode, variant: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    """Our model (``"ours"``) or the authors' structure (``"baseline"``) at the config's sizes, random init."""
    if variant == "ours":
        return prepare_model(make_model(cfg, num_classes, load_pretrained=False), cfg, device).train()
    arch = ARCHS[cfg.MODEL.NAME]
    model = ReferenceMHCF(num_classes, tuple(cfg.INPUT.SIZE_TRAIN), cfg.MODEL.MODALITIES,
                          patch=arch["patch_size"], width=arch["embed_dim"], layers=arch["depth"],
                          heads=arch["num_heads"])
    return model.to(device).train()


def random_batch(cfg: CfgNode, samples: int, device: torch.device, size=None, train: bool = True) -> dict:
    """A batch as the loader gives it, on the host: random uint8 images of every modality, erased boxes drawn
    as INPUT.RE_PROB says (training), P x K identity labels (K = DATALOADER.NUM_INSTANCE when it divides the
    batch, else 2, else 1); in page-locked memory for a GPU, as the trainer's loader."""
    gen = torch.Generator().manual_seed(0)
    size = size or cfg.INPUT.SIZE_TRAIN
    batch = {m: torch.randint(0, 256, (samples, 3, *size), generator=gen, dtype=torch.uint8)
             for m in cfg.MODEL.MODALITIES}
    k = next(k for k in (cfg.DATALOADER.NUM_INSTANCE, 2, 1) if samples % k == 0)
    batch["pid"] = torch.arange(samples // k).repeat_interleave(k)
    if train:
        erasing = ErasingBox(cfg.INPUT.RE_PROB)
        batch["erase"] = {m: torch.stack([erasing((3, *size)) for _ in range(samples)]) for m in cfg.MODEL.MODALITIES}
    if device.type == "cuda":
        batch = {k: ({m: t.pin_memory() for m, t in v.items()} if isinstance(v, dict) else v.pin_memory())
                 for k, v in batch.items()}
    return batch


def as_named_outputs(outputs) -> dict:
    """The reference model's (logits list, features list) as our named outputs, for the same losses."""
    logits, features = outputs
    return {"logits": dict(zip(HEAD_NAMES, logits)), "features": dict(zip(HEAD_NAMES, features))}


def make_step(cfg: CfgNode, model: torch.nn.Module, variant: str, batch: dict, device: torch.device,
              optimizer: torch.optim.Optimizer | None = None) -> Callable[[], None]:
    """One iteration as the trainer's: the host ``batch`` (:func:`random_batch`) to the device, forward,
    losses, backward, and the optimizer step when ``optimizer`` is given."""
    loss_fn = make_loss(cfg, max(batch["pid"].tolist()) + 1)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.SOLVER.AMP == "fp16")
    forward = model if variant == "ours" else (lambda b: as_named_outputs(model(b)))
    to_device = BatchToDevice(cfg, device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        on_device = to_device(batch)
        with tf32(cfg.MODEL.TF32), autocast_context(device, cfg.SOLVER.AMP):
            total = sum(loss_fn(forward(on_device), on_device["pid"]).values())
        with tf32(cfg.MODEL.TF32):
            scaler.scale(total).backward()
        if optimizer is not None:
            scaler.step(optimizer)
            scaler.update()

    return step


# ---------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------
def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MB (Linux; None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Resident-set high-water mark of this process image in MB. Linux's VmHWM starts afresh at exec;
    ``ru_maxrss`` (the fallback) would also count the parent's resident set at fork."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere


def current_rss_mb() -> float | None:
    """Resident set of this process now in MB (Linux; None elsewhere)."""
    return _proc_status_mb("VmRSS")


def probe_memory(cfg: CfgNode, variant: str, samples: int, device: torch.device, num_classes: int) -> dict:
    """Peak memory of two iterations of ``variant``: ``"step"`` (our full training step, optimizer
    included), ``"ours"`` or ``"baseline"`` (forward, losses and backward of either model)."""
    model = build_model(cfg, "baseline" if variant == "baseline" else "ours", num_classes, device)
    batch = random_batch(cfg, samples, device)
    optimizer = make_optimizer(cfg, model) if variant == "step" else None
    step = make_step(cfg, model, "baseline" if variant == "baseline" else "ours", batch, device, optimizer)
    if device.type != "cpu":
        module = getattr(torch, device.type)   # torch.cuda
        for _ in range(2):
            step()
        module.synchronize(device)
        return {"peak_mb": module.max_memory_allocated(device) / 2 ** 20,
                "kind": "max_memory_allocated in a fresh process"}
    before = current_rss_mb()
    for _ in range(2):
        step()
    return {"peak_mb": peak_rss_mb(), "model_mb": before, "kind": "peak RSS of a fresh process"}


def memory_in_subprocess(args: argparse.Namespace, variant: str) -> dict:
    """:func:`probe_memory` in a fresh interpreter, so each model's high-water mark is its own (on a GPU
    too: no other model of the benchmark is still alive there)."""
    cmd = [sys.executable, "-m", "tools.benchmark", "--probe", variant, "--batch", str(args.batch),
           "--num_classes", str(args.num_classes)]
    if args.config_file:
        cmd += ["--config_file", args.config_file]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd + list(args.opts), capture_output=True, text=True, check=False, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe of {variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# Input pipeline
# ---------------------------------------------------------------------------------------------------
def input_pipeline(cfg: CfgNode, samples: int) -> dict:
    """Per-worker rates of the training input pipeline (decode + augment every modality), in the main
    process; the cached variant decodes once, then only augments."""
    dataset = make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES)
    records = dataset.train[:samples]
    transform = train_transform(cfg)

    def rate(data: TransformedSamples) -> float:
        start = time.perf_counter()
        for i in range(len(data)):
            data[(i, i)]
        return len(data) / (time.perf_counter() - start)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        uncached = rate(TransformedSamples(dataset, records, transform))
        start = time.perf_counter()
        cached_data = TransformedSamples(dataset, records, transform, cache=True)
        decode_rate = len(records) / (time.perf_counter() - start)
        cached = rate(cached_data)
    finally:
        torch.set_num_threads(threads)
    return {"samples": len(records), "per_worker": uncached, "per_worker_cached": cached, "decode_only": decode_rate}


def workers_needed(consumption: float, per_worker: float, headroom: float = 1.25) -> int:
    return max(1, math.ceil(headroom * consumption / per_worker))


# ---------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------
def default_num_classes(cfg: CfgNode) -> int:
    try:
        return make_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.MODEL.MODALITIES).num_train_pids
    except UserError:
        return 171  # RGBNT201's training identities; the classifier's size barely matters here


def rate_line(loop: dict, label: str) -> str:
    """The sustained GFLOP/s of a timed loop against the matmul rate of its precision measured alongside and
    the best burst."""
    return (f"  {loop['flops'] / 1e9:.1f} GFLOP {label} -> {loop['gflops']:.0f} GFLOP/s sustained = "
            f"{100 * loop['fraction_of_matmul']:.0f}% of the {loop['precision']} matmul rate measured alongside "
            f"({loop['matmul_alongside_gflops']:.0f} GFLOP/s, median); "
            f"{100 * loop['fraction_of_best_matmul']:.0f}% of the run's best burst "
            f"({loop['matmul_best_gflops']:.0f})")


def load_average() -> float | None:
    """The 1-minute load average (Unix), to tell whether other processes shared the CPU."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def loop_figures(loop: dict, flops: int, samples: int, modalities: int, alongside: AlongsideMatmul,
                 best_rate: float) -> dict:
    """A timed loop's figures: throughput and its sustained GFLOP/s against the matmul rates."""
    rate = flops / loop["median"] / 1e9
    return {**loop, "flops": flops, "samples_per_s": samples / loop["median"],
            "images_per_s": samples * modalities / loop["median"], "gflops": rate,
            "matmul_alongside_gflops": alongside.median(), "fraction_of_matmul": rate / alongside.median(),
            "matmul_best_gflops": best_rate, "fraction_of_best_matmul": rate / best_rate}


def measure_model(args: argparse.Namespace, cfg: CfgNode, device: torch.device, say: Callable) -> dict:
    """The training step and the inference batch of our model, each with the matmul rate of its precision
    (the step's: SOLVER.AMP / MODEL.TF32; inference: fp32) measured alongside."""
    timer = Timer(device)
    precisions = {"train": step_precision(cfg, device), "inference": (torch.float32, "fp32")}
    step_precision_name = precisions["train"][1]
    kernels = {loop: matmul_kernels(device, args.matmul_size, dtype, cfg.MODEL.TF32 and loop == "train")
               for loop, (dtype, _) in precisions.items()}
    matmul = {loop: {name: matmul_rate(timer, k, args.matmul_size) for name, k in ks.items()}
              for loop, ks in kernels.items()}
    ours = build_model(cfg, "ours", args.num_classes, device)
    costs = model_costs(ours, cfg.INPUT.SIZE_TRAIN)
    say(format_costs(costs))

    batch = random_batch(cfg, args.batch, device)
    compiled = torch.compile(ours) if cfg.MODEL.COMPILE else ours
    train_step = make_step(cfg, compiled, "ours", batch, device, make_optimizer(cfg, ours))
    step_flops, _ = count_flops(make_step(cfg, ours, "ours", batch, device))
    fastest = {loop: ks[max(matmul[loop], key=matmul[loop].get)] for loop, ks in kernels.items()}
    alongside = {loop: AlongsideMatmul(timer, fastest[loop], args.matmul_size) for loop in kernels}
    train = summarise(repeat(timer, train_step, args.warmup, args.iters, between=alongside["train"]))

    test_batch = BatchToDevice(cfg, device)(random_batch(cfg, args.test_batch, device, cfg.INPUT.SIZE_TEST, False))
    ours.eval()
    with torch.inference_mode():
        infer_flops, _ = count_flops(ours, test_batch)
        infer = summarise(repeat(timer, lambda: compiled(test_batch), min(args.warmup, 1), args.iters,
                                 between=alongside["inference"]))
    ours.train()

    for loop, ks in kernels.items():  # again at the end: the best burst of the run
        for name, kernel in ks.items():
            matmul[loop][name] = max(matmul[loop][name], matmul_rate(timer, kernel, args.matmul_size))
    best = {loop: max([*matmul[loop].values(), *alongside[loop].rates]) for loop in kernels}
    modalities = len(cfg.MODEL.MODALITIES)
    report = {"model": {name: vars(c) for name, c in costs.items()},
              "train_step": {**loop_figures(train, step_flops, args.batch, modalities, alongside["train"],
                                            best["train"]),
                             "precision": step_precision_name, "matmul_gflops": matmul["train"]},
              "inference": {**loop_figures(infer, infer_flops, args.test_batch, modalities, alongside["inference"],
                                           best["inference"]),
                            "precision": "fp32", "matmul_gflops": matmul["inference"], "batch": args.test_batch}}
    train, infer = report["train_step"], report["inference"]
    for loop, figures in (("training step", train), ("inference", infer)):
        say("machine {p} matmul rate, the precision of the {loop} ({n}x{n}, best of 3 runs before and after): "
            "{rates} GFLOP/s; the fastest kernel is timed again between its iterations below".format(
                p=figures["precision"], loop=loop, n=args.matmul_size,
                rates=", ".join(f"{k} {v:.0f}" for k, v in figures["matmul_gflops"].items())))
    say(f"training step ({args.batch} samples x {modalities} modalities, {step_precision_name}; batch to the "
        f"device, forward, losses, backward, optimizer), {args.iters} iterations after {args.warmup} warm-up:")
    say(f"  {train['median']:.3f} s median (min {train['min']:.3f}, max {train['max']:.3f}); "
        f"{train['samples_per_s']:.2f} samples/s, {train['images_per_s']:.1f} images/s")
    say(rate_line(train, "per step (forward + backward)"))
    say(f"inference batch ({args.test_batch} samples, fp32): {infer['median']:.3f} s median; "
        f"{infer['samples_per_s']:.1f} samples/s")
    say(rate_line(infer, "per batch"))
    if args.baseline:
        report["baseline"] = compare_with_baseline(args, cfg, device, compiled, batch, step_flops, say)
    return report


def compare_with_baseline(args: argparse.Namespace, cfg: CfgNode, device: torch.device, ours: torch.nn.Module,
                          batch: dict, our_flops: int, say: Callable) -> dict:
    """Forward + losses + backward of our model and of the authors' structure, iterations interleaved
    (alternating which goes first)."""
    timer = Timer(device)
    theirs = build_model(cfg, "baseline", args.num_classes, device)
    steps = {"ours": make_step(cfg, ours, "ours", batch, device),
             "baseline": make_step(cfg, theirs, "baseline", batch, device)}
    flops = {"ours": our_flops, "baseline": count_flops(steps["baseline"])[0]}
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    for i in range(args.warmup + args.iters):
        for name in (("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")):
            t = timer(steps[name])
            if i >= args.warmup:
                times[name].append(t)
    cmp = {name: summarise(t) for name, t in times.items()}
    ratio = cmp["ours"]["median"] / cmp["baseline"]["median"]
    say(f"forward + losses + backward, interleaved with the authors' structure ({args.iters} pairs):")
    for name, label in (("ours", "ours"), ("baseline", "theirs")):
        c = cmp[name]
        say(f"  {label:<7} {c['median']:.3f} s median (min {c['min']:.3f}, max {c['max']:.3f}), "
            f"{flops[name] / 1e9:.1f} GFLOP, {flops[name] / c['median'] / 1e9:.0f} GFLOP/s")
    say(f"  time ours / theirs = {ratio:.2f}")
    return {"ours": cmp["ours"], "baseline": cmp["baseline"], "ratio": ratio, "flops_ours": flops["ours"],
            "flops_baseline": flops["baseline"], "ratios": [a / b for a, b in zip(times["ours"], times["baseline"])]}


def measure_memory(args: argparse.Namespace, cfg: CfgNode, device: torch.device, say: Callable) -> dict:
    """Peak memory of our training step (and, with --baseline, of both models' forward + losses + backward),
    each in a fresh process."""
    labels = {"step": "ours, training step", "ours": "ours, forward + losses + backward",
              "baseline": "theirs, forward + losses + backward"}
    variants = list(labels) if args.baseline else ["step"]
    memory = {v: memory_in_subprocess(args, v) for v in variants}
    for v, m in memory.items():
        extra = f" (before the first step: {m['model_mb']:.0f} MB)" if m.get("model_mb") else ""
        say(f"peak memory, {labels[v]}: {m['peak_mb']:.0f} MB [{m['kind']}]{extra}")
    return memory


def measure_input(args: argparse.Namespace, cfg: CfgNode, consumption: float, say: Callable) -> dict | None:
    """The input pipeline's rate per worker against the model's consumption (None without the dataset)."""
    try:
        data = input_pipeline(cfg, args.data_samples)
    except UserError as exc:
        say(f"input pipeline: skipped ({exc})".splitlines()[0])
        return None
    data["consumption"] = consumption
    data["workers"] = workers_needed(consumption, data["per_worker"])
    data["workers_cached"] = workers_needed(consumption, data["per_worker_cached"])
    say(f"input pipeline (decode + augment of {len(cfg.MODEL.MODALITIES)} modalities, "
        f"{data['samples']} samples, one worker):")
    say(f"  {data['per_worker']:.1f} samples/s per worker; with DATALOADER.CACHE "
        f"{data['per_worker_cached']:.1f} samples/s (decoding alone: {data['decode_only']:.1f} samples/s)")
    say(f"  the model consumes {consumption:.2f} samples/s -> DATALOADER.NUM_WORKERS {data['workers']} "
        f"keeps it fed ({data['workers_cached']} with DATALOADER.CACHE)")
    return data


def measure_epoch(cfg: CfgNode, device: torch.device, step_seconds: float, say: Callable) -> dict | None:
    """One epoch of the real trainer (``Trainer.train_epoch``: its loader and workers, the batch to the device,
    the step, the statistics) into a temporary OUTPUT_DIR, against the training step timed alone (None
    without the dataset)."""
    with tempfile.TemporaryDirectory(prefix="mhcf-benchmark-") as out:
        run_cfg = cfg.clone()
        run_cfg.defrost()
        run_cfg.OUTPUT_DIR, run_cfg.SOLVER.RESUME = out, False
        run_cfg.freeze()
        logging.disable(logging.WARNING)  # the trainer's own log of its set-up and iterations
        try:
            trainer = Trainer(run_cfg, DistInfo(device=device))
            timer = Timer(device)
            timer.sync()
            start = time.perf_counter()
            trainer.train_epoch(1)
            timer.sync()
            seconds = time.perf_counter() - start
            trainer.writer.close()
        except UserError as exc:
            say(f"training epoch: skipped ({exc})".splitlines()[0])
            return None
        finally:
            logging.disable(logging.NOTSET)
    iterations = len(trainer.loader)
    figures = {"seconds": seconds, "iterations": iterations, "per_iteration": seconds / iterations,
               "samples_per_s": iterations * cfg.SOLVER.IMS_PER_BATCH / seconds,
               "step_alone": step_seconds, "overhead": seconds / iterations / step_seconds - 1,
               "workers": cfg.DATALOADER.NUM_WORKERS}
    say(f"training epoch (Trainer.train_epoch, {iterations} iterations of {cfg.SOLVER.IMS_PER_BATCH} samples, "
        f"DATALOADER.NUM_WORKERS {cfg.DATALOADER.NUM_WORKERS}): {seconds:.1f} s, {figures['per_iteration']:.3f} s "
        f"per iteration, {figures['samples_per_s']:.1f} samples/s; {100 * figures['overhead']:+.0f}% against the "
        f"training step alone ({step_seconds:.3f} s): the loader, the first iterations' warm-up, the host")
    return figures


def run_benchmark(args: argparse.Namespace, cfg: CfgNode, device: torch.device) -> dict:
    """Every measurement the arguments ask for, printed as it comes; the figures as a dict."""
    say = print if not args.quiet else (lambda *a, **k: None)
    load_before = load_average()
    report: dict = {"config": args.config_file, "device": str(device), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "batch": args.batch, "precision": cfg.SOLVER.AMP,
                    "onednn": bool(cfg.MODEL.ONEDNN and onednn_available() and device.type == "cpu")}
    say(f"MHCF benchmark: {args.config_file or 'defaults'} on {device} ({report['threads']} threads), "
        f"torch {torch.__version__}, {cfg.MODEL.NAME}, {len(cfg.MODEL.MODALITIES)} modalities at "
        f"{cfg.INPUT.SIZE_TRAIN[0]}x{cfg.INPUT.SIZE_TRAIN[1]}, precision {cfg.SOLVER.AMP}, "
        f"oneDNN {'on' if report['onednn'] else 'off'}, random weights")
    report.update(measure_model(args, cfg, device, say))
    if not args.no_memory:
        report["memory"] = measure_memory(args, cfg, device, say)
    if not args.no_data:
        data = measure_input(args, cfg, report["train_step"]["samples_per_s"], say)
        if data is not None:
            report["input"] = data
    if args.epoch:
        epoch = measure_epoch(cfg, device, report["train_step"]["median"] * cfg.SOLVER.IMS_PER_BATCH / args.batch,
                              say)
        if epoch is not None:
            report["epoch"] = epoch
    report["load_average"] = [load_before, load_average()]
    if None not in report["load_average"]:
        busy = max(report["load_average"]) > report["threads"] + 0.5  # more than this benchmark's own threads
        say("1-minute load average {:.1f} at the start, {:.1f} at the end, {} cores{}".format(
            *report["load_average"], os.cpu_count(),
            ": other processes competed for the CPU, the times are pessimistic" if busy else ""))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser("benchmark", __doc__)
    p.add_argument("--config_file", default="", help="YAML config, e.g. configs/RGBNT201/MHCF.yml")
    p.add_argument("--batch", type=at_least(0), default=0,
                   help="samples per training step (default SOLVER.IMS_PER_BATCH)")
    p.add_argument("--test_batch", type=at_least(0), default=0,
                   help="samples per inference batch (default TEST.IMS_PER_BATCH)")
    p.add_argument("--iters", type=at_least(1), default=5, help="measured iterations (default 5)")
    p.add_argument("--warmup", type=at_least(0), default=2, help="warm-up iterations (default 2)")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--num_classes", type=at_least(0), default=0, help="identities (default: the dataset's, else 171)")
    p.add_argument("--matmul_size", type=at_least(0), default=0,
                   help="side of the square matmul (default 2048 CPU, 8192 GPU)")
    p.add_argument("--data_samples", type=at_least(1), default=48, help="samples timed through the input pipeline")
    p.add_argument("--baseline", action="store_true", help="also time the authors' structure side by side")
    p.add_argument("--no_memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--no_data", action="store_true", help="skip the input-pipeline measurement")
    p.add_argument("--epoch", action="store_true",
                   help="also time one epoch of the real trainer with its loader (needs the dataset)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--probe", choices=["step", "ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def run(args: argparse.Namespace) -> dict | None:
    cfg = load_config(args.config_file or None, args.opts)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(cfg.MODEL.DEVICE)
    if device.type == "cpu":
        tune_glibc_malloc()  # as the runners do on CPU (accel.cpu_fast_path), for both models alike
    args.batch = args.batch or cfg.SOLVER.IMS_PER_BATCH
    args.test_batch = args.test_batch or cfg.TEST.IMS_PER_BATCH
    args.matmul_size = args.matmul_size or (2048 if device.type == "cpu" else 8192)
    args.num_classes = args.num_classes or default_num_classes(cfg)
    torch.manual_seed(cfg.SOLVER.SEED)
    if args.probe:
        print(json.dumps(probe_memory(cfg, args.probe, args.batch, device, args.num_classes)))
        return None
    report = run_benchmark(args, cfg, device)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
