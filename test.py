"""Evaluate a checkpoint: ``python test.py --config_file configs/<DATASET>/MHCF.yml TEST.WEIGHT <file>``.

``TEST.MISS all`` sweeps the missing-modality settings; results go to ``OUTPUT_DIR/test_results.json``.
"""

from processor import preflight
from processor.cli import run_cli


def main(cfg):
    with preflight.evaluation(cfg):  # TEST.WEIGHT and OUTPUT_DIR checked (and locked) before torch is imported
        from processor.tester import test  # after the checks: a config mistake costs no torch import

        return test(cfg)


if __name__ == "__main__":
    run_cli(main, "Evaluate an MHCF checkpoint (ours or the authors' released one)")
