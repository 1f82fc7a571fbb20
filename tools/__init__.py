"""Optional entry points, run from the repository root as ``python -m tools.<name>`` (or ``python tools/<name>.py``):
table reproduction, modal-bias analysis, visualisations, benchmarks and their baselines."""
