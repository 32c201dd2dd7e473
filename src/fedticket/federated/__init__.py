"""Federated averaging on a fixed subnetwork: client update, aggregation, strategy, engines."""

from fedticket.federated import dst, saliency  # noqa: F401  (they register their client tasks)
from fedticket.federated.aggregate import client_seed, fedavg, sample_clients
from fedticket.federated.client import ClientUpdate, LocalTrainer, evaluate
from fedticket.federated.messages import ClientRecord, Failure, Instruction, Reply
from fedticket.federated.simulate import LocalEngine, run_fedavg
from fedticket.federated.strategy import RoundLog, TicketStrategy, Totals
from fedticket.federated.tasks import TASKS, client_for, respond

__all__ = [
    "TASKS", "ClientRecord", "ClientUpdate", "Failure", "Instruction", "LocalEngine",
    "LocalTrainer", "Reply", "RoundLog", "TicketStrategy", "Totals", "client_for",
    "client_seed", "evaluate", "fedavg", "respond", "run_fedavg", "sample_clients",
]
