"""Every tool runs as the README documents it, ``python -m tools.<name>``, and answers ``--help``.

``python -m`` runs a module through ``runpy.run_module(name, run_name="__main__")``; one interpreter does that
for every tool in turn, so the test pays torch's import once instead of once per tool.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "tools"))
               if f.endswith(".py") and f not in ("__init__.py", "common.py", "reference_mhcf.py"))

DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            runpy.run_module(f"tools.{name}", run_name="__main__", alter_sys=True)
            code = None
        except SystemExit as exc:
            code = exc.code
    out[name] = [code, text.getvalue()]
print(json.dumps(out))
"""


def test_every_tool_answers_help_as_documented():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert TOOLS and all(f"python -m tools.{name}" in readme for name in TOOLS), "a tool the README does not show"
    result = subprocess.run([sys.executable, "-c", DRIVER, *TOOLS], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=True)
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for name in TOOLS:
        code, text = answers[name]
        assert code in (0, None), f"{name}: exit {code}\n{result.stderr[-2000:]}"
        assert text.startswith(f"usage: python -m tools.{name}"), text[:200]


def test_invalid_tool_arguments_are_one_line(capsys):
    """A wrong option or value: one line on stderr naming it, exit code 2 (in-process: torch is loaded)."""
    import importlib

    cases = [
        ("modal_bias", ["--max-samples", "0"], "argument --max-samples: must be >= 1, got 0"),
        ("modal_bias", ["--bogus"], "unrecognized arguments: --bogus"),
        ("visualize", [], "the following arguments are required: command"),
        ("visualize", ["ranks", "--topk", "-1"], "argument --topk: must be >= 1, got -1"),
        ("visualize", ["heatmaps", "--dpi", "0"], "argument --dpi: must be >= 1, got 0"),
        ("visualize", ["tsne", "--perplexity", "0.5"], "argument --perplexity: must be a finite number >= 1, got 0.5"),
        ("visualize", ["ranks", "--indices", "1,x"], "argument --indices: expected comma-separated integers"),
        ("bench_eval", ["--noise", "nan"], "argument --noise: must be a finite number >= 0, got nan"),
        ("bench_eval", ["--queries", "many"], "argument --queries: expected an integer, got 'many'"),
        ("benchmark", ["--iters", "0"], "argument --iters: must be >= 1, got 0"),
        ("check_dataset_trees", ["--datasets", "Nope"], "argument --datasets: invalid choice: 'Nope'"),
        ("reproduce_tables", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ]
    for name, argv, expected in cases:
        with pytest.raises(SystemExit) as stop:
            importlib.import_module(f"tools.{name}").main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, (name, argv, err)
        assert err.startswith(f"error: python -m tools.{name}") and expected in err, (name, argv, err)
