"""How blocks are rated: ``profiling`` (the finetuning profile), ``greedy_selection`` (the paper's greedy), ``prior``
(a rating of the blocks that a search starts from), ``stats`` (per-block network statistics, no training) and
``predictor`` (the learned layer predictor, fitted on the shipped ``corpus/`` of measured profiles)."""
__all__ = ["greedy_selection", "predictor", "prior", "profiling", "stats"]
