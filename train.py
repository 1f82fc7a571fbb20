"""Train MHCF: ``python train.py --config_file configs/<DATASET>/MHCF.yml [KEY VALUE ...]``.

Distributed: ``torchrun --nproc_per_node N train.py --config_file ...``.
"""

from processor import preflight
from processor.cli import run_cli


def main(cfg):
    with preflight.training(cfg):  # OUTPUT_DIR checked and locked before torch is imported
        from processor.trainer import train  # after the checks: a config mistake costs no torch import

        return train(cfg)


if __name__ == "__main__":
    run_cli(main, "Train MHCF (Multi-modal Heat Cycle Fusion) for multi-modal re-identification")
