"""Every tool runs as the README documents it, ``python -m tools.<name>``, and answers ``--help``."""

import os
import subprocess
import sys

from tests.conftest import REPO

TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "tools"))
               if f.endswith(".py") and f not in ("__init__.py", "common.py", "reference_mhcf.py"))


def test_every_tool_answers_help_as_documented():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert TOOLS and all(f"python -m tools.{name}" in readme for name in TOOLS), "a tool the README does not show"
    procs = {name: subprocess.Popen([sys.executable, "-m", f"tools.{name}", "--help"], cwd=REPO, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in TOOLS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        assert out.startswith("usage: python -m tools.") and f"tools.{name}" in out.splitlines()[0], out[:200]
