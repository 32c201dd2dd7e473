"""Classifiers (body + head) and the DAE decoders that mirror their bodies."""

from fedticket.models.registry import Classifier, build, prunable_names

__all__ = ["Classifier", "build", "prunable_names"]
