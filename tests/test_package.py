"""The installable library (pyproject.toml): ``pip install -e .`` into a fresh environment gives ``import bavit``
and the ``bavit`` command from any folder, with the shipped checkpoint found beside the package. Offline: the fresh
environment borrows this one's packages (a .pth file) and pip neither downloads dependencies nor a build backend."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_editable_gives_the_package_and_the_command(tmp_path):
    env = tmp_path / "env"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(env)], check=True,
                   timeout=300)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this environment's packages
    # the fresh environment's own setuptools (if its Python ships one) would shadow this one's, the build backend
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], capture_output=True, timeout=300)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                              str(ROOT)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing found by the working directory
    elsewhere.mkdir()
    helped = subprocess.run([str(env / "bin" / "bavit"), "--help"], cwd=elsewhere, capture_output=True, text=True,
                            timeout=300)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: bavit "), helped.stderr[-2000:]
    assert "evaluate" in helped.stdout and "calibrate" in helped.stdout
    code = ("import bavit; from bavit.core.registry import DEFAULT_BAVIT_CHECKPOINT as c; "
            "print(bavit.__file__); print(c.is_file()); print(bavit.Predictor.__name__)")
    found = subprocess.run([str(python), "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    path, shipped, name = found.stdout.split()
    assert Path(path) == ROOT / "bavit" / "__init__.py" and shipped == "True" and name == "Predictor"
