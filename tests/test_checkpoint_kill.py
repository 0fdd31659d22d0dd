"""``python -m bavit train`` killed (SIGKILL) at every stage of an epoch-end save, by fault injection, then resumed:
the resumed run loses at most the epoch being saved, leaves no temporary file, and ends bit for bit where an
uninterrupted run ends (weights, whole training state, metrics).

Every run is a real process of its own. Importing torch, timm and transformers takes ~9 s here, so instead of one
``python -c`` per run, one fork server (:data:`FORK_SERVER`) imports ``bavit.cli`` once and forks a child per run;
the child installs the fault (a wrapper around ``safetensors.torch.save_file`` or ``os.replace`` that SIGKILLs the
process at its n-th call on one file) and runs ``python -m bavit train`` through ``runpy``. No hook in product code.
"""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STATE, LAST = "last.train-state.safetensors", "last.safetensors"
EPOCHS, KILL_EPOCH = 2, 2  # killed while saving the last epoch: resumed from epoch 1 it trains epoch 2 again,
# resumed from epoch 2 it only rewrites a last.safetensors that lags behind the state
# 4 images of 64 px, batch 2 (2 steps per epoch), one block; StepLR every epoch and drop path, so that the
# scheduler, the optimizer moments and the torch RNG all have to come back for an exact resume.
TRAIN = ["train", "--limit", "4", "--batch-size", "2", "--img-size", "64", "--depth", "1", "--epochs", str(EPOCHS),
         "--step-size", "1", "--gamma", "0.5", "--drop-path", "0.1", "--threads", "1", "--no-progress"]

FORK_SERVER = r'''
import json, os, runpy, signal, sys, traceback
from pathlib import Path

import bavit.cli

bavit.cli.build_parser()  # the slow imports (every command's module), once; each run is a fork of this process


def kill_at(function, target, when, nth):
    """Make the nth call of ``function`` on ``target`` (the written temp file's or the rename's destination)
    SIGKILL this process: "before" the call, "after" it, or "half" (the file written, then cut to half its size)."""
    import safetensors.torch

    module = safetensors.torch if function == "save_file" else os
    real, calls = getattr(module, function), [0]

    def hooked(*args, **kwargs):
        name = Path(args[1]).name  # save_file(tensors, filename), os.replace(src, dst)
        if name.endswith(".tmp"):
            name = name[1:-len(".XXXXXXXX.tmp")]  # atomic_path's temp file: .NAME.XXXXXXXX.tmp
        if name == target:
            calls[0] += 1
            if calls[0] == nth:
                if when != "before":
                    real(*args, **kwargs)
                if when == "half":
                    os.truncate(args[1], os.path.getsize(args[1]) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(module, function, hooked)


for line in iter(sys.stdin.readline, ""):
    run = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(120)  # a hung run dies (SIGALRM) instead of hanging the test
            log = os.open(run["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if run["kill"]:
                kill_at(*run["kill"])
            sys.argv = ["bavit", *run["argv"]]
            runpy.run_module("bavit", run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    died = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    print(json.dumps({"signal": died, "code": None if died else os.WEXITSTATUS(status)}), flush=True)
'''


class ForkServer:
    def __init__(self, coco_root: Path):
        self.coco_root = coco_root
        self.process = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})

    def train(self, out: Path, log: Path, *extra: str, kill: tuple | None = None) -> tuple[dict, str]:
        """Run ``python -m bavit train`` (:data:`TRAIN`) into ``out`` in a forked child; returns
        ``({"signal": ..., "code": ...}, its output)``."""
        argv = [*TRAIN, "--coco-root", str(self.coco_root), "--out", str(out), *extra]
        self.process.stdin.write(json.dumps({"argv": argv, "kill": kill, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        assert reply, "the fork server died"
        return json.loads(reply), log.read_text()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(synthetic_coco):
    server = ForkServer(synthetic_coco)
    yield server
    server.close()


@pytest.fixture(scope="module")
def straight(server, tmp_path_factory) -> Path:
    """The output folder of an uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    result, log = server.train(out, out.parent / "straight.log")
    assert result == {"signal": None, "code": 0}, log
    return out


def _tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def _metrics(out: Path) -> list[dict]:
    """``metrics.jsonl`` without the timings, which differ from run to run."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("seconds", "images_per_s")} for line in lines]


# stage of epoch 2's save -> (the function that dies, on which file, when, the epoch the resumed run starts after);
# the state is written first, then the model.
STAGES = {
    "writing the state": ("save_file", STATE, "half", 1),
    "state written, not renamed": ("replace", STATE, "before", 1),
    "between the renames": ("replace", STATE, "after", 2),
    "writing the model": ("save_file", LAST, "half", 2),
    "model written, not renamed": ("replace", LAST, "before", 2),
    "after both renames": ("replace", LAST, "after", 2),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_during_a_checkpoint_save_loses_at_most_that_epoch(server, straight, tmp_path, stage):
    from bavit.engine.state import read_training_state

    function, target, when, resumes_after = STAGES[stage]
    out = tmp_path / "out"
    result, log = server.train(out, tmp_path / "killed.log", kill=(function, target, when, KILL_EPOCH))
    assert result == {"signal": signal.SIGKILL, "code": None}, log
    assert re.findall(r"^epoch (\d+):", log, re.MULTILINE) == ["1"]  # it died in epoch 2's save
    temps = [p.name for p in out.iterdir() if p.suffix == ".tmp"]
    assert len(temps) == (when != "after"), temps  # a killed writer leaves its temp file behind
    assert read_training_state(out / STATE)[2]["epoch"] == resumes_after

    result, log = server.train(out, tmp_path / "resumed.log", "--resume")
    assert result == {"signal": None, "code": 0}, log
    assert f"resuming after epoch {resumes_after}" in log
    trained = [int(epoch) for epoch in re.findall(r"^epoch (\d+):", log, re.MULTILINE)]
    assert trained == list(range(resumes_after + 1, EPOCHS + 1))
    assert sorted(p.name for p in out.iterdir()) == [LAST, STATE, "metrics.jsonl"]  # no temp file left

    # Bit for bit the uninterrupted run: the model file, the whole training state, the metrics.
    for name in (LAST, STATE):
        got, got_metadata = _tensors_and_metadata(out / name)
        want, want_metadata = _tensors_and_metadata(straight / name)
        assert got.keys() == want.keys() and got_metadata == want_metadata, name
        assert all(torch.equal(got[key], want[key]) and got[key].dtype == want[key].dtype for key in want), name
    assert _metrics(out) == _metrics(straight)
    assert [line["epoch"] for line in _metrics(out)] == [1, 2]
