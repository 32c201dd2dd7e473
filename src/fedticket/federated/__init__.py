"""Federated averaging on a fixed subnetwork: client update, aggregation, round loop."""

from fedticket.federated.aggregate import client_seed, fedavg, sample_clients
from fedticket.federated.client import ClientUpdate, LocalTrainer, evaluate
from fedticket.federated.loop import ClientRecord, RoundLog, Totals, run_fedavg

__all__ = [
    "ClientRecord", "ClientUpdate", "LocalTrainer", "RoundLog", "Totals",
    "client_seed", "evaluate", "fedavg", "run_fedavg", "sample_clients",
]
