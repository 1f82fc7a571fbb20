"""Check the benchmark readers on full-size trees shaped like the published releases.

    python -m tools.check_dataset_trees                      # all four benchmarks, in a temporary folder
    python -m tools.check_dataset_trees --datasets MSVR310 --root /tmp --keep

Builds, for every benchmark, the folders and file names of its release (empty files: discovery does not
decode images) with the official split sizes, reads the tree with ``make_dataset`` and prints the
statistics table and a PASS/FAIL line against the official (ids / samples per split, cameras) figures.
Ids, cameras and scenes are spread plausibly: every query id has gallery images under other cameras,
Market-MM's gallery holds junk (-1, dropped) and distractor (0, kept) images, RGBNT100's query images are
copies of gallery images, and MSVR310's ``query3`` holds every test image of its 52 query ids.
Exit code 1 when a benchmark fails.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from datasets import MultiModalDataset, make_dataset

from .common import at_least, run_tool, tool_parser

# name -> ({split: (# ids, # samples)}, # cameras): the published split sizes (docs/datasets.md)
OFFICIAL: dict[str, tuple[dict[str, tuple[int, int]], int]] = {
    "RGBNT201": ({"train": (171, 3951), "query": (30, 836), "gallery": (30, 836)}, 4),
    "Market-MM": ({"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}, 6),
    "RGBNT100": ({"train": (50, 8675), "query": (50, 1715), "gallery": (50, 8575)}, 8),
    "MSVR310": ({"train": (155, 1032), "query": (52, 591), "gallery": (155, 1055)}, 8),
}


def _touch(folder: str, names: Sequence[str]) -> None:
    """Empty files ``folder/<name>``: the first is created, the others are hard links to it (ten times
    faster than creating each on a busy disk)."""
    os.makedirs(folder, exist_ok=True)
    first = None
    for name in names:
        path = os.path.join(folder, name)
        if first is not None:
            try:
                os.link(first, path)
                continue
            except OSError:  # a file system without hard links
                pass
        open(path, "wb").close()
        first = first or path


def _split_count(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """``parts`` positive counts summing to ``total``, uneven like real identities (multinomial spread)."""
    return (1 + rng.multinomial(total - parts, np.full(parts, 1 / parts))).tolist()


def _cameras(count: int, num_cams: int, rng: np.random.Generator) -> Iterator[int]:
    """``count`` camera numbers (1-based) cycling from a random start: an id is seen by several cameras."""
    start = int(rng.integers(num_cams))
    return ((start + i) % num_cams + 1 for i in range(count))


def _write_modalities(split_dir: str, subdirs: Sequence[str], names: Sequence[str]) -> None:
    for sub in subdirs:
        _touch(os.path.join(split_dir, sub), names)


def build_rgbnt201(root: str, rng: np.random.Generator) -> None:
    """``RGBNT201/{train_171,test}/{RGB,NI,TI}/<pid:06>_cam<c>_0_<n:02>.jpg``; 201 ids out of 1..300."""
    ids = np.sort(rng.choice(np.arange(1, 301), size=201, replace=False))
    train_ids = np.sort(rng.choice(ids, size=171, replace=False))
    test_ids = np.setdiff1d(ids, train_ids)
    for split, pids, total in (("train_171", train_ids, 3951), ("test", test_ids, 836)):
        names = []
        for pid, count in zip(pids, _split_count(total, len(pids), rng)):
            shots: dict[int, int] = {}
            for cam in _cameras(count, 4, rng):
                shots[cam] = shots.get(cam, -1) + 1
                names.append(f"{pid:06d}_cam{cam}_0_{shots[cam]:02d}.jpg")
        _write_modalities(os.path.join(root, "RGBNT201", split), ("RGB", "NI", "TI"), names)


def _market_names(pid: int, count: int, rng: np.random.Generator, frames: Iterator[int]) -> list[str]:
    label = "-1" if pid == -1 else f"{pid:04d}"
    return [f"{label}_c{cam}s{int(rng.integers(1, 7))}_{next(frames):06d}_{int(rng.integers(1, 9)):02d}.jpg"
            for cam in _cameras(count, 6, rng)]


def build_market_mm(root: str, rng: np.random.Generator, dirname: str = "Market1501-MM") -> None:
    """Market-1501 names and splits: ids 1..1501 split 751 train / 750 test; gallery with 2,793
    distractors (pid 0) and 3,819 junk images (pid -1, dropped by the reader)."""
    frames = iter(range(1, 10**6))
    perm = rng.permutation(np.arange(1, 1502))
    train_ids, test_ids = np.sort(perm[:751]), np.sort(perm[751:])
    splits = {
        "train": [n for pid, c in zip(train_ids, _split_count(12936, 751, rng))
                  for n in _market_names(int(pid), c, rng, frames)],
        # 4 or 5 query images per id, at most one per camera (as Market-1501)
        "query": [n for pid, c in zip(test_ids, 4 + np.isin(np.arange(750), rng.permutation(750)[:3368 - 4 * 750]))
                  for n in _market_names(int(pid), int(c), rng, frames)],
        "gallery": [n for pid, c in zip(test_ids, _split_count(15913 - 2793, 750, rng))
                    for n in _market_names(int(pid), c, rng, frames)]
        + _market_names(0, 2793, rng, frames) + _market_names(-1, 3819, rng, frames),
    }
    for split, names in splits.items():
        _write_modalities(os.path.join(root, dirname, split), ("RGB", "NI", "TI"), names)


def build_rgbnt100(root: str, rng: np.random.Generator) -> None:
    """``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/<pid:04>_c<cam:04>_<n:03>.jpg``:
    one strip per sample; the 1,715 query files are copies of gallery files (same names)."""
    perm = rng.permutation(np.arange(1, 101))
    base = os.path.join(root, "RGBNT100", "rgbir")
    gallery_by_id = []
    for folder, pids, total in (("bounding_box_train", np.sort(perm[:50]), 8675),
                                ("bounding_box_test", np.sort(perm[50:]), 8575)):
        names = []
        for pid, count in zip(pids, _split_count(total, 50, rng)):
            shots: dict[int, int] = {}
            own = []
            for cam in _cameras(count, 8, rng):
                shots[cam] = shots.get(cam, -1) + 1
                own.append(f"{pid:04d}_c{cam:04d}_{shots[cam]:03d}.jpg")
            names += own
            gallery_by_id.append(own)
        _touch(os.path.join(base, folder), names)
    gallery_by_id = gallery_by_id[50:]
    query = [str(rng.choice(own)) for own in gallery_by_id]  # every test id has a query
    rest = sorted(set(n for own in gallery_by_id for n in own) - set(query))
    query += rng.choice(rest, size=1715 - 50, replace=False).tolist()
    _touch(os.path.join(base, "query"), query)


def _msvr_names(pid: int, count: int, rng: np.random.Generator, scenes: Iterator[int]) -> list[str]:
    """``count`` images of vehicle ``pid`` over a few scenes, each seen from several of the 8 views."""
    names, n = [], 0
    while n < count:
        scene, views = next(scenes), int(rng.integers(2, 9))
        for view in rng.permutation(8)[:min(views, count - n)]:
            names.append(f"{pid:04d}_s{scene:03d}_v{view}_{n:03d}.jpg")
            n += 1
    return names


def build_msvr310(root: str, rng: np.random.Generator, dirname: str = "MSVR310") -> None:
    """``MSVR310/{bounding_box_train,query3,bounding_box_test}/<pid:04>/{vis,ni,th}/<pid>_s<scene>_v<view>_<n>.jpg``;
    query3 = every test image of 52 of the 155 test ids (the other 103 are gallery distractors)."""
    scenes = iter(range(1, 10**4))
    perm = rng.permutation(np.arange(1, 311))
    train_ids, test_ids = np.sort(perm[:155]), np.sort(perm[155:])
    query_ids = set(rng.choice(test_ids, size=52, replace=False).tolist())
    query_mask = np.array([pid in query_ids for pid in test_ids])
    counts = {"train": dict(zip(train_ids.tolist(), _split_count(1032, 155, rng)))}
    # query ids: at least 5 images, so they span two scenes and keep positives under the scene rule
    counts["test"] = dict(zip(test_ids[query_mask].tolist(), [c + 4 for c in _split_count(591 - 52 * 4, 52, rng)]))
    counts["test"].update(zip(test_ids[~query_mask].tolist(), _split_count(1055 - 591, 103, rng)))
    base = os.path.join(root, dirname)
    for split, by_id in counts.items():
        for pid, count in sorted(by_id.items()):
            names = _msvr_names(pid, count, rng, scenes)
            folders = ["bounding_box_train"] if split == "train" else ["bounding_box_test"]
            if split == "test" and pid in query_ids:
                folders.append("query3")
            for folder in folders:
                _write_modalities(os.path.join(base, folder, f"{pid:04d}"), ("vis", "ni", "th"), names)


BUILDERS: dict[str, Callable[[str, np.random.Generator], None]] = {
    "RGBNT201": build_rgbnt201, "Market-MM": build_market_mm, "RGBNT100": build_rgbnt100,
    "MSVR310": build_msvr310,
}


def _valid_queries(dataset: MultiModalDataset) -> int:
    """Queries keeping a same-id gallery item after the dataset's own protocol filter (eval_metadata)."""
    meta = dataset.eval_metadata(dataset.query, dataset.gallery)
    key = "sceneids" if "q_sceneids" in meta else "camids"  # what the protocol compares besides the pid
    kept: dict[int, set[int]] = {}
    for pid, k in zip(meta["g_pids"], meta[f"g_{key}"]):
        kept.setdefault(pid, set()).add(k)
    return sum(bool(kept.get(pid, set()) - {k}) for pid, k in zip(meta["q_pids"], meta[f"q_{key}"]))


def check(name: str, root: str, seed: int = 0) -> tuple[bool, str]:
    """Build ``name``'s full-size tree under ``root`` and read it; (passed, report text)."""
    start = time.time()
    BUILDERS[name](root, np.random.default_rng(seed))
    built = time.time()
    dataset = make_dataset(name, root)
    stats = dataset.statistics()
    expected, cameras = OFFICIAL[name]
    got = {split: stats[split][:2] for split in expected}
    passed = got == expected and dataset.num_cameras == cameras

    def fmt(splits: dict[str, tuple[int, int]], cams: int) -> str:
        return " · ".join(f"{ids}/{samples:,}" for ids, samples in splits.values()) + f" ({cams} cams)"

    report = (f"{dataset.format_statistics()}\n"
              f"queries with a positive under the {dataset.protocol} rule: {_valid_queries(dataset)}/"
              f"{len(dataset.query)}\n"
              f"{'PASS' if passed else 'FAIL'} {name}: {fmt(got, dataset.num_cameras)}; official "
              f"{fmt(expected, cameras)} [built in {built - start:.1f} s, read in {time.time() - built:.1f} s]")
    return passed, report


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("check_dataset_trees", __doc__)
    parser.add_argument("--datasets", nargs="+", default=list(OFFICIAL), choices=list(OFFICIAL))
    parser.add_argument("--root", default="", help="folder in which a fresh sub-folder receives the trees "
                        "(default: the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the trees instead of deleting them")
    parser.add_argument("--seed", type=at_least(0), default=0)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check every benchmark asked for; exit code 1 when one does not match its official sizes."""
    logging.getLogger().setLevel(logging.WARNING)  # the readers' statistics tables are in the reports
    if args.root:
        os.makedirs(args.root, exist_ok=True)
    root = tempfile.mkdtemp(prefix="mhcf-trees-", dir=args.root or None)  # never reuse the user's folder
    failures = 0
    try:
        for name in args.datasets:
            passed, report = check(name, os.path.join(root, name), args.seed)
            print(report + "\n")
            failures += not passed
    finally:
        if args.keep:
            print(f"trees kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{len(args.datasets) - failures}/{len(args.datasets)} benchmarks match the official split sizes")
    if failures:
        sys.exit(1)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
