"""The FedAvg CNN (McMahan et al. 2017) trained with Flower's FedAvg on synthetic
28x28 images: the same model size and the same amount of client work per round as
fedticket's app on Fashion-MNIST, so only the framework around it differs."""

import json
import time

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10),
    )


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    torch.set_num_threads(int(cfg["threads"]))
    net = cnn()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = images(int(cfg["samples"]), int(context.node_config["partition-id"]))
    opt = torch.optim.SGD(net.parameters(), lr=float(cfg["lr"]))
    bs = int(cfg["batch-size"])
    start = time.perf_counter()
    for _ in range(int(cfg["local-epochs"])):
        for idx in torch.randperm(len(x)).split(bs):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = MetricRecord({"num-examples": len(x), "train-s": time.perf_counter() - start})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
                   reply_to=msg)


server = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round starts (its rounds end at the evaluation)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.started: dict[int, float] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.set_num_threads(int(cfg["threads"]))
    net = cnn()
    x, y = images(int(cfg["test-samples"]), 10_000)
    n = len(list(grid.get_node_ids()))
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=n)
    rounds: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            acc = float((net(x).argmax(1) == y).float().mean())
        if server_round in strategy.started:
            rounds[server_round] = time.perf_counter() - strategy.started[server_round]
        return MetricRecord({"accuracy": acc})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(net.state_dict()),
                   num_rounds=int(cfg["num-rounds"]), evaluate_fn=evaluate)
    if cfg["out"]:
        with open(str(cfg["out"]), "w") as f:
            json.dump({"round_wall_s": rounds}, f)
