"""`make demo`'s last part on a reduced fleet, end to end: serve, replay, analyse, summarise, stop."""

import subprocess
import sys

from tests.train.conftest import REPO


def test_reduced_demo_runs_end_to_end_and_stops_what_it_started(population, tmp_path):
    reports = tmp_path / "reports"
    res = subprocess.run([sys.executable, "-m", "deploy.demo", f"--sweep={population['sweep']}", "--eval-items=10",
                          "--concurrency=8", f"--reports={reports}"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "== summary" in out and "report:" in out and "timings (s):" in out
    assert out.split("== summary")[1].splitlines()[1].startswith("fragmentation index")  # the verdict comes first
    assert (reports / "pop" / "report.html").is_file() and (reports / "pop-served" / "summary.json").is_file()
    for variant in ("torch-fp32", "onnx-fp32", "ort-int8"):
        assert variant in out.split("== summary")[1]
    served = (population["sweep"] / "served-accuracy.csv").read_text().splitlines()
    assert len(served) == 1 + 6 * 2 * 5 and all(line.split(",")[4] == "10" for line in served[1:])
    leftovers = subprocess.run(["pgrep", "-f", f"sweep={population['sweep']}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left a server running"
