"""utils/allocator.py: glibc malloc keeps large freed blocks mapped (no page faults on reuse), and leaves a
user's own allocator settings alone."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Ten "training steps", each allocating, writing and freeing buffers of 1-19 MiB (82 MiB in all), after
# three warm-up steps; prints the minor page faults of the ten and whether the tuning was applied.
PROBE = """
import json, resource, sys
import torch
from utils.allocator import tune_glibc_malloc
applied = tune_glibc_malloc() if sys.argv[1] == "tune" else None
def step():
    held = [torch.ones(mib << 18) for mib in (1, 3, 6, 12, 19, 1, 3, 6, 12, 19)]
    del held
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "applied": applied}))
"""

PAGES_PER_STEP = (2 * 41 << 20) // 4096


def _is_glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
        return True
    except (OSError, AttributeError):
        return False


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not (k.startswith("MALLOC_") and k.endswith("_"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not _is_glibc(), reason="glibc malloc only")
def test_tuned_malloc_reuses_freed_blocks_without_page_faults():
    tuned = probe("tune")
    assert tuned["applied"] is True
    assert tuned["faults"] < PAGES_PER_STEP // 10  # ten steps of 82 MiB: (almost) nothing faulted in again


@pytest.mark.skipif(not _is_glibc(), reason="glibc malloc only")
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_user_allocator_settings_are_left_alone(env):
    # the user's setting (return free memory at once) stays in force: every step faults its pages in again
    result = probe("tune", **env)
    assert result["applied"] is False
    assert result["faults"] > 9 * PAGES_PER_STEP


def test_cpu_device_resolution_tunes_malloc_once(monkeypatch):
    from processor import distributed
    from utils import allocator

    calls = []
    monkeypatch.setattr(distributed, "tune_glibc_malloc", lambda: calls.append(1))
    assert distributed.resolve_device("cpu").type == "cpu"
    assert calls == [1]
    monkeypatch.setattr(allocator, "_applied", True)
    assert allocator.tune_glibc_malloc() is True  # process-wide: the first outcome is kept
