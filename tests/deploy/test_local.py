"""`make up` and `python -m serve` check their ports before starting anything (real sockets on 127.0.0.1)."""

import socket
import subprocess
import sys
import time

import pytest

from common.net import free_port
from deploy.local import REPO, Services, start_stack


@pytest.fixture
def occupied():
    """A port on 127.0.0.1 that something listens on for the test's duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        yield s.getsockname()[1]


def test_serve_refuses_a_port_in_use_before_loading_any_model(occupied, tmp_path):
    """It loaded every model and then died with Errno 98; now one line, at once."""
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "serve", f"--sweep={tmp_path}", f"--port={occupied}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and time.monotonic() - started < 30
    assert f"port {occupied} on 127.0.0.1 is in use" in res.stderr and "Traceback" not in res.stderr


def test_make_up_names_the_busy_port_and_starts_nothing(occupied, tmp_path):
    """`make up` said only "process exited with 3 (logs in .run)"."""
    services = Services(tmp_path / "state")
    with pytest.raises(RuntimeError, match=rf"{occupied} \(--watch-port"):
        start_stack(services, str(tmp_path), server_port=free_port(), watch_port=occupied, prom_port=free_port())
    assert services.procs == {}
