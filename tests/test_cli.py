import subprocess
import sys
from pathlib import Path

import pytest

from bavit.cli import COMMAND_MODULES, build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_main_help():
    result = subprocess.run([sys.executable, "-m", "bavit", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "evaluate"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "evaluate", "bench", "map", "finetune", "app-bench"])
def test_subcommand_help(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_command_module_is_present():
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"bavit.{name}")
