"""A prior: a rating of the blocks (best first, with scores and measured pairs) that a search starts from.

It comes from a finetuning profile (``autosub.profile``), the learned predictor or one network statistic
(``search(prior="predictor")``, ``prior="rgn"`` …, with the statistics behind it as ``evidence``), or any
``{block: score}`` mapping; ``autosub/hpo/selectors.py`` explains how TPE uses it (warm start, enqueued first
trials, biased sampling).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["Prior"]


@dataclass
class Prior:
    """A rating of the blocks (best first) with optional pair scores and what it came from.

    ``source``: ``"profile"``, ``"predictor"``, a statistic's name (``"rgn"`` …), ``"scores"`` or ``"user"``;
    ``profile``: the Profile, when it is one; ``evidence``: plain data on how a zero-cost prior was got (the
    per-block statistics, their wall time), kept with the prior in the study and the result.
    """

    ranking: list[int]
    scores: dict[int, float] = field(default_factory=dict)
    pairs: list[tuple[tuple[int, int], float]] = field(default_factory=list)
    source: str = "user"
    profile: Any = None  # an autosub.profile.Profile, when the prior is one
    evidence: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: Any, n_blocks: int) -> Prior:
        """Build a Prior from a Profile, a Prior, a ``{block: score}`` mapping or a per-block score sequence."""
        if isinstance(obj, Prior):
            prior = obj
        elif hasattr(obj, "ranking") and hasattr(obj, "entries"):
            scores = {int(e.block): float(e.mean) for e in obj.entries if e.block is not None}
            pairs = sorted(((tuple(int(i) for i in p.selection), float(p.mean)) for p in getattr(obj, "pairs", [])),
                           key=lambda kv: -kv[1])
            prior = cls([int(b) for b in obj.ranking()], scores, pairs, "profile", obj)  # type: ignore[arg-type]
        elif isinstance(obj, Mapping):
            scores = {int(k): float(v) for k, v in obj.items()}
            prior = cls(sorted(scores, key=lambda b: (-scores[b], b)), scores, [], "scores")
        elif isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) == n_blocks:
            scores = {i: float(v) for i, v in enumerate(obj)}
            prior = cls(sorted(scores, key=lambda b: (-scores[b], b)), scores, [], "scores")
        else:
            raise ConfigError(f"The 'prior' parameter of search must be 'auto', 'profile', 'predictor', a statistic's "
                              f"name, None, a Profile, a {{block: score}} dict or {n_blocks} per-block scores; got "
                              f"{type(obj).__name__} instead.")
        bad = [b for b in prior.ranking if not 0 <= b < n_blocks]
        if bad or not prior.ranking:
            raise ConfigError(f"The prior rates blocks {bad or prior.ranking} but the model has blocks "
                              f"0..{n_blocks - 1}; build it on the same model.")
        return prior

    def z(self, n_blocks: int) -> np.ndarray:
        """Per-block normal quantile of the rank (best ≈ +2, worst ≈ -2; unrated blocks 0)."""
        z = np.zeros(n_blocks)
        m = len(self.ranking)
        for r, b in enumerate(self.ranking):
            z[b] = statistics.NormalDist().inv_cdf((m - r - 0.5) / m)
        return z

    def to_dict(self) -> dict[str, Any]:
        out = {"ranking": list(self.ranking), "scores": {str(k): v for k, v in self.scores.items()},
               "pairs": [[list(p), s] for p, s in self.pairs], "source": self.source}
        if self.evidence:
            out["evidence"] = self.evidence
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prior:
        return cls([int(b) for b in d["ranking"]], {int(k): float(v) for k, v in d.get("scores", {}).items()},
                   [((int(p[0][0]), int(p[0][1])), float(p[1])) for p in d.get("pairs", [])], d.get("source", "user"),
                   evidence=dict(d.get("evidence") or {}))
