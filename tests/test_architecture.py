"""The import rules of docs/architecture.md, read from the source: layers only import downwards, the model
never imports the CPU fast path, tools use public names only, and test.py does not load the training stack."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

#: package -> project packages it may import (its own included)
ALLOWED = {
    "accel": {"accel"}, "loss": {"loss"}, "solver": {"solver"},
    "utils": {"utils", "accel"},
    "config": {"config", "utils"}, "datasets": {"datasets", "utils"}, "model": {"model", "utils"},
    "processor": {"processor", "accel", "loss", "solver", "utils", "config", "datasets", "model"},
}
PACKAGES = {*ALLOWED, "tools", "tests"}


def _modules(package: str) -> list[str]:
    folder = os.path.join(REPO, package)
    return sorted(os.path.relpath(os.path.join(d, f), REPO) for d, _, files in os.walk(folder) for f in files
                  if f.endswith(".py"))


def _imports(path: str) -> list[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` of every import statement of a file (relative ones resolved)."""
    with open(os.path.join(REPO, path)) as f:
        tree = ast.parse(f.read())
    here = os.path.dirname(path).replace(os.sep, ".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            out.append((base, [alias.name for alias in node.names]))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_their_layer_or_lower(package):
    wrong = [f"{path} imports {module}" for path in _modules(package) for module, _ in _imports(path)
             if module.split(".")[0] in PACKAGES and module.split(".")[0] not in ALLOWED[package]]
    assert not wrong


def test_tools_import_only_public_names():
    private = []
    for path in _modules("tools"):
        for module, names in _imports(path):
            if module.split(".")[0] not in ALLOWED:
                continue
            target = importlib.import_module(module)
            public = getattr(target, "__all__", None)
            for name in names:
                if hasattr(target, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None:
                    continue  # a submodule
                if public is None or name not in public:
                    private.append(f"{path}: {module}.{name}")
    assert not private


def test_test_py_does_not_load_the_training_stack():
    code = ("import sys, test; test.main.__code__; import processor.tester; "
            "print(sorted(m for m in sys.modules if m.startswith(('processor.trainer', 'torch.utils.tensorboard'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
