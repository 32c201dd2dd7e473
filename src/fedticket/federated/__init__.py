"""Federated averaging on a fixed subnetwork: client update, aggregation, strategy, engines."""

from fedticket.federated.aggregate import client_seed, fedavg, sample_clients
from fedticket.federated.client import ClientUpdate, LocalTrainer, evaluate
from fedticket.federated.simulate import LocalEngine, run_fedavg
from fedticket.federated.strategy import (
    ClientRecord,
    Failure,
    Instruction,
    Reply,
    RoundLog,
    TicketStrategy,
    Totals,
    client_train,
)

__all__ = [
    "ClientRecord", "ClientUpdate", "Failure", "Instruction", "LocalEngine", "LocalTrainer",
    "Reply", "RoundLog", "TicketStrategy", "Totals", "client_seed", "client_train",
    "evaluate", "fedavg", "run_fedavg", "sample_clients",
]
