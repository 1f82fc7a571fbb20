"""When the CPU kernels of this package run, and whether they compute what they should on this machine."""

import logging
from collections.abc import Callable, Iterable

import torch

__all__ = ["fast_path", "kernels_agree"]

logger = logging.getLogger(__name__)


def fast_path(x: torch.Tensor) -> bool:
    """Where the oneDNN kernels run: float32 CPU tensors outside autocast and ``torch.compile``. The modules of
    this package compute PyTorch's stock forward elsewhere."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


def kernels_agree(what: str, reference: str,
                  results: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> bool:
    """Whether kernels compute what they should on a small probe: ``results()`` gives (float32 kernel output,
    float64 ``reference`` value) pairs, compared to 1e-4. A kernel error or a disagreement is logged as a
    warning naming ``what``, and the caller keeps PyTorch's kernels."""
    try:
        ok = all(torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4) for got, want in results())
    except RuntimeError as err:
        logger.warning("%s unavailable, using PyTorch's (%s)", what, str(err).partition("\n")[0] or type(err).__name__)
        return False
    if not ok:
        logger.warning("%s disagree with %s on this machine, using PyTorch's", what, reference)
    return ok
