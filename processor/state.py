"""The training state that ``last.pth`` carries besides the model and optimizer: random generators, and the
temporaries a run killed while saving leaves behind."""

import os
import random

import numpy as np
import torch

from utils.files import is_temporary

__all__ = ["remove_stale_temporaries", "rng_state", "set_rng_state"]


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary checkpoint files of atomic writes that were killed before their rename."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder) if is_temporary(name, ".pth")]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
