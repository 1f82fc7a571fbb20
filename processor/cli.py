"""Shared command-line handling of ``train.py`` and ``test.py``: arguments, config, user errors."""

import argparse
import sys
from collections.abc import Callable

from yacs.config import CfgNode

from config import load_config
from utils.errors import UserError

__all__ = ["exit_on_user_error", "run_cli"]


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
    both without a traceback."""
    try:
        fn()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
