"""Logging set-up: console + ``OUTPUT_DIR/<name>.log`` on the main process, warnings only elsewhere.

A log file is appended to, run after run; each run starts with a header line naming its command line and
process, after a blank line, so the runs in one file stay apart.
"""

import logging
import logging.handlers
import os
import sys

__all__ = ["open_held_log_file", "setup_logging"]

_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class _HeldLogFile(logging.handlers.BufferingHandler):
    """The records meant for a log file, kept in memory until :func:`open_held_log_file` writes them there."""

    def __init__(self, path: str):
        super().__init__(capacity=0)
        self.path = path

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False


def setup_logging(output_dir: str | None = None, filename: str = "train.log", main_process: bool = True,
                  hold_file: bool = False) -> None:
    """Configure the root logger once per process; library modules log through ``getLogger(__name__)``.

    ``hold_file``: the log file is neither created nor appended to until :func:`open_held_log_file` (a run
    that stops at start-up leaves an existing log byte-identical); its records are kept until then."""
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
        path = os.path.join(output_dir, filename)
        earlier = os.path.isfile(path) and os.path.getsize(path) > 0
        root.addHandler(_HeldLogFile(path) if hold_file else _file_handler(path))
        logging.getLogger(__name__).info("%s new run (pid %d): %s %s%s", "=" * 8, os.getpid(),
                                         os.path.basename(sys.executable), " ".join(sys.argv),
                                         f"; earlier runs above in {path}" if earlier else "")


def open_held_log_file() -> None:
    """Open the log file :func:`setup_logging` held back, write the records logged so far and log into it."""
    root = logging.getLogger()
    for held in [h for h in root.handlers if isinstance(h, _HeldLogFile)]:
        file_handler = _file_handler(held.path)
        for record in held.buffer:
            file_handler.handle(record)
        root.removeHandler(held)
        held.close()
        root.addHandler(file_handler)


def _file_handler(path: str) -> logging.FileHandler:
    """A handler appending to ``path``, after a blank line when the file already holds earlier runs."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    earlier = os.path.isfile(path) and os.path.getsize(path) > 0
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    if earlier:
        handler.stream.write("\n")
    return handler
