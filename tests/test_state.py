"""``bavit.engine.state`` (training state in one safetensors file) and ``bavit.files`` (atomic writes): exact round
trips, failing writes that leave nothing behind, clear errors for files that are not training states."""
import os
import stat

import pytest
import torch

from bavit.engine.state import (
    FORMAT,
    load_training_state,
    read_training_state,
    save_training_state,
)
from bavit.errors import CheckpointError
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
    # An interrupt between the two renames leaves only .checkpoint.old: it comes back, whole.
    os.replace(target, tmp_path / ".checkpoint.old")
    assert recover_dir(target) == target and [p.name for p in target.iterdir()] == ["b.txt"]
    os.replace(target, tmp_path / ".checkpoint.old")
    with atomic_dir(target) as tmp:  # the next save recovers it first, then replaces it
        (tmp / "d.txt").write_text("4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"] and [p.name for p in target.iterdir()] == ["d.txt"]


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
