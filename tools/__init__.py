"""Optional entry points, each run from the repository root as ``python -m tools.<name> --help``: table
reproduction, modal-bias analysis, visualisations, benchmarks and checks.

Every tool has ``main(argv=None)``; mistakes are one line on stderr with exit code 2, as for ``train.py``.
:mod:`tools.reference_mhcf` and :mod:`tools.common` are modules the tools use, not tools.
"""
