"""Wire formats, FLOP formulas and the per-client cost ledger."""

from fedticket.accounting.wire import Codec
from fedticket.flops import LayerCost, layer_costs, train_flops_per_sample

__all__ = ["Codec", "LayerCost", "layer_costs", "train_flops_per_sample"]
