"""Shared command-line handling of ``train.py``, ``test.py`` and the tools: arguments, config, user errors, and
what every run's log starts with."""

import argparse
import logging
import sys
from collections.abc import Callable

from yacs.config import CfgNode

from config import load_config, mapped_settings
from utils.errors import UserError

__all__ = ["exit_on_user_error", "log_mapped_settings", "run_cli"]

logger = logging.getLogger(__name__)


def run_cli(main: Callable[[CfgNode], object], description: str, argv: list[str] | None = None) -> None:
    """Parse ``--config_file`` and ``KEY VALUE`` overrides, then call ``main(cfg)``.

    A :class:`UserError` anywhere becomes one line on stderr and exit code 2, without a traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config_file", default="", help="YAML file, e.g. configs/RGBNT201/MHCF.yml")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.MAX_EPOCHS 10")
    args = parser.parse_args(argv)
    exit_on_user_error(lambda: main(load_config(args.config_file or None, args.opts)))


def exit_on_user_error(fn: Callable[[], object]) -> None:
    """Call ``fn()``; a :class:`UserError` becomes one line on stderr and exit code 2, Ctrl-C exit code 130,
    both without a traceback. Whatever ends the run also goes to the run's log file, when one is open (a crash
    with its traceback)."""
    try:
        fn()
    except UserError as exc:
        _to_log_files(f"error: {exc}")
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        _to_log_files("interrupted")
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            _to_log_files(f"crashed: {type(exc).__name__}: {exc}", exc_info=sys.exc_info())
        raise


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
