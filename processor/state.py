"""The training state that ``last.pth`` carries besides the model and optimizer: random generators, and the
temporaries a run killed while saving leaves behind."""

import logging
import os
import random

import numpy as np
import torch

from utils.files import is_temporary

__all__ = ["device_rng_state", "remove_stale_temporaries", "rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary checkpoint files of atomic writes that were killed before their rename."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder) if is_temporary(name, ".pth")]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The generator state of ``device`` when it is an accelerator (None on the CPU, whose generator
    :func:`rng_state` saves)."""
    return None if device.type == "cpu" else getattr(torch, device.type).get_rng_state(device)


def rng_state(device_states: list[torch.Tensor] | None = None) -> dict:
    """Python, NumPy and torch CPU generator states, and ``device_states`` (each process's accelerator
    generator, by rank), in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
             "torch": torch.get_rng_state()}
    if device_states:
        state["devices"] = list(device_states)
    return state


def set_rng_state(state: dict, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
    """Restore the generators of :func:`rng_state`; process ``rank`` takes its own accelerator generator from
    ``state["devices"]``. Saved by another number of processes or on another kind of device, the accelerator
    generator is left as seeded (with a warning): the run continues, no longer bit-identical."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if device.type == "cpu":
        return
    saved = state.get("devices") or []
    mine = device_rng_state(device)
    if len(saved) != world_size or saved[rank].shape != mine.shape:
        logger.warning("last.pth holds %d %s generator state(s) for %d process(es) here: the %s generator "
                       "keeps its seed (the resumed run is not bit-identical to an uninterrupted one)",
                       len(saved), device.type, world_size, device)
        return
    getattr(torch, device.type).set_rng_state(saved[rank], device)
