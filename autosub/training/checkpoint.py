"""A training run's resumable state: the tuned tensors, the optimizer, the schedule and the RNG — not the model.

``fit(checkpoint=…)`` hands a :class:`FitState` to its caller after every epoch and ``fit(resume=state)``
continues from one, bit for bit on the same CPU (same data order, same dropout, same optimizer moments). Ray
trials write it as their checkpoint, so a retried worker resumes mid-trial instead of starting over. The frozen
trunk is never in it: only parameters that train and the buffers of modules in train mode (tuned BatchNorm
statistics), i.e. a few MB for a few blocks. On disk: ``tuned.safetensors`` (the tensors) and ``fit_state.pt``
(optimizer, schedule, RNG, curves — read back with ``torch.load(weights_only=True)``, never unpickled).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..model.blocks import Partition
from ..model.subtune import Selection, tuned_tensors

__all__ = ["CheckpointHook", "FitState", "STATE", "TENSORS", "capture", "restore", "selection_metadata"]

TENSORS, STATE = "tuned.safetensors", "fit_state.pt"


@dataclass
class FitState:
    """Everything ``fit`` needs to continue after ``epoch`` completed epochs."""

    epoch: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    curve: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seen: int = 0
    step_time: float = 0.0

    def save(self, directory: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the two files into ``directory`` (created if missing)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(d / TENSORS), metadata=metadata)
        torch.save({"epoch": self.epoch, "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng,
                    "curve": self.curve, "train_loss": self.train_loss, "seen": self.seen,
                    "step_time": self.step_time}, d / STATE)

    @classmethod
    def load(cls, directory: str | Path) -> FitState | None:
        """The state saved in ``directory``, or None when it holds none."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / TENSORS).exists() or not (d / STATE).exists():
            return None
        rest = torch.load(d / STATE, map_location="cpu", weights_only=True)
        return cls(tensors=load_file(str(d / TENSORS)), **rest)


CheckpointHook = Callable[[FitState], None]


def capture(model: nn.Module, selection: Selection, partition: Partition, optimizer: torch.optim.Optimizer,
            scheduler: Any, generator: torch.Generator, *, epoch: int, curve: list[float], train_loss: list[float],
            seen: int, step_time: float) -> FitState:
    """The state of a run of ``selection`` after ``epoch`` epochs: its tuned tensors (never the frozen trunk)."""
    rng = {"data": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    opt = optimizer.state_dict()
    opt = {"state": {i: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in s.items()}
                     for i, s in opt["state"].items()}, "param_groups": opt["param_groups"]}
    return FitState(epoch=epoch, tensors=tuned_tensors(model, selection, partition), optimizer=opt, scheduler=scheduler.state_dict(),
                    rng=rng, curve=list(curve), train_loss=list(train_loss), seen=seen, step_time=step_time)


def restore(state: FitState, model: nn.Module, selection: Selection, partition: Partition,
            optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator, *, epochs: int) -> None:
    """Put ``state`` back into a freshly built run; refuse a state from a different selection or a longer run."""
    if not 0 < state.epoch <= epochs:
        raise ConfigError(f"Cannot resume: the checkpoint is after epoch {state.epoch} but this fit has "
                          f"epochs={epochs}; resume with the same epochs it was saved with.")
    want = tuned_tensors(model, selection, partition)
    if set(want) != set(state.tensors):
        diff = sorted(set(want) ^ set(state.tensors))[:5]
        raise ConfigError(f"Cannot resume: the checkpoint's tensors do not match the tuned blocks of this fit "
                          f"(e.g. {diff}); resume with the same model, selection and task it was saved with.")
    model.load_state_dict(state.tensors, strict=False)  # the keys were checked just above
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    generator.set_state(state.rng["data"])
    torch.set_rng_state(state.rng["torch"])
    if "cuda" in state.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.rng["cuda"])


def selection_metadata(selection: Any) -> dict[str, str]:
    """safetensors metadata naming the selection the tensors belong to."""
    return {"selection": json.dumps(selection if isinstance(selection, str) else list(selection))}
