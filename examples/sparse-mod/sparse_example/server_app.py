"""ServerApp: Flower's own FedAvg; the grid is wrapped when ``sparse`` is on."""

import json

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedticket.flower.mods import SparseGrid, mask_from_model
from sparse_example import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    cfg = context.run_config
    net = task.model()
    task.prune(net, float(cfg["sparsity"]))
    arrays = ArrayRecord(net.state_dict())
    if cfg["sparse"]:
        grid = SparseGrid(grid, mask_from_model(net))  # <- the one line
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2)
    result = strategy.start(grid=grid, initial_arrays=arrays,
                            num_rounds=int(cfg["num-rounds"]))
    final = result.arrays.to_torch_state_dict()
    net.load_state_dict(final)
    acc = task.accuracy(net, *task.test_data())
    print(json.dumps({"test_accuracy": acc}))
    if cfg["out"]:
        task.save(str(cfg["out"]), final)
        with open(str(cfg["out"]) + ".json", "w") as f:
            json.dump({"test_accuracy": acc, "sparse": bool(cfg["sparse"])}, f)
