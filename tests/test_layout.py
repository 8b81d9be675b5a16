"""Import direction: every package imports only the ones below it; light stages stay torch-free."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# bottom to top: a package may import itself and those before it, never one after it
FLOORS = ("common", "tasks", "train", "export", "serve", "telemetry", "dashboards", "deploy", "bench")


def _project_imports(path: Path) -> set[str]:
    """The fracture packages a module imports (absolute imports, at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[0] for n in names} & set(FLOORS)
    return found


def test_every_import_flows_downstream():
    upstream = []
    for floor, pkg in enumerate(FLOORS):
        for path in sorted((REPO / pkg).rglob("*.py")):
            bad = {m for m in _project_imports(path) if FLOORS.index(m) > floor}
            upstream += [f"{path.relative_to(REPO)} imports {m}" for m in sorted(bad)]
    assert not upstream, upstream


def test_every_package_is_on_a_floor():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS)


@pytest.mark.parametrize("module, banned", [
    ("common", {"torch", "numpy", "transformers", "tasks", "train", "telemetry"}),
    ("tasks", {"torch", "numpy", "transformers", "train", "telemetry"}),
    ("common.accuracy_table", {"torch", "transformers", "telemetry"}),
    ("telemetry.analysis", {"torch", "transformers"}),
    ("telemetry.sources", {"torch", "transformers"}),
    ("serve.app", {"torch", "transformers"}),
])
def test_imports_stay_downstream_and_light(module, banned):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            f"bad = {sorted(banned)!r}; hit = [m for m in bad if m in sys.modules]; sys.exit(str(hit) if hit else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"{module} imported {res.stderr or res.stdout}"


def test_the_serve_requirements_pin_what_pyproject_pins():
    """requirements-serve.txt (the edge server without torch) repeats pins from pyproject.toml: they agree."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(d.split("==") for d in project["dependencies"])
    serve = [line.split("#")[0].strip() for line in (REPO / "requirements-serve.txt").read_text().splitlines()]
    serve = dict(line.split("==") for line in serve if line)
    assert serve and {k: pins.get(k) for k in serve} == serve
