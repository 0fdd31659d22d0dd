"""Starting ``python app.py`` for a bench (:mod:`.app_bench`, :mod:`.browser_bench`, :mod:`.upload_memory`): on a
free local port, with its output in a log file, waiting until it answers (:func:`start_app`), and stopping it
when the bench is done (:func:`running_app`).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bavit.bench import ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(threads: int, bavit: str | None, detector: str | None, backend: str | None = None,
              timeout: float = 180.0, data: str | None = None) -> tuple[subprocess.Popen, str, Path]:
    """``python app.py`` on a free port (``--backend`` and ``--data`` when given); returns (process, url, log
    file)."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS=str(threads))
    command = [sys.executable, str(ROOT / "app.py"), "--threads", str(threads)]
    if bavit:
        command += ["--bavit", bavit]
    if detector:
        command += ["--detector", detector]
    if backend:
        command += ["--backend", backend]
    if data:
        command += ["--data", data]
    log = Path(tempfile.mkstemp(prefix="bavit-app-bench-", suffix=".log")[1])
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url, log
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"app did not start in {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def running_app(threads: int, bavit: str | None, detector: str | None, backend: str | None = None,
                stop_timeout: float = 30.0, data: str | None = None) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """:func:`start_app` for the ``with`` block: yields (process, url, log file); the app is stopped on the way out
    (SIGTERM, then a wait of up to ``stop_timeout`` s), also when the block raises."""
    process, url, log = start_app(threads, bavit, detector, backend, data=data)
    try:
        yield process, url, log
    finally:
        process.terminate()
        process.wait(timeout=stop_timeout)
