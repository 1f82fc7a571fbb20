"""Shared command-line handling of ``train.py``, ``test.py`` and the tools: arguments, config, the one-line
ending of a run stopped by a user error, a fault or a signal, and what every run's log starts with."""

import argparse
import errno
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from yacs.config import CfgNode

from config import load_config, mapped_settings
from utils.errors import UserError

__all__ = ["ArgumentParser", "Terminated", "exit_on_user_error", "log_mapped_settings", "run_cli"]

logger = logging.getLogger(__name__)

#: Exit codes: a user error (bad input, a fault the user can fix), Ctrl-C (128 + SIGINT), SIGTERM (128 + 15).
EXIT_USER_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143

# How torch reports a DataLoader worker that died (killed by the out-of-memory killer, for one).
_WORKER_DIED = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (exited unexpectedly(?: with exit code "
                          r"-?\d+)?|is killed by signal: [^.\n]*)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line (and exit code 2) instead of the usage text."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what job schedulers send), raised in the main thread like Ctrl-C's KeyboardInterrupt, so the
    same clean-up runs: atomic writes remove their temporary file, the last checkpoint stays intact."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(main: Callable[[CfgNode], object], description: str, argv: list[str] | None = None) -> None:
    """Parse ``--config_file`` and ``KEY VALUE`` overrides, then call ``main(cfg)`` (see
    :func:`exit_on_user_error` for how a run that stops early ends)."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--config_file", default="", help="YAML file, e.g. configs/RGBNT201/MHCF.yml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.MAX_EPOCHS 10")
    args = parser.parse_args(argv)
    exit_on_user_error(lambda: main(load_config(args.config_file or None, args.opts)))


def _exit(code: int, message: str) -> None:
    """End the run: ``message`` to the run's log file (when one is open) and as one line on stderr."""
    _to_log_files(message)
    sys.stderr.write(f"{message}\n")
    sys.exit(code)


def exit_on_user_error(fn: Callable[[], object]) -> None:
    """Call ``fn()``. Without a traceback, as one line on stderr: a :class:`UserError`, a full disk or a dead
    DataLoader worker exits with code 2, Ctrl-C with 130 and SIGTERM with 143 (both after the same clean-up).
    Whatever ends the run also goes to the run's log file, when one is open (a crash with its traceback). A log
    file that cannot be written (a full disk) does not print a traceback per record."""
    raise_logging_errors, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        with _sigterm_raises():
            fn()
    except UserError as exc:
        _exit(EXIT_USER_ERROR, f"error: {exc}")
    except Terminated:
        _exit(EXIT_SIGTERM, "terminated (SIGTERM)")
    except KeyboardInterrupt:
        _exit(EXIT_SIGINT, "interrupted")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            _crashed(exc)
            raise
        _exit(EXIT_USER_ERROR, f"error: {exc.strerror}" + (f" writing {exc.filename}" if exc.filename else ""))
    except RuntimeError as exc:
        died = _WORKER_DIED.search(str(exc))
        if died is None:
            _crashed(exc)
            raise
        _exit(EXIT_USER_ERROR, f"error: DataLoader worker (pid {died.group(1).strip()}) {died.group(2)}; if "
                               f"memory ran out, lower DATALOADER.NUM_WORKERS")
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            _crashed(exc)
        raise
    finally:
        logging.raiseExceptions = raise_logging_errors


def _crashed(exc: BaseException) -> None:
    _to_log_files(f"crashed: {type(exc).__name__}: {exc}", exc_info=(type(exc), exc, exc.__traceback__))


def _to_log_files(message: str, exc_info=None) -> None:
    """Write ``message`` to the log files of the root logger only (the console gets its own line on stderr)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def log_mapped_settings(cfg: CfgNode) -> None:
    """Log the settings read under the names or spellings of the authors' configs, and how (config/authors.py)."""
    notes = mapped_settings(cfg)
    if notes:
        logger.info("read %d settings written for the authors' repository:\n  %s", len(notes), "\n  ".join(notes))
