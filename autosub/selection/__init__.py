"""How blocks are rated: ``profiling`` (the finetuning profile), ``greedy_selection`` (the paper's greedy), ``prior``
(a rating of the blocks that a search starts from)."""
__all__ = ["greedy_selection", "prior", "profiling"]
