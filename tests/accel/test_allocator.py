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

# Ten "training steps", each allocating, writing and freeing buffers of 1-19 MiB (82 MiB in all) with glibc's
# malloc (as PyTorch's CPU allocator does), after three warm-up steps; prints the minor page faults of the ten
# and whether the tuning was applied. Mode "eager" first sets glibc, in-process, to return free memory to the
# kernel at once (its default behaviour at its worst, made deterministic); "+tune" then calls
# tune_glibc_malloc. accel/allocator.py is loaded on its own (it needs only the standard library), so the
# probe does not pay for importing torch.
PROBE = """
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("allocator", "accel/allocator.py")
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1].startswith("eager"):
    libc.mallopt(allocator.M_TRIM_THRESHOLD, 0)
applied = allocator.tune_glibc_malloc() if sys.argv[1].endswith("tune") else None
def step():
    held = [libc.malloc(mib << 20) for mib in (1, 3, 6, 12, 19, 1, 3, 6, 12, 19)]
    for pointer, mib in zip(held, (1, 3, 6, 12, 19, 1, 3, 6, 12, 19)):
        ctypes.memset(pointer, 1, mib << 20)
    for pointer in held:
        libc.free(pointer)
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
    eager = probe("eager")
    assert eager["faults"] > 9 * PAGES_PER_STEP  # every step faults its 82 MiB in again
    for mode in ("tune", "eager+tune"):
        tuned = probe(mode)
        assert tuned["applied"] is True
        assert tuned["faults"] < PAGES_PER_STEP // 10  # ten steps: (almost) nothing faulted in again


@pytest.mark.skipif(not _is_glibc(), reason="glibc malloc only")
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_user_allocator_settings_are_left_alone(env):
    # the user's setting (return free memory at once) stays in force: every step faults its pages in again
    result = probe("tune", **env)  # the environment's setting alone, as in mode "eager"
    assert result["applied"] is False
    assert result["faults"] > 9 * PAGES_PER_STEP


def test_only_allocators_in_ld_preload_count_as_a_user_choice(monkeypatch):
    from accel import allocator

    for name in [k for k in os.environ if k in ("GLIBC_TUNABLES", "LD_PRELOAD") or k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LD_PRELOAD", "/opt/intel/lib/libiomp5.so")
    assert allocator._user_choice() is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2:/opt/intel/lib/libiomp5.so")
    assert allocator._user_choice() == "LD_PRELOAD"


def test_the_settings_are_process_wide_and_applied_once(monkeypatch):
    from accel import allocator

    monkeypatch.setattr(allocator, "_applied", True)
    assert allocator.tune_glibc_malloc() is True  # the first call's outcome is kept
