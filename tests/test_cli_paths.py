"""Output paths are checked before a command starts its work, and every user error is one line + exit 2.

Each command below is run through ``bavit.cli.main`` (a benchmark of ``benchmarks/`` through its own ``main``) with
the function that starts its work replaced by one that fails the test if called: a bad ``--json`` / ``--out`` must be
refused before it (not after minutes of evaluation).
"""
import errno
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from apphelpers import random_bavit_checkpoint, tiny_yolos_dir

from bavit.cli import main
from bavit.deploy.export import FILES, MANIFEST, WRITTEN

ROOT = Path(__file__).resolve().parents[1]
HAS_PROC = Path("/proc/self").is_dir()  # a folder where no file can be created, even as root

# command -> the function whose call starts the command's work (module, attribute)
WORK = {
    "export": ("bavit.predictor", "Predictor"),
    "bench": ("bavit.bench.latency", "run_bench"),
    "tradeoff": ("bavit.bench.tradeoff", "run_tradeoff"),
    "evaluate": ("bavit.cli.evaluate", "read_checkpoint"),
    "calibrate": ("bavit.cli.calibrate", "read_checkpoint"),
    "map": ("bavit.pruning.detector", "load_yolos_model"),
    "finetune": ("bavit.pruning.detector", "load_yolos_model"),
    "train": ("bavit.cli.train", "records_from_args"),
    "benchmarks.app_bench": ("benchmarks.app_bench", "client_bench"),
    "benchmarks.browser_bench": ("benchmarks.browser_bench", "run_browser"),
    "benchmarks.upload_memory": ("benchmarks.upload_memory", "memory_bench"),
    "benchmarks.dataset_view": ("benchmarks.dataset_view", "dataset_view"),
}


def run_command_line(command: str, argv: list[str]) -> int:
    """``python -m bavit COMMAND ARGV``, or ``python -m benchmarks.NAME ARGV`` for a benchmark's own command."""
    if command.startswith("benchmarks."):
        return importlib.import_module(command).main(argv)
    return main([command, *argv])


def forbid_work(monkeypatch, command: str) -> None:
    def started(*args, **kwargs):
        raise AssertionError(f"{command} started its work before refusing its output path")

    module, name = WORK[command]
    monkeypatch.setattr(importlib.import_module(module), name, started)


def assert_user_error(capsys, code: int, *fragments: str) -> str:
    """Exit code 2, nothing on stdout, one line on stderr that starts with ``error:`` and holds ``fragments``."""
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """``tmp_path`` as the current folder, holding a file ``afile`` and a folder ``adir`` with ``precious.txt``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "precious.txt").write_text("p\n")
    return tmp_path


def listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "/") for p in sorted(root.rglob("*"))}


# (argv after the command, what the message names)
CASES = [
    ("export", ["--out", "/proc/x"], "/proc"),
    ("export", ["--out", "afile/sub"], "afile is a file"),
    ("export", ["--out", "."], "current folder"),
    ("export", ["--out", "afile"], "is a file"),
    ("export", ["--out", "adir"], "no export.json"),
    ("bench", ["--json", "/proc/x/bench.json"], "/proc"),
    ("bench", ["--json", "adir"], "is a folder"),
    ("bench", ["--plot", "afile/plot.png"], "afile is a file"),
    ("tradeoff", ["--checkpoint", "x.safetensors", "--json", "/proc/x/tradeoff.json"], "/proc"),
    ("tradeoff", ["--checkpoint", "x.safetensors", "--plot", "adir"], "is a folder"),
    ("evaluate", ["--checkpoint", "x.safetensors", "--json", "/proc/x/eval.json"], "/proc"),
    ("evaluate", ["--checkpoint", "x.safetensors", "--plot", "adir"], "is a folder"),
    ("calibrate", ["--checkpoint", "/proc/x/bavit.safetensors"], "/proc"),
    ("map", ["--markdown", "adir"], "is a folder"),
    ("map", ["--json", "/dev/null"], "not a regular file"),
    ("finetune", ["--output", "afile"], "is a file"),
    ("train", ["--out", "afile"], "is a file"),
    ("train", ["--output", "adir"], "is a folder"),
    ("benchmarks.app_bench", ["--json", "/proc/x/app.json"], "/proc"),
    ("benchmarks.browser_bench", ["--json", "adir"], "is a folder"),
    ("benchmarks.upload_memory", ["--json", "/proc/x/memory.json"], "/proc"),
    ("benchmarks.dataset_view", ["--json", "adir"], "is a folder"),
]


@pytest.mark.parametrize("command,argv,fragment", CASES, ids=[f"{c}-{' '.join(a)}" for c, a, _ in CASES])
def test_an_unwritable_output_is_refused_before_the_work(command, argv, fragment, place, monkeypatch, capsys):
    if any(arg.startswith("/proc") for arg in argv) and not HAS_PROC:
        pytest.skip("no /proc here")
    before = listing(place)
    forbid_work(monkeypatch, command)
    line = assert_user_error(capsys, run_command_line(command, argv), fragment)
    assert argv[-1] in line  # the message names the path (each case ends with it)
    assert listing(place) == before  # nothing replaced, moved (.afile.old) or left behind (probes)


def test_export_keeps_a_folder_that_is_not_an_export(place, monkeypatch, capsys):
    forbid_work(monkeypatch, "export")
    (place / "adir" / MANIFEST).write_text("{}\n")  # looks like an export, but holds more than an export writes
    assert_user_error(capsys, main(["export", "--out", "adir"]), "precious.txt")
    assert (place / "adir" / "precious.txt").read_text() == "p\n"
    assert sorted(p.name for p in place.iterdir()) == ["adir", "afile"]


def test_export_never_replaces_a_file(place, monkeypatch, capsys):
    forbid_work(monkeypatch, "export")
    assert_user_error(capsys, main(["export", "--out", "afile"]), "afile")
    assert (place / "afile").read_text() == "keep me\n"
    assert not (place / ".afile.old").exists()


def test_export_all_checks_its_folder_before_exporting(place):
    """The library function too (the CLI checks first; other callers get the same rule, before any graph)."""
    from bavit.deploy.export import export_all
    from bavit.errors import ConfigError

    before = listing(place)
    for out in ("adir", "afile", "afile/sub", "."):
        with pytest.raises(ConfigError):  # None for both models: nothing is exported before the check
            export_all(out, None, None, bavit_source="-", detector_source="-", detector_pretrained=False)
    assert listing(place) == before


def test_export_replaces_an_earlier_export_or_an_empty_folder(tmp_path, monkeypatch, capsys):
    """Into a new folder, again into the same one (an earlier export), and into an empty one; graphs stubbed."""
    import bavit.deploy.export as export

    for name in ("export_bavit", "quantize_bavit", "export_pruned_yolos", "export_dense_yolos"):
        monkeypatch.setattr(export, name, lambda *args, _name=name, **kwargs: _name.encode())
    out, empty = tmp_path / "onnx", tmp_path / "empty"
    empty.mkdir()
    common = ["--bavit", str(random_bavit_checkpoint()), "--detector", str(tiny_yolos_dir())]
    for target in (out, out, empty):
        assert main(["export", "--out", str(target), *common]) == 0, capsys.readouterr().err
        assert sorted(p.name for p in target.iterdir()) == sorted(WRITTEN)
        assert (target / FILES["bavit"]).read_bytes() == b"export_bavit"
        assert json.loads((target / MANIFEST).read_text())["files"] == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "onnx"]  # no .onnx.old, no temporaries


def test_a_checkpoint_config_asking_for_a_huge_model_is_refused_without_building_it(tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import save_file

    import bavit.core.checkpoint as checkpoint
    from bavit.core.config import SMALL
    from bavit.errors import CheckpointError

    config = {**json.loads(SMALL.to_json()), "embed_dim": 192000}  # 3 heads divide it: only the size bounds refuse it
    path = tmp_path / "huge.safetensors"
    save_file({"head.weight": torch.zeros(2, 1)}, str(path),
              metadata={checkpoint.FORMAT_KEY: checkpoint.FORMAT, checkpoint.CONFIG_KEY: json.dumps(config)})

    def build(*args, **kwargs):
        raise AssertionError("a model was built from an out-of-bounds config")

    monkeypatch.setattr(checkpoint, "BAViT", build)
    with pytest.raises(CheckpointError, match="embed_dim must be in .* got 192000"):
        checkpoint.read_checkpoint(path)
    line = assert_user_error(capsys, main(["evaluate", "--checkpoint", str(path), "--coco-root", str(tmp_path)]),
                             "embed_dim", "192000")
    assert "parameters" in line


@pytest.mark.parametrize("change,message", [
    ({"embed_dim": 2046, "depth": 48}, "parameters"),  # each size within bounds, the product not
    ({"img_size": 1024, "patch_size": 8}, "tokens"),
    ({"depth": 0}, "depth"),
    ({"num_heads": 3, "embed_dim": "192"}, "integer"),
    ({"mlp_ratio": 1000.0}, "mlp_ratio"),
    ({"mean": [0.5, 0.5]}, "mean"),
    # each of these would give 576/576 NaN probabilities (and NaN in export.json)
    ({"std": [0, 0, 0]}, r"std must be 3 numbers \(R, G, B\), each finite and > 0"),
    ({"std": [0.2, 0.2, -0.2]}, "std must be 3 numbers"),
    ({"std": [1e-45, 1e-45, 1e-45]}, "std must be 3 numbers"),  # > 0, but 0 in float32
    ({"std": [float("inf")] * 3}, "std must be 3 numbers"),
    ({"mean": [float("nan"), 0.4, 0.4]}, r"mean must be 3 numbers \(R, G, B\), each finite"),
    ({"mean": [float("-inf"), 0.4, 0.4]}, "mean must be 3 numbers"),
    ({"mean": [10**400, 0, 0]}, "mean must be 3 numbers"),  # float() of it is an OverflowError
    ({"fg_frac": float("nan")}, "fg_frac must be a finite number"),
    ({"mlp_ratio": 10**400}, "mlp_ratio must be a finite number"),
    ({"name": [["bavit"]]}, "holds a nested value"),
    ({"name": ["bavit"]}, "name must be a string"),
    ({"name": 5}, "name must be a string"),
])
def test_config_bounds(change, message):
    from bavit.core.config import SMALL, BAViTConfig
    from bavit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        BAViTConfig.from_json(json.dumps({**json.loads(SMALL.to_json()), **change}))


def test_config_from_json_refuses_text_that_is_not_a_flat_json_object():
    from bavit.core.config import SMALL, BAViTConfig
    from bavit.errors import ConfigError

    for text, message in [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("[]", "not a JSON object"),
                          ("{", "not valid JSON"), ('{"name": {"a": 1}}', "holds a nested value")]:
        with pytest.raises(ConfigError, match=message):
            BAViTConfig.from_json(text)
    assert BAViTConfig.from_json(SMALL.to_json()) == SMALL


def stub_graphs(monkeypatch, content: bytes, during=None) -> None:
    """The four graph exports replaced by ``content`` (no torch.onnx); ``during(name)`` runs inside each."""
    import bavit.deploy.export as export

    def stub(*args, _name, **kwargs):
        if during is not None:
            during(_name)
        return content + b" " + _name.encode()

    for name in ("export_bavit", "quantize_bavit", "export_pruned_yolos", "export_dense_yolos"):
        monkeypatch.setattr(export, name, lambda *args, _name=name, **kwargs: stub(*args, _name=_name, **kwargs))


EXPORT_MODELS = ["--bavit", str(random_bavit_checkpoint()), "--detector", str(tiny_yolos_dir())]


def test_export_keeps_a_file_added_to_its_folder_during_the_export(tmp_path, monkeypatch, capsys):
    """A file the user puts in the output folder while the export runs is never deleted: the swap checks the folder
    again and refuses in one line, leaving it as it was."""
    out = tmp_path / "onnx"
    stub_graphs(monkeypatch, b"v1")
    assert main(["export", "--out", str(out), *EXPORT_MODELS]) == 0, capsys.readouterr().err
    capsys.readouterr()
    before = listing(tmp_path)

    def user_adds_a_file(name):
        if name == "export_dense_yolos":  # the last graph: minutes into a real export
            (out / "notes.txt").write_text("mine\n")

    stub_graphs(monkeypatch, b"v2", during=user_adds_a_file)
    line = assert_user_error(capsys, main(["export", "--out", str(out), *EXPORT_MODELS]),
                             f"refusing to replace {out}: it holds notes.txt", "left as it was")
    assert "changed while the new one was being written" in line
    assert listing(tmp_path) == {**before, "onnx/notes.txt": "mine\n"}  # the old export, whole, and the file

    # Without the file the next export replaces the old one, deleting only what the old export wrote.
    (out / "notes.txt").unlink()
    stub_graphs(monkeypatch, b"v3")
    assert main(["export", "--out", str(out), *EXPORT_MODELS]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    assert (out / FILES["bavit"]).read_bytes() == b"v3 export_bavit" and sorted(os.listdir(out)) == sorted(WRITTEN)


def test_export_never_touches_a_users_folder_named_like_its_old_copy(tmp_path, monkeypatch, capsys):
    """``--out exp`` never takes a user's folder ``.exp.old`` for its old copy, nor deletes it (the first export,
    when exp does not exist, included)."""
    mine = {".onnx.old": "/", ".onnx.old/notes.txt": "mine\n"}
    (tmp_path / ".onnx.old").mkdir()
    (tmp_path / ".onnx.old" / "notes.txt").write_text("mine\n")
    out = tmp_path / "onnx"
    for version in (b"v1", b"v2"):  # a new folder, then an earlier export replaced
        stub_graphs(monkeypatch, version)
        assert main(["export", "--out", str(out), *EXPORT_MODELS]) == 0, capsys.readouterr().err
        got = listing(tmp_path)
        assert {k: v for k, v in got.items() if not k.startswith("onnx")} == mine
        assert sorted(os.listdir(out)) == sorted(WRITTEN)
        assert (out / FILES["yolos_dense"]).read_bytes() == version + b" export_dense_yolos"


def test_an_export_left_aside_by_a_killed_swap_comes_back_before_the_check(tmp_path):
    """Killed between the two renames, an export is ``.OUT.old-XXXXXXXX/OUT``: check_out_dir brings it back."""
    import tempfile

    from bavit.deploy.export import check_out_dir

    holder = Path(tempfile.mkdtemp(prefix=".onnx.old-", dir=tmp_path))
    (holder / "onnx").mkdir()
    (holder / "onnx" / MANIFEST).write_text("{}\n")
    assert check_out_dir(tmp_path / "onnx") == tmp_path / "onnx"
    assert listing(tmp_path) == {"onnx": "/", f"onnx/{MANIFEST}": "{}\n"}


def test_export_json_never_holds_nan(tmp_path, monkeypatch):
    """export.json is strict JSON, never NaN (json.dumps allows it): a setting that is not finite is refused before
    any graph is exported, and nothing is written."""
    from types import SimpleNamespace

    from bavit.core.config import SMALL
    from bavit.deploy.export import export_all
    from bavit.errors import CheckpointError

    exported = []
    stub_graphs(monkeypatch, b"v1", during=exported.append)
    detector = SimpleNamespace(config=SimpleNamespace(patch_size=16, num_detection_tokens=10, id2label={0: "cat"}))
    nan = float("nan")
    for kwargs in [{"processor_stats": ((nan, 0.5, 0.5), (0.2, 0.2, 0.2))},
                   {"calibration": {"thresholds": {"0": [float("inf")]}}}]:
        with pytest.raises(CheckpointError, match=r"cannot write export.json: a setting of the checkpoint or the "
                                                  r"detector is not a finite number \(NaN or infinity\)"):
            export_all(tmp_path / "onnx", SimpleNamespace(config=SMALL), detector, bavit_source="b",
                       detector_source="d", detector_pretrained=False, **kwargs)
    assert exported == [] and list(tmp_path.iterdir()) == []  # refused before any graph; nothing written


@pytest.mark.parametrize("kwargs", [{}, {"stem": "conv"}, {"stem": "conv-deep", "depth": 3},
                                    {"img_size": 32, "embed_dim": 6, "num_heads": 2, "mlp_ratio": 2.0}])
def test_parameter_estimate_is_close_to_the_real_count(kwargs):
    from bavit.core.config import BAViTConfig
    from bavit.core.model import build_bavit

    config = BAViTConfig(**kwargs)
    real = sum(p.numel() for p in build_bavit(config).parameters())
    assert abs(config.parameter_estimate() - real) <= 0.01 * real


def test_an_os_error_while_writing_is_one_line(place, monkeypatch, capsys):
    """The safety net: a write that fails after the checks (a full disk) is reported like any user error."""
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "report.json")

    monkeypatch.setattr("bavit.bench.latency.run_bench", full_disk)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # else bench notes on stderr that it is unset
    assert_user_error(capsys, main(["bench", "--json", "report.json"]), "report.json", os.strerror(errno.ENOSPC))


def test_checks_create_nothing(tmp_path):
    from bavit.files import check_output_dir, check_output_file

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.safetensors").write_text("w")
    check_output_file(tmp_path / "new" / "deeper" / "report.json")
    check_output_file(tmp_path / "run" / "last.safetensors")  # an existing file may be replaced
    check_output_dir(tmp_path / "run")  # a folder written into may hold anything
    check_output_dir(tmp_path / "new" / "onnx", replace=True, manifest=MANIFEST, names=WRITTEN)
    assert listing(tmp_path) == {"run": "/", "run/last.safetensors": "w"}


@pytest.mark.parametrize("argv,fragment", [
    (["export", "--out", ".", "--bavit", "missing.safetensors"], "current folder"),
    (["evaluate", "--checkpoint", "missing.safetensors", "--json", "/proc/x/eval.json"], "/proc"),
])
@pytest.mark.slow
def test_the_real_cli_prints_one_line_and_exits_2(argv, fragment, tmp_path):
    """``python -m bavit``: the path is refused first (the missing checkpoint would be the error otherwise)."""
    if "/proc/x/eval.json" in argv and not HAS_PROC:
        pytest.skip("no /proc here")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "bavit", *argv], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("metadata,fragment", [
    ({"extra": "[" * 100_000 + "]" * 100_000}, "'extra' metadata is nested more than 32 levels deep"),
    ({"calibration": '{"levels": ' + "[" * 50_000 + "]" * 50_000 + "}"}, "'calibration' metadata is nested more"),
    ({"bavit_config": "[" * 100_000 + "]" * 100_000}, "the config JSON is nested too deeply"),
    ({"std": [0, 0, 0]}, "std must be 3 numbers"),
], ids=["extra", "calibration", "config", "std-zero"])
def test_export_of_a_broken_checkpoint_prints_one_line_and_exits_2(tmp_path, metadata, fragment):
    """``python -m bavit export --bavit`` a checkpoint whose JSON nests 100,000 deep, or one with std 0, prints one
    line and exits 2 (no RecursionError traceback, no export full of NaN)."""
    from safetensors.torch import save_file

    from bavit.core.checkpoint import CONFIG_KEY, FORMAT, FORMAT_KEY
    from bavit.core.config import BAViTConfig
    from bavit.core.model import build_bavit

    config = json.loads(BAViTConfig(img_size=64, depth=1).to_json())
    if "std" in metadata:
        metadata = {CONFIG_KEY: json.dumps({**config, **metadata})}
    tensors = {name: tensor.contiguous() for name, tensor in build_bavit(BAViTConfig(img_size=64, depth=1))
               .state_dict().items()}
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path), metadata={FORMAT_KEY: FORMAT, CONFIG_KEY: json.dumps(config), **metadata})
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "bavit", "export", "--bavit", str(path), "--out", "out",
                             "--detector", str(tiny_yolos_dir())], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and fragment in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors"]  # nothing written
