"""The two option groups of ``search()``: how each trial trains (``TrainingConfig``) and where the run lives
(``RunConfig``) — Ray Tune's ``RunConfig`` / PEFT's config dataclasses are the model: validated in ``__post_init__``,
errors name the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import ConfigError, check_positive
from ..training.cache import MemoryBudget

__all__ = ["RunConfig", "TrainingConfig", "as_config"]


@dataclass(frozen=True)
class TrainingConfig:
    """How every trial trains (the searched lr / weight decay live in the SearchSpace, the epochs in ``search``).

    Args:
        batch_size: examples per step.
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: bfloat16 autocast; ``None`` = on for CUDA.
        memory: a :class:`~autosub.MemoryBudget` for the prefix cache tiers (GPU / RAM / disk).
        retrain: retrain the best configuration on train + val at the end (default: keep the best trial's model).
        cv_folds: score every trial by stratified k-fold cross-validation over train + val (for small data, where
            a validation split of a few dozen examples scores in coarse steps and ties); one prefix cache serves
            every fold. None: the validation split.
        fuse: train several trials as one fused group (:class:`~autosub.training.fused.FusedGroup`: the frozen
            blocks run once on the concatenation of the trials' batches; each trial's values equal its run alone).
            ``"auto"`` (default): on CUDA only — on a CPU fusing measured no gain (as ``profile(fuse="auto")``);
            ``True``: always; ``False``: never. The Optuna backend asks up to ``fuse_trials`` trials at a time;
            with ``backend="ray"`` one Tune trial hosts a group of up to ``fuse_trials``; ``cv_folds`` runs
            unfused (``fuse=True`` with it is refused).
        fuse_trials: the most trials one fused group trains at once (fewer when the budget has fewer left or the
            memory limit holds fewer).
        fuse_memory: bytes a fused group's trials may take for training (tuned tensors, gradients, AdamW moments,
            activations); None: 80% of the free GPU memory on CUDA, half the available RAM on a CPU (a Ray trial:
            that times its share of the device, e.g. ``gpu=0.25``).
    """

    batch_size: int = 32
    device: str | torch.device | None = None
    amp: bool | None = None
    memory: MemoryBudget | None = None
    retrain: bool = False
    cv_folds: int | None = None
    fuse: bool | str = "auto"
    fuse_trials: int = 8
    fuse_memory: int | None = None

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size, "TrainingConfig", integer=True)
        if self.amp is not None and not isinstance(self.amp, bool):
            raise ConfigError(f"The 'amp' parameter of TrainingConfig must be None or a bool; got {self.amp!r}.")
        if self.memory is not None and not isinstance(self.memory, MemoryBudget):
            raise ConfigError(f"The 'memory' parameter of TrainingConfig must be an autosub.MemoryBudget; got "
                              f"{type(self.memory).__name__} instead.")
        if not isinstance(self.retrain, bool):
            raise ConfigError(f"The 'retrain' parameter of TrainingConfig must be a bool; got {self.retrain!r}.")
        if self.cv_folds is not None and (isinstance(self.cv_folds, bool) or not isinstance(self.cv_folds, int)
                                          or self.cv_folds < 2):
            raise ConfigError(f"The 'cv_folds' parameter of TrainingConfig must be None or an int >= 2; got "
                              f"{self.cv_folds!r} instead.")
        if self.device is not None and not isinstance(self.device, (str, torch.device)):
            raise ConfigError(f"The 'device' parameter of TrainingConfig must be None, a str or a torch.device; got "
                              f"{self.device!r} instead.")
        if not (isinstance(self.fuse, bool) or (isinstance(self.fuse, str) and self.fuse == "auto")):
            raise ConfigError(f"The 'fuse' parameter of TrainingConfig must be 'auto' (fuse on CUDA only), True or "
                              f"False; got {self.fuse!r} instead.")
        check_positive("fuse_trials", self.fuse_trials, "TrainingConfig", integer=True)
        if self.fuse_memory is not None and (isinstance(self.fuse_memory, bool)
                                             or not isinstance(self.fuse_memory, int) or self.fuse_memory <= 0):
            raise ConfigError(f"The 'fuse_memory' parameter of TrainingConfig must be None or a positive int (bytes); "
                              f"got {self.fuse_memory!r} instead.")
        if self.fuse is True and self.cv_folds:
            raise ConfigError("TrainingConfig(fuse=True) does not support cv_folds yet (each cross-validated trial "
                              "trains one run per fold); pass fuse=False or 'auto' (unfused under cross-validation).")

    def fuses(self, device: torch.device) -> bool:
        """Whether trials train fused on ``device``: ``fuse=True``, or ``"auto"`` on CUDA (never under ``cv_folds``)."""
        if self.cv_folds or self.fuse is False:
            return False
        return self.fuse is True or torch.device(device).type == "cuda"


@dataclass(frozen=True)
class RunConfig:
    """Where a search lives and how it reports.

    Args:
        run_dir: the run's directory (study, Ray experiment); default ``autosub-runs/<time>``.
        storage: ``None`` → the journal file ``<run_dir>/study.journal`` (``study.db`` where an earlier run left
            one); any Optuna storage URL (``postgresql://…``); a journal file path (``*.log``/``*.jsonl``/
            ``*.journal`` or ``journal:<path>``); or an Optuna storage object.
        study_name: the Optuna study's name inside the storage.
        callbacks: called as ``cb(record, model_or_None)`` after every trial, outside the budget's clock.
        progress: tqdm progress bars.
    """

    run_dir: str | Path | None = None
    storage: Any = None
    study_name: str = "autosub"
    callbacks: Sequence[Callable[..., None]] = field(default_factory=tuple)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.run_dir is not None and not isinstance(self.run_dir, (str, Path)):
            raise ConfigError(f"The 'run_dir' parameter of RunConfig must be None or a path; got {self.run_dir!r}.")
        if not isinstance(self.study_name, str) or not self.study_name:
            raise ConfigError(f"The 'study_name' parameter of RunConfig must be a non-empty str; got "
                              f"{self.study_name!r} instead.")
        if callable(self.callbacks) or not all(callable(cb) for cb in self.callbacks):
            raise ConfigError(f"The 'callbacks' parameter of RunConfig must be a sequence of callables "
                              f"cb(record, model); got {self.callbacks!r} instead.")
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        if not isinstance(self.progress, bool):
            raise ConfigError(f"The 'progress' parameter of RunConfig must be a bool; got {self.progress!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (the storage as text; callbacks by name)."""
        d = asdict(self)
        d.update(run_dir=str(self.run_dir) if self.run_dir else None, storage=None if self.storage is None else
                 str(self.storage), callbacks=[getattr(cb, "__name__", type(cb).__name__) for cb in self.callbacks])
        return d


def as_config(value: Any, cls: type, param: str) -> Any:
    """``None`` → defaults, a mapping → ``cls(**mapping)`` (unknown keys refused), an instance passes through."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"Unknown {cls.__name__} field(s) {unknown} in the '{param}' parameter of search; it "
                              f"takes {sorted(known)}.")
        return cls(**value)
    raise ConfigError(f"The '{param}' parameter of search must be None, a dict or an autosub.{cls.__name__}; got "
                      f"{type(value).__name__} instead.")
