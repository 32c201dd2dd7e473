"""ClientApp: an ordinary Flower training function, plus one line (``mods=...``)."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedticket.flower.mods import mask_from_model, mask_gradients, sparse_update_mod
from sparse_example import task

app = ClientApp(mods=[sparse_update_mod])  # <- the one line


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    net = task.model()
    arrays = msg.content["arrays"]
    net.load_state_dict(arrays.to_torch_state_dict())
    # train only the subnetwork: the pruned weights arrive as zeros and keep zero gradients
    # (mask_from_model looks at the nn.Linear weights only, never at the BatchNorm layer)
    mask_gradients(net, mask_from_model(net))
    x, y = task.data(int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]))
    cfg = context.run_config
    loss = task.train(net, x, y, int(cfg["local-epochs"]), float(cfg["lr"]))
    reply = RecordDict({
        "arrays": ArrayRecord(net.state_dict()),
        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(x)}),
    })
    return Message(reply, reply_to=msg)
