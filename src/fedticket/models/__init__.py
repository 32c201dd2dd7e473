"""Classifiers (body + head) and the DAE decoders that mirror their bodies."""

from fedticket.models.registry import (
    Classifier,
    build,
    fast_layout,
    plain_layout,
    prunable_names,
)

__all__ = ["Classifier", "build", "fast_layout", "plain_layout", "prunable_names"]
