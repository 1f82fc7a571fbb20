"""Evaluate a checkpoint: ``python test.py --config_file configs/<DATASET>/MHCF.yml TEST.WEIGHT <file>``.

``TEST.MISS all`` sweeps the missing-modality settings; results go to ``OUTPUT_DIR/test_results.json``.
"""

from processor import test
from utils.cli import run_cli

if __name__ == "__main__":
    run_cli(test, "Evaluate an MHCF checkpoint (ours or the authors' released one)")
