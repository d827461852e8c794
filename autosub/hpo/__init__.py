"""The search: ``searching`` (``search()``), ``space`` (what may be tried), ``budget`` (what may be spent),
``selectors`` (what to try next — where the block subset is decided), ``backends`` (how to run it: Optuna, Ray),
``engines`` (the runners, on Optuna's public API), ``result`` (SearchResult, TrialRecord)."""
__all__ = ["backends", "budget", "engines", "result", "searching", "selectors", "space"]
