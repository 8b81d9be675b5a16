"""Import direction (DESIGN.md): tasks <- train <- ... <- telemetry; light stages stay torch-free."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, banned", [
    ("tasks", {"torch", "numpy", "transformers", "train", "telemetry"}),
    ("train.accuracy_table", {"torch", "transformers", "telemetry"}),
    ("telemetry.analysis", {"torch", "transformers"}),
    ("telemetry.sources", {"torch", "transformers"}),
])
def test_imports_stay_downstream_and_light(module, banned):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            f"bad = {sorted(banned)!r}; hit = [m for m in bad if m in sys.modules]; sys.exit(str(hit) if hit else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"{module} imported {res.stderr or res.stdout}"
