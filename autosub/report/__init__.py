"""Reports: ``plots`` (profile bars, the pair heatmap, the greedy path)."""
from .plots import plot_greedy, plot_pairs, plot_profile

__all__ = ["plot_greedy", "plot_pairs", "plot_profile"]
