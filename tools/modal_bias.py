"""Quantify modal bias of a checkpoint: retrieval per modality subset, modality gap through the heat
cycles, energy and variance shares, learned conductivities and gates.

    python -m tools.modal_bias --config_file configs/Synthetic/MHCF.yml \
        TEST.WEIGHT output/Synthetic/model_final.pth

Prints Markdown tables and writes ``<OUTPUT_DIR>/modal_bias.json`` and ``modal_bias.md`` (``--out`` to
choose the folder).
"""

import argparse
from collections.abc import Sequence

from processor.modal_bias import analyse_modal_bias, format_modal_bias

from .common import add_config_arguments, at_least, load_model_and_data, run_tool, tool_parser, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("modal_bias", __doc__)
    parser.add_argument("--out", default="", help="output folder (default: the config's OUTPUT_DIR)")
    parser.add_argument("--max-samples", type=at_least(1), default=2000,
                        help="test samples (evenly spaced) for the feature statistics (default 2000)")
    add_config_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    cfg, model, dataset, device = load_model_and_data(args)
    report = {"weight": cfg.TEST.WEIGHT,
              **analyse_modal_bias(cfg, model, dataset, device, max_samples=args.max_samples)}
    table = format_modal_bias(report)
    write_report(args.out or cfg.OUTPUT_DIR, "modal_bias", report, table,
                 f"# Modal bias of {cfg.TEST.WEIGHT} on {dataset.name}\n\n{table}\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
