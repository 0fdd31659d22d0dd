import subprocess
import sys
from pathlib import Path

import pytest

from bavit.cli import COMMAND_MODULES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_help():
    result = subprocess.run([sys.executable, "-m", "bavit", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "evaluate"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "evaluate", "bench", "tradeoff", "map", "finetune", "export"])
def test_subcommand_help(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["app_bench", "browser_bench", "upload_memory", "batch_modes", "screenshot", "skew",
                                  "cold_start", "dataset_view"])
def test_benchmark_help(name, capsys):
    """``python -m benchmarks.NAME --help``: each app benchmark parses its own flags."""
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"benchmarks.{name}").main(["--help"])
    assert exit_info.value.code == 0
    assert f"usage: python -m benchmarks.{name}" in capsys.readouterr().out


def test_the_library_never_imports_the_benchmarks():
    """App code must not depend on benches: no module of bavit/ imports benchmarks/."""
    import ast

    for path in sorted((ROOT / "bavit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            assert not any(name.split(".")[0] == "benchmarks" for name in names), path


def test_docs_command_table_lists_exactly_the_cli_commands():
    """The command table in docs/usage.md and the parser stay in step (every command documented, none invented)."""
    import re

    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    assert len(commands) == len(COMMAND_MODULES)
    table = re.findall(r"^\| `python -m bavit ([a-z-]+)", (ROOT / "docs" / "usage.md").read_text(), flags=re.M)
    assert set(table) == commands


def test_threads_are_set_once_by_the_cli_and_checked(capsys, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        # a command that fails on its input after parsing: --threads has been applied by then
        assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors"), "--threads", "1",
                     "--coco-root", str(tmp_path)]) == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", "x", "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err
