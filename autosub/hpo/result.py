"""What a search returns: the best selection and hyperparameters, the final model, every trial, the Pareto front.

``SearchResult`` is engine-agnostic: the Optuna and Ray engines both turn their trials into ``TrialRecord``s.
``save(dir)`` writes an artifact directory (DESIGN convention 6): ``autosub.json`` (sorted keys, autosub
version, trunk fingerprint), ``tuned.safetensors`` holding only the tuned tensors (selected blocks + head,
BatchNorm buffers included) and ``trials.csv``; ``load(dir)`` + ``to_model(base_model)`` rebuild the model.
"""
from __future__ import annotations

import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._io import atomic_write, load_tensors, read_json, save_tensors, write_json
from .._version import __version__
from ..errors import ConfigError, WeightsError
from ..model.fingerprint import trunk_fingerprint

__all__ = ["SearchResult", "TrialRecord", "pareto_front", "preference", "selection_uncertainty", "trials_frame",
           "trunk_fingerprint"]

log = logging.getLogger(__name__)

ARTIFACT_JSON, ARTIFACT_TENSORS, ARTIFACT_TRIALS = "autosub.json", "tuned.safetensors", "trials.csv"
LOWER_IS_BETTER = {"cost", "params"}


@dataclass
class TrialRecord:
    """One trial, whatever engine ran it. ``values`` follow the search's objectives (score first)."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    values: list[float] | None
    params: dict[str, Any]
    selection: tuple[int, ...] | None
    hparams: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    seconds: float | None = None
    retry_of: int | None = None

    @property
    def score(self) -> float | None:
        """The validation score (last reported one for a pruned trial)."""
        if self.values:
            return float(self.values[0])
        if self.intermediate:
            return float(self.intermediate[max(self.intermediate)])
        return None

    def row(self, objectives: Sequence[str]) -> dict[str, Any]:
        u = self.user_attrs
        row: dict[str, Any] = {"number": self.number, "state": self.state, "score": self.score,
                               "selection": ",".join(map(str, self.selection)) if self.selection is not None else None,
                               "n_blocks": len(self.selection) if self.selection is not None else None}
        for i, name in enumerate(objectives[1:], start=1):
            row[name] = self.values[i] if self.values else None
        row.update({"lr": self.hparams.get("lr"), "weight_decay": self.hparams.get("weight_decay"),
                    "trainable_params": u.get("trainable_params"), "added_cost": u.get("added_cost"),
                    "epochs_run": len(self.intermediate) or None, "seconds": self.seconds,
                    "compute": u.get("compute"), "cum_compute": u.get("cum_compute"),
                    "proposed_by": u.get("proposed_by"), "fail_reason": u.get("fail_reason"),
                    "duplicate_of": u.get("duplicate_of"), "retry_of": self.retry_of,
                    "fused": u.get("fused"), "fused_k": u.get("fused_k")})
        row.update({f"params_{k}": v for k, v in sorted(self.params.items())})
        return row


def trials_frame(records: Sequence[TrialRecord], objectives: Sequence[str]) -> Any:
    """All trials as a pandas DataFrame, one row each, ordered by trial number."""
    import pandas as pd

    return pd.DataFrame([r.row(objectives) for r in sorted(records, key=lambda r: r.number)])


def pareto_front(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    """Non-dominated COMPLETE trials: over the objectives, or (score, added cost) for a single objective."""
    keys = list(objectives) if len(objectives) > 1 else ["score", "cost"]

    def vec(r: TrialRecord) -> list[float] | None:
        out = []
        for i, k in enumerate(keys):
            if len(objectives) > 1:
                v = r.values[i] if r.values else None
            else:
                v = r.score if k == "score" else r.user_attrs.get("added_cost")
            if v is None:
                return None
            out.append(-float(v) if k in LOWER_IS_BETTER else float(v))  # all maximized
        return out

    done = [(r, vec(r)) for r in records if r.state == "COMPLETE"]
    done = [(r, v) for r, v in done if v is not None]
    front, seen = [], set()
    for r, v in done:
        dominated = any(all(a >= b for a, b in zip(w, v)) and any(a > b for a, b in zip(w, v)) for _, w in done)
        if not dominated and tuple(v) not in seen:  # one trial per point
            seen.add(tuple(v))
            front.append(r)
    return sorted(front, key=lambda r: -(r.score or 0.0))


def preference(record: TrialRecord) -> tuple[float, ...]:
    """Best score first; among equal scores (small validation sets score in coarse steps) the cheaper selection:
    fewer trainable parameters, then lower added inference cost, then the earlier trial."""
    u = record.user_attrs
    params = u.get("trainable_params")
    cost = u.get("added_cost")
    return (float(record.values[0]), -float(params if params is not None else math.inf),
            -float(cost if cost is not None else math.inf), -record.number)


def selection_uncertainty(done: list[TrialRecord], best: TrialRecord, n_val: int) -> dict[str, Any]:
    """How sure the choice is: the best trial's fold spread (cross-validation) and how many trials score within
    one standard error of it (with a single validation split: within one binomial standard error)."""
    u = best.user_attrs
    folds = u.get("fold_scores")
    score = float(best.values[0])
    if folds:
        se = float(u.get("cv_std", 0.0)) / math.sqrt(len(folds))
    else:
        se = math.sqrt(max(score * (1 - score), 1e-12) / max(1, n_val))
    close = [r.number for r in done if r.number != best.number and float(r.values[0]) >= score - se]
    return {"score_se": se, "fold_scores": folds, "within_one_se": close}


@dataclass
class SearchResult:
    """The outcome of ``autosub.search``: best selection + hyperparameters, scores, final model, all trials."""

    selection: tuple[int, ...]
    hparams: dict[str, Any]
    score: float
    test_score: float | None
    model: nn.Module | None
    trials: Any  # pandas DataFrame
    records: list[TrialRecord]
    pareto: list[dict[str, Any]]
    spent: dict[str, Any]
    objectives: tuple[str, ...] = ("score",)
    best_trial: int | None = None
    study_name: str | None = None
    storage: str | None = None
    run_dir: str | None = None
    prior: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    study: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        test = f", test_score={self.test_score:.4f}" if self.test_score is not None else ""
        return (f"SearchResult(selection={self.selection}, score={self.score:.4f}{test}, trials={len(self.records)}, "
                f"spent={self.spent.get('compute')} full-FT epochs / {self.spent.get('seconds')} s)")

    @property
    def dashboard_command(self) -> str:
        """The shell command that opens this study in optuna-dashboard (a journal file path or an RDB URL, quoted
        for the shell)."""
        return f"optuna-dashboard {shlex.quote(str(self.storage))}" if self.storage else ""

    # -- persistence ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"autosub_version": __version__, "kind": "search_result", "selection": list(self.selection),
                "hparams": self.hparams, "score": self.score, "test_score": self.test_score,
                "pareto": self.pareto, "spent": self.spent, "objectives": list(self.objectives),
                "best_trial": self.best_trial, "study_name": self.study_name, "storage": self.storage,
                "run_dir": self.run_dir, "prior": self.prior, "config": self.config,
                "tuned_tensors": sorted(self.state) if self.state else []}

    def save(self, directory: str | Path) -> Path:
        """Write ``autosub.json`` + ``tuned.safetensors`` (tuned tensors only, checksummed) + ``trials.csv``.

        Every file is written atomically; the JSON, written last, lists each tensor's sha256, so a directory is
        complete exactly when its ``autosub.json`` exists and verifies.
        """
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out} exists and is a file; save() writes a directory — pass a directory path.")
        out.mkdir(parents=True, exist_ok=True)
        meta = self.to_dict()
        if self.state:
            meta["tensor_checksums"] = save_tensors(out / ARTIFACT_TENSORS, self.state, metadata={
                "format": "pt", "autosub_version": __version__,
                "trunk_fingerprint": str(self.config.get("trunk_fingerprint", "")),
                "selection": ",".join(map(str, self.selection))})
        if self.trials is not None and len(self.trials):
            atomic_write(out / ARTIFACT_TRIALS, self.trials.to_csv(index=False))
        write_json(meta, out / ARTIFACT_JSON)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> SearchResult:
        """Read a saved result (without a live model: call ``to_model(base_model)``).

        A missing, truncated or corrupt file, a tensor that fails its checksum, or a result from a newer autosub
        raises a :class:`~autosub.WeightsError` that names the file.
        """
        import pandas as pd

        d = Path(directory)
        if not d.is_dir():
            raise ConfigError(f"{d} is not a directory; point load() at a directory written by SearchResult.save().")
        meta = read_json(d / ARTIFACT_JSON, what="search result", required=("kind", "selection", "hparams", "score"))
        if meta.get("kind") != "search_result":
            raise ConfigError(f"{d / ARTIFACT_JSON} is not a search result (kind={meta.get('kind')!r}).")
        state = None
        if meta.get("tuned_tensors"):
            state = load_tensors(d / ARTIFACT_TENSORS, checksums=meta.get("tensor_checksums"), what="search result")
        trials = pd.DataFrame()
        if (d / ARTIFACT_TRIALS).exists():
            try:
                trials = pd.read_csv(d / ARTIFACT_TRIALS)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise WeightsError(f"{d / ARTIFACT_TRIALS} is not a readable CSV ({exc}); it is corrupt. Delete it to "
                                   "load the result without its trial table, or save the result again.") from exc
        return cls(selection=tuple(meta["selection"]), hparams=meta["hparams"], score=meta["score"],
                   test_score=meta.get("test_score"), model=None, trials=trials, records=[],
                   pareto=meta.get("pareto", []), spent=meta.get("spent", {}),
                   objectives=tuple(meta.get("objectives", ["score"])), best_trial=meta.get("best_trial"),
                   study_name=meta.get("study_name"), storage=meta.get("storage"), run_dir=meta.get("run_dir"),
                   prior=meta.get("prior"), config=meta.get("config", {}), state=state)

    def to_model(self, base_model: nn.Module | None = None) -> nn.Module:
        """The tuned model: ``base_model`` (the pretrained trunk the search started from) + the tuned tensors."""
        if base_model is None:
            if self.model is None:
                raise ConfigError("This result holds no model (it was loaded from disk); pass the pretrained "
                                  "base model: result.to_model(base_model).")
            return self.model
        from ..training.setup import resolve_blocks, with_head

        if not self.state:
            raise WeightsError("This result has no tuned tensors to apply.")
        model = with_head(base_model, int(self.config["num_classes"]), seed=0)
        partition = resolve_blocks(model, self.config.get("blocks"))
        want = self.config.get("trunk_fingerprint")
        if want and want not in (trunk_fingerprint(model, partition), _legacy_fingerprint(base_model)):
            raise WeightsError(f"The base model's frozen trunk (fingerprint {trunk_fingerprint(model, partition)[:12]}) "
                               f"is not the one this result was tuned from ({want[:12]}); pass the same pretrained "
                               "model.")
        current = model.state_dict()
        missing = [k for k in self.state if k not in current or current[k].shape != self.state[k].shape]
        if missing:
            raise WeightsError(f"The tuned tensors {missing[:5]} do not fit {type(model).__name__}; pass the "
                               "architecture the search ran on.")
        ref = next(model.parameters())
        model.load_state_dict({k: v.to(ref.device) for k, v in self.state.items()}, strict=False)
        return model.eval()


# ------------------------------------------------------------------------------------------------ helpers
def _legacy_fingerprint(base_model: nn.Module) -> str | None:
    """autosub 0.1 fingerprinted the caller's model with its discovered head; accepted on load for one release."""
    from ..model.blocks import discover_blocks

    try:
        return trunk_fingerprint(base_model, discover_blocks(base_model))
    except Exception:  # the base model has no discoverable blocks: no 0.1 result can come from it
        return None
