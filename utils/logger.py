"""Logging set-up: console + ``OUTPUT_DIR/<name>.log`` on the main process, warnings only elsewhere."""

import logging
import os
import sys

__all__ = ["setup_logging"]

_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logging(output_dir: str | None = None, filename: str = "train.log", main_process: bool = True) -> None:
    """Configure the root logger once per process; library modules log through ``getLogger(__name__)``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if main_process else logging.WARNING)
    formatter = logging.Formatter(_FORMAT, datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if output_dir and main_process:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename))
        file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        root.addHandler(file_handler)
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
