"""``bavit.engine.state`` (training state in one safetensors file) and ``bavit.files`` (atomic writes): exact round
trips, failing writes that leave nothing behind, clear errors for files that are not training states."""
import os
import signal
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from bavit.engine.state import (
    FORMAT,
    load_training_state,
    read_training_state,
    save_training_state,
)
from bavit.errors import CheckpointError, ConfigError
from bavit.files import atomic_dir, atomic_path, recover_dir, remove_stale_temps


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _run(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler=None, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=generator)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def assert_same(a, b, where: str = "") -> None:
    """Deep equality, tensors by value and dtype, containers by type (a tuple must come back a tuple)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}.{index}")
    else:
        assert a == b, (where, a, b)


def test_adam_steplr_round_trip_is_exact(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.3)
    _run(model, optimizer, scheduler, steps=5)
    rng = torch.get_rng_state()
    path = save_training_state(tmp_path / "s.safetensors", optimizer, scheduler, epoch=5, step=17,
                               settings={"lr": 1e-2, "sizes": [1, 2]}, rng=rng)
    assert oct(stat.S_IMODE(os.stat(path).st_mode)) == oct(0o644)

    fresh = torch.optim.Adam(_model(seed=9).parameters())  # other settings: the saved ones must win
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh, step_size=7)
    progress = load_training_state(path, fresh, fresh_scheduler)
    assert_same(fresh.state_dict(), optimizer.state_dict(), "optimizer")
    assert_same(fresh_scheduler.state_dict(), scheduler.state_dict(), "scheduler")
    assert fresh.param_groups[0]["betas"] == (0.8, 0.95) and fresh.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.09)
    assert progress.keys() == {"epoch", "step", "settings", "rng"}
    assert progress["epoch"] == 5 and progress["step"] == 17 and progress["settings"] == {"lr": 1e-2, "sizes": [1, 2]}
    assert torch.equal(progress["rng"], rng)
    state = fresh.state_dict()["state"]
    assert len(state) == 4 and all(float(s["step"]) == 5 and s["step"].dtype == torch.float32 for s in state.values())


def test_adamw_round_trip_continues_identically(tmp_path):
    """Same updates after a restore as without one: the restored optimizer is the saved one."""
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.05, amsgrad=True)
    _run(model, optimizer, steps=3)
    save_training_state(tmp_path / "s.safetensors", optimizer, epoch=3)
    twin = _model(seed=5)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.AdamW(twin.parameters())
    assert load_training_state(tmp_path / "s.safetensors", twin_optimizer) == {"epoch": 3}
    assert_same(twin_optimizer.state_dict(), optimizer.state_dict())
    assert {"max_exp_avg_sq", "exp_avg", "exp_avg_sq", "step"} == set(twin_optimizer.state_dict()["state"][0])
    _run(model, optimizer, steps=2)
    _run(twin, twin_optimizer, steps=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_state_before_any_step_and_without_scheduler(tmp_path):
    optimizer = torch.optim.Adam(_model().parameters(), lr=3e-4)
    save_training_state(tmp_path / "s.safetensors", optimizer)
    model = _model()
    stepped = torch.optim.Adam(model.parameters())
    _run(model, stepped, steps=2)  # its moments must go: the saved state has none
    assert load_training_state(tmp_path / "s.safetensors", stepped) == {}
    assert_same(stepped.state_dict(), optimizer.state_dict())
    with pytest.raises(CheckpointError, match="holds no LR-scheduler state"):
        load_training_state(tmp_path / "s.safetensors", stepped, torch.optim.lr_scheduler.StepLR(stepped, 1))


def _saved(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    _run(model, optimizer, steps=1)
    path = save_training_state(tmp_path / "s.safetensors", optimizer, epoch=1)
    return path, optimizer


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_failing_write_leaves_no_temp_file_and_the_old_state(tmp_path, monkeypatch, error):
    import safetensors.torch

    path, optimizer = _saved(tmp_path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(type(error)):
        save_training_state(path, optimizer, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert load_training_state(path, torch.optim.Adam(_model().parameters()))["epoch"] == 1


def test_unsaveable_value_is_refused_before_anything_is_written(tmp_path):
    path, optimizer = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="cannot be stored without pickling"):
        save_training_state(path, optimizer, epoch=2, callback=print)
    sparse = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), (3,), check_invariants=True)
    with pytest.raises(TypeError, match="progress.bad is a torch.sparse_coo tensor"):
        save_training_state(path, optimizer, epoch=2, bad=sparse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"] and path.read_bytes() == before


def test_missing_foreign_and_mismatched_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    optimizer = torch.optim.Adam(_model().parameters())
    with pytest.raises(CheckpointError, match="no training state at"):
        load_training_state(tmp_path / "missing.safetensors", optimizer)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_training_state(tmp_path / "junk.safetensors", optimizer)
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "weights.safetensors"), metadata={"format": "bavit-v1"})
    with pytest.raises(CheckpointError, match="not a training state"):
        load_training_state(tmp_path / "weights.safetensors", optimizer)
    save_file({}, str(tmp_path / "damaged.safetensors"), metadata={"format": FORMAT})
    with pytest.raises(CheckpointError, match="damaged training state"):
        read_training_state(tmp_path / "damaged.safetensors")

    path, _ = _saved(tmp_path)
    fewer = torch.optim.Adam(torch.nn.Linear(5, 4).parameters())
    with pytest.raises(CheckpointError, match="holds 4 parameters in 1 group.*this optimizer has 2 in 1"):
        load_training_state(path, fewer)
    wider = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    with pytest.raises(CheckpointError, match=r"parameter 0 has shape \[4, 5\] there but \[6, 5\] here"):
        load_training_state(path, torch.optim.Adam(wider.parameters()))


def test_atomic_path_replaces_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".file.txt.") and tmp.suffix == ".tmp"
        tmp.write_text("one")
    assert target.read_text() == "one" and stat.S_IMODE(target.stat().st_mode) == 0o644
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_path(target) as tmp:
            tmp.write_text("two, half written")
            raise error
        assert target.read_text() == "one" and [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_dir_swaps_whole_folders_and_recovers_an_interrupted_swap(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced, not merged
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"] and [p.name for p in target.iterdir()] == ["b.txt"]
    # A kill between the two renames leaves the old copy in its holder, .checkpoint.old-XXXXXXXX/checkpoint: it
    # comes back, whole.
    os.rename(target, _holder(tmp_path, "checkpoint") / "checkpoint")
    assert recover_dir(target) == target and [p.name for p in target.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    os.rename(target, _holder(tmp_path, "checkpoint") / "checkpoint")
    with atomic_dir(target) as tmp:  # the next save recovers it first, then replaces it
        (tmp / "d.txt").write_text("4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"] and [p.name for p in target.iterdir()] == ["d.txt"]
    # A kill after both renames, before the old copy was deleted: the next save deletes it.
    (_holder(tmp_path, "checkpoint") / "checkpoint").mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "e.txt").write_text("5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"] and [p.name for p in target.iterdir()] == ["e.txt"]


def _holder(parent: Path, name: str) -> Path:
    """A holder folder as atomic_dir makes one for the old copy of ``parent/name``."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent))


def _listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "/") for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("owned", [None, ("a.txt", "m.json")], ids=["whole folder", "owned names"])
def test_atomic_dir_never_touches_a_users_folder_named_like_the_old_copy(tmp_path, owned):
    """The old copy is held in a folder that atomic_dir creates (``.NAME.old-XXXXXXXX``), so a user's ``.exp.old``
    next to ``exp``, or a folder that only looks like a holder, is never moved in as ``exp`` or deleted at the swap."""
    mine = {".exp.old": "/", ".exp.old/notes.txt": "mine", ".exp.old-a1b2c3d4": "/",
            ".exp.old-a1b2c3d4/notes.txt": "mine too", ".exp.old-short": "/"}
    (tmp_path / ".exp.old").mkdir()
    (tmp_path / ".exp.old" / "notes.txt").write_text("mine")
    (tmp_path / ".exp.old-a1b2c3d4").mkdir()  # the holders' pattern, but not holding an "exp": not one of ours
    (tmp_path / ".exp.old-a1b2c3d4" / "notes.txt").write_text("mine too")
    (tmp_path / ".exp.old-short").mkdir()
    target = tmp_path / "exp"
    for content in ("1", "2", "3"):  # written new, then replaced twice
        with atomic_dir(target, owned=owned, marker=owned and "m.json") as tmp:
            (tmp / "a.txt").write_text(content)
            (tmp / "m.json").write_text("{}")
        assert _listing(tmp_path) == {**mine, "exp": "/", "exp/a.txt": content, "exp/m.json": "{}"}
    os.rename(target, tmp_path / "gone")  # no exp: nothing of the user's is taken for an interrupted swap's copy
    assert recover_dir(target) == target and not os.path.lexists(target)
    assert _listing(tmp_path) == {**mine, "gone": "/", "gone/a.txt": "3", "gone/m.json": "{}"}


OWNED, MARKER = ("a.bin", "b.bin", "m.json"), "m.json"


def _write(folder: Path, content: str) -> None:
    for name in OWNED:
        (folder / name).write_text(f"{name} {content}")


def test_atomic_dir_with_owned_names_refuses_a_folder_that_got_other_files_and_deletes_nothing(tmp_path, monkeypatch):
    """A file a user adds to the folder while the new one is written is never deleted at the swap: with ``owned``
    the swap checks the folder again, and refuses: the folder stays as it was, the new one goes."""
    target = tmp_path / "exp"
    with atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
        _write(tmp, "old")
    old = _listing(tmp_path)
    with pytest.raises(ConfigError, match=r"refusing to replace .*exp: it holds notes.txt, which an output folder "
                                          r"does not \(it changed while the new one was being written\)"):
        with atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
            _write(tmp, "new")
            (target / "notes.txt").write_text("mine")  # the user, meanwhile
    assert _listing(tmp_path) == {**old, "exp/notes.txt": "mine"}

    # The same file arriving between the check and the first rename goes along into the holder: seen there, and
    # the folder is put back as it was.
    (target / "notes.txt").unlink()
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == target and Path(dst).parent.name.startswith(".exp.old-"):
            (target / "late.txt").write_text("mine")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(ConfigError, match="it holds late.txt"), atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
        _write(tmp, "new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert _listing(tmp_path) == {**old, "exp/late.txt": "mine"}

    # A folder with no marker, a link, an owned name that is a folder: refused too; nothing moved.
    (target / "late.txt").unlink()
    (target / MARKER).unlink()
    (target / "a.bin").unlink()
    (target / "a.bin").mkdir()
    for match in ("no m.json", "it holds a.bin"):
        with pytest.raises(ConfigError, match=match), atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
            _write(tmp, "new")
        (target / MARKER).write_text("m")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigError, match="it is a link"), atomic_dir(tmp_path / "link", owned=OWNED) as tmp:
        _write(tmp, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "link"]

    # An empty folder or an earlier output: replaced, only its own files deleted.
    (target / "a.bin").rmdir()
    (target / "a.bin").write_text("a")
    with atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
        _write(tmp, "new")
    assert _listing(tmp_path) == {"exp": "/", **{f"exp/{name}": f"{name} new" for name in OWNED}, "link": "/"}


# stage of a swap with owned names -> (the call that dies, when), see _kill_at
KILL_STAGES = {
    "writing the new folder": ("write", "before"),
    "before the first rename": ("rename-out", "before"),
    "between the renames": ("rename-in", "before"),
    "after both renames": ("rename-in", "after"),
    "deleting the old copy": ("unlink", "after"),
}


def _kill_at(target: Path, call: str, when: str) -> None:
    """In a forked child: SIGKILL this process at ``call`` (see :data:`KILL_STAGES`), ``before`` or ``after`` it."""
    real_rename, real_unlink = os.rename, os.unlink

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def rename(src, dst):
        hit = (call == "rename-out" and Path(src) == target) or (call == "rename-in" and Path(dst) == target)
        if hit and when == "before":
            die()
        real_rename(src, dst)
        if hit:
            die()

    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if call == "unlink":
            die()

    os.rename, os.unlink = rename, unlink


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("stage", list(KILL_STAGES))
def test_a_kill_at_any_stage_of_a_swap_with_owned_names_keeps_the_old_folder_and_the_next_swap_resumes(tmp_path, stage):
    """SIGKILL (no ``finally`` runs) in a forked child at each stage of replacing an earlier output: afterwards
    the output is the old one or the new one, whole, where it belongs or -- killed between the two renames -- in
    its holder, from where :func:`recover_dir` brings it back; the next swap leaves neither holder nor old files,
    and a user's ``.exp.old`` and other files are never touched."""
    call, when = KILL_STAGES[stage]
    target = tmp_path / "exp"
    (tmp_path / ".exp.old").mkdir()
    (tmp_path / ".exp.old" / "notes.txt").write_text("mine")
    with atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
        _write(tmp, "old")
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no torch; only the swap
        try:
            _kill_at(target, call, when)
            with atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:
                _write(tmp, "new")
                if call == "write":
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)  # not reached: every stage kills
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    recover_dir(target)
    contents = {name: (target / name).read_text() for name in os.listdir(target)}
    whole = [{name: f"{name} {version}" for name in OWNED} for version in ("old", "new")]
    assert contents in whole  # one complete folder, never a mix (even while its old copy is being deleted)
    assert (tmp_path / ".exp.old" / "notes.txt").read_text() == "mine"
    if stage in ("writing the new folder", "before the first rename", "between the renames"):
        assert contents == whole[0]
    leftovers = {p.name for p in tmp_path.iterdir()} - {"exp", ".exp.old"}
    assert all(name.startswith((".exp-", ".exp.old-")) for name in leftovers), leftovers  # temporaries only

    with atomic_dir(target, owned=OWNED, marker=MARKER) as tmp:  # the next swap
        _write(tmp, "next")
    staging = {p.name for p in tmp_path.iterdir() if p.name.startswith(".exp-")}  # remove_stale_temps' business
    assert {p.name for p in tmp_path.iterdir()} - staging == {"exp", ".exp.old"}
    assert {name: (target / name).read_text() for name in os.listdir(target)} == {n: f"{n} next" for n in OWNED}
    assert (tmp_path / ".exp.old" / "notes.txt").read_text() == "mine"


def test_a_training_state_with_json_nested_thousands_deep_is_a_checkpoint_error(tmp_path):
    """JSON nested thousands deep (a RecursionError in json.loads) is the one damaged-state error."""
    path, _ = _saved(tmp_path)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(path), metadata={**metadata, "progress": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match="damaged training state"):
        read_training_state(path)


def test_remove_stale_temps_deletes_what_killed_writers_left_and_nothing_else(tmp_path):
    stale_file, stale_dir = tmp_path / ".last.safetensors.a1_b2c3d.tmp", tmp_path / ".checkpoint-x9y8z7w6"
    stale_file.write_bytes(b"half a file")
    (stale_dir / "nested").mkdir(parents=True)
    (stale_dir / "nested" / "weights.bin").write_bytes(b"half")
    keep = [".last.safetensors.short.tmp", ".other.safetensors.a1b2c3d4.tmp", "last.safetensors",
            ".last.safetensors.a1b2c3d4.tmp.bak", ".checkpoint.old", "checkpoint-a1b2c3d4"]
    for name in keep:
        (tmp_path / name).write_text("mine")
    removed = remove_stale_temps(tmp_path / "last.safetensors", tmp_path / "checkpoint", tmp_path / "missing" / "x")
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    # The names the writers really use match (a KeyboardInterrupt ends the blocks; a SIGKILL would leave them).
    new_file, new_dir = tmp_path / "new.txt", tmp_path / "new-folder"
    with pytest.raises(KeyboardInterrupt), atomic_path(new_file) as tmp, atomic_dir(new_dir) as tmp_dir:
        assert sorted(remove_stale_temps(new_file, new_dir)) == sorted([tmp, tmp_dir])
        raise KeyboardInterrupt
