"""Quantify modal bias of a checkpoint: retrieval per modality subset, modality gap through the heat
cycles, energy and variance shares, learned conductivities and gates.

    python -m tools.modal_bias --config_file configs/Synthetic/MHCF.yml \
        TEST.WEIGHT output/Synthetic/model_final.pth

Prints Markdown tables and writes ``<OUTPUT_DIR>/modal_bias.json`` and ``modal_bias.md`` (``--out`` to
choose the folder).
"""

import argparse
import json
import os
from collections.abc import Sequence

from processor.analysis import analyse_modal_bias, format_modal_bias

from .common import add_config_arguments, load_model_and_data, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="", help="output folder (default: the config's OUTPUT_DIR)")
    parser.add_argument("--max-samples", type=int, default=2000,
                        help="test samples (evenly spaced) for the feature statistics (default 2000)")
    add_config_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> dict:
    cfg, model, dataset, device = load_model_and_data(args)
    report = {"weight": cfg.TEST.WEIGHT,
              **analyse_modal_bias(cfg, model, dataset, device, max_samples=args.max_samples)}
    table = format_modal_bias(report)
    out = args.out or cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "modal_bias.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "modal_bias.md"), "w") as f:
        f.write(f"# Modal bias of {cfg.TEST.WEIGHT} on {dataset.name}\n\n{table}\n")
    print(table)
    print(f"\nwrote {os.path.join(out, 'modal_bias.json')} and modal_bias.md")
    return report


def cli(argv: Sequence[str] | None = None) -> None:
    run_tool(main, build_parser(), argv)


if __name__ == "__main__":
    cli()
