"""Benchmark: chunked ``evaluate_features`` against the straightforward full-matrix evaluator.

The full-matrix evaluator is what the reference repositories do: the whole query x gallery distance matrix,
one full ``np.argsort`` per row, a query x gallery match matrix, then a loop over queries. Both run on the
same random L2-normalised features with realistic identities and cameras, each in a fresh subprocess so
that its peak memory is measured alone (peak resident set size after the features are loaded, minus the
resident size before the evaluation).

    python -m tools.bench_eval                      # 3,000 queries x 40,000 gallery x 512-d
    python -m tools.bench_eval --queries 500 --gallery 5000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

from utils.metrics import evaluate_features

from .common import REPO, at_least, run_tool, tool_parser


def make_features(folder: str, queries: int, gallery: int, dim: int, ids: int, cams: int, seed: int,
                  noise: float) -> None:
    """Identity centres plus noise, L2-normalised; every query identity appears in the gallery. The noise
    (per dimension, relative to the centres) sets the difficulty: 2.2 gives mAP ~75%, 2.8 ~23%."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    data = {}
    for split, n in (("q", queries), ("g", gallery)):
        pids = np.concatenate([np.arange(ids), rng.integers(0, ids, n - ids)]) if n >= ids else rng.integers(0, ids, n)
        feats = centres[pids] + noise * rng.standard_normal((n, dim)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        data[f"{split}f"] = feats.astype(np.float32)
        data[f"{split}_pids"] = pids.astype(np.int64)
        data[f"{split}_camids"] = rng.integers(0, cams, n).astype(np.int64)
    for name, value in data.items():
        np.save(os.path.join(folder, f"{name}.npy"), value)


def full_matrix_eval(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_camids, g_camids, max_rank=50,
                     exact: bool = False):
    """The reference repositories' evaluator: full distance matrix, full argsort, match matrix, query loop.

    Theirs computes the distances in float32 as |q|^2 + |g|^2 - 2 q.g and ranks with NumPy's default
    ``np.argsort`` (not stable), so items at equal distances come in an arbitrary order. ``exact``: the
    exact ranking instead, float64 distances (the products of float32 features are exact) rounded to
    float32, and a stable argsort, which breaks ties by gallery order -- what ``evaluate_features`` gives.
    """
    m, n = qf.shape[0], gf.shape[0]
    if exact:
        qf, gf = qf.double(), gf.double()
    distmat = qf.pow(2).sum(1, keepdim=True).expand(m, n) + gf.pow(2).sum(1, keepdim=True).expand(n, m).t()
    distmat = distmat.addmm(qf, gf.t(), beta=1, alpha=-2).float().numpy()
    indices = np.argsort(distmat, axis=1, kind="stable" if exact else "quicksort")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(m):
        order = indices[q]
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw = matches[q][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.where(raw == 1)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = raw.cumsum() / np.arange(1, len(raw) + 1)
        all_ap.append((precision * raw).sum() / raw.sum())
    return float(np.mean(all_ap)), float(np.mean(all_inp)), np.asarray(all_cmc).astype(np.float64).mean(0)


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(method: str, folder: str, chunk: int) -> dict:
    data = {name[:-4]: np.load(os.path.join(folder, name)) for name in os.listdir(folder)}
    qf, gf = torch.from_numpy(data["qf"]), torch.from_numpy(data["gf"])
    meta = [data[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak resident size (VmHWM) to the current one
        f.write("5")
    before = _memory_kib("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    if method == "chunked":
        result = evaluate_features(qf, gf, *meta, chunk_size=chunk)
        mAP, mINP, cmc = result.mAP, result.mINP, result.cmc
    else:
        mAP, mINP, cmc = full_matrix_eval(qf, gf, *meta, exact=method == "full-exact")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _memory_kib("VmHWM") - before
    return {"method": method, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak / 1024,
            "mAP": mAP, "mINP": mINP, "rank1": float(cmc[0]), "rank10": float(cmc[9])}


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("bench_eval", __doc__)
    parser.add_argument("--queries", type=at_least(1), default=3000)
    parser.add_argument("--gallery", type=at_least(1), default=40000)
    parser.add_argument("--dim", type=at_least(1), default=512)
    parser.add_argument("--ids", type=at_least(1), default=750)
    parser.add_argument("--cams", type=at_least(1), default=6)
    parser.add_argument("--chunk", type=at_least(1), default=256, help="queries per chunk of evaluate_features")
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--noise", type=at_least(0, float), default=2.2,
                        help="feature noise: 2.2 gives mAP ~75%%, 2.8 ~23%%")
    parser.add_argument("--threads", type=at_least(0), default=0,
                        help="torch threads of both evaluators (0: torch's default)")
    parser.add_argument("--worker", choices=("chunked", "full", "full-exact"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.chunk)))
        return
    with tempfile.TemporaryDirectory() as folder:
        make_features(folder, args.queries, args.gallery, args.dim, args.ids, args.cams, args.seed, args.noise)
        print(f"{args.queries} queries x {args.gallery} gallery x {args.dim}-d, {args.ids} ids, {args.cams} cameras, "
              f"noise {args.noise}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
        runs = {}
        for method in ("full", "chunked", "full-exact"):
            out = subprocess.run([sys.executable, "-m", "tools.bench_eval", "--worker", method, "--data", folder,
                                  "--chunk", str(args.chunk), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True, cwd=REPO)
            runs[method] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| evaluator | time (s) | CPU time (s) | peak memory (MiB) | mAP | Rank-1 | mINP |")
    print("|---|---|---|---|---|---|---|")
    for method, r in runs.items():
        name = {"full": "full matrix + argsort (reference repositories)",
                "full-exact": "full matrix, float64 distances, stable argsort (the exact ranking)",
                "chunked": f"evaluate_features (chunk {args.chunk})"}[method]
        print(f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['peak_mib']:.0f} | {100 * r['mAP']:.4f} | "
              f"{100 * r['rank1']:.2f} | {100 * r['mINP']:.4f} |")
    full, chunked, exact = runs["full"], runs["chunked"], runs["full-exact"]
    print(f"evaluate_features vs the reference evaluator: {full['seconds'] / chunked['seconds']:.1f}x faster "
          f"({full['cpu_seconds'] / chunked['cpu_seconds']:.1f}x less CPU time), "
          f"{full['peak_mib'] / chunked['peak_mib']:.1f}x less peak memory, |mAP difference| "
          f"{abs(full['mAP'] - chunked['mAP']):.1e} (from its float32 distances and unstable argsort)")
    print("against the exact ranking (float64 distances, stable argsort): "
          f"|mAP difference| {abs(exact['mAP'] - chunked['mAP']):.1e}, "
          f"|mINP difference| {abs(exact['mINP'] - chunked['mINP']):.1e}, "
          f"Rank-1/Rank-10 equal: {exact['rank1'] == chunked['rank1'] and exact['rank10'] == chunked['rank10']}")



def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
