"""Datasets, the server pool / client / test split, and client partitions."""

from fedticket.data.partition import dirichlet, iid, partition_clients, shards
from fedticket.data.sources import Source, load_source
from fedticket.data.splits import Labeled, Splits, Unlabeled, fit_images, load_splits

__all__ = [
    "Labeled",
    "Source",
    "Splits",
    "Unlabeled",
    "dirichlet",
    "fit_images",
    "iid",
    "load_source",
    "load_splits",
    "partition_clients",
    "shards",
]
