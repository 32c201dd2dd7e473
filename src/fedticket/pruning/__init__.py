"""Masks and pruning strategies."""

from fedticket.pruning.mask import Mask
from fedticket.pruning.strategies import STRATEGIES, level_fraction, prune_lowest

__all__ = ["Mask", "STRATEGIES", "level_fraction", "prune_lowest"]
