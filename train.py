"""Train MHCF: ``python train.py --config_file configs/<DATASET>/MHCF.yml [KEY VALUE ...]``.

Distributed: ``torchrun --nproc_per_node N train.py --config_file ...``.
"""

from processor import train
from utils.cli import run_cli

if __name__ == "__main__":
    run_cli(train, "Train MHCF (Multi-modal Heat Cycle Fusion) for multi-modal re-identification")
