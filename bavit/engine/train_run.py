"""The run around :func:`bavit.engine.train.train`: processes (torchrun / DDP on gloo), the epoch shuffle, and
resuming from the training-state file (:mod:`bavit.engine.state`) with the metrics of redone epochs dropped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import CheckpointError
from ..files import write_text
from .state import TrainingState, read_training_state


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises gloo when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def state_file(out_dir: Path) -> Path:
    return out_dir / "last.train-state.safetensors"


def resume_state(state_path: Path) -> TrainingState:
    """The state saved with the last complete epoch; its progress holds ``epoch``, ``model`` (its state dict),
    ``config`` (JSON), ``checkpoint`` (``last.safetensors``' extra metadata), ``rng`` and, for mim, ``decoder``."""
    if not state_path.is_file():
        raise CheckpointError(f"--resume: no training state at {state_path}")
    state = read_training_state(state_path)
    if "model" not in state.progress:
        raise CheckpointError(f"--resume: {state_path} holds no model weights (written by an older bavit); "
                              "start afresh")
    return state


def rewind_metrics(path: Path, epoch: int) -> None:
    """Keep ``metrics.jsonl``'s lines of the epochs up to ``epoch`` (the resumed one): a line is written before its
    epoch's state, so a run killed in between (or midway through the line) left one that the resumed run redoes."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # the half-written last line of a killed run
    write_text(path, "".join(kept))


def epoch_sampler(dataset: torch.utils.data.Dataset, world: int, rank: int,
                   seed: int) -> torch.utils.data.DistributedSampler:
    """The shuffle: a permutation that depends only on (seed, epoch) -- ``set_epoch`` picks it -- so a resumed run
    sees the same batches as an uninterrupted one. One process is the one-replica case of DDP's sampler."""
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)


__all__ = ["distributed", "state_file", "resume_state", "rewind_metrics", "epoch_sampler"]
