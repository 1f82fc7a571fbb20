"""Optional entry points: benchmarks and their baselines."""
