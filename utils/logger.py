"""Logging set-up: console + ``OUTPUT_DIR/<name>.log`` on the main process, warnings only elsewhere.

A log file is appended to, run after run; each run starts with a header line naming its command line and
process, after a blank line, so the runs in one file stay apart.
"""

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
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if output_dir and main_process:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, filename)
        earlier = os.path.isfile(path) and os.path.getsize(path) > 0
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        if earlier:
            file_handler.stream.write("\n")
        root.addHandler(file_handler)
        logging.getLogger(__name__).info("%s new run (pid %d): %s %s%s", "=" * 8, os.getpid(),
                                         os.path.basename(sys.executable), " ".join(sys.argv),
                                         f"; earlier runs above in {path}" if earlier else "")
