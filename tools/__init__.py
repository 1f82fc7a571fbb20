"""Optional entry points, run from the repository root as ``python -m tools.<name>``: table
reproduction, modal-bias analysis and visualisations."""
