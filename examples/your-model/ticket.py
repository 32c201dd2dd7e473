"""The whole path in one script, through the Python API: your model and your images ->
DAE pretraining and pruning on the server -> federated rounds (in this process, then the
same ticket through Flower's ClientApp) -> an ONNX file of the compact model.

    python make_images.py images
    python ticket.py images --out fast.onnx
"""

from __future__ import annotations

import argparse

import torch
from mymodel import SmallResNet

import fedticket
from fedticket.data import load_source
from fedticket.spec import FederateSpec, PretrainSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="an image folder: one sub-folder per class")
    parser.add_argument("--out", default="fast.onnx", help="where to write the ONNX model")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)

    # your data: uint8 (N, C, H, W) arrays; 500 training images stand in for the server's
    # unlabeled pool (their labels are never read), the rest go to 4 clients
    src = load_source("folder", args.images)
    x, y = torch.from_numpy(src.x_train.copy()), torch.from_numpy(src.y_train.copy())
    pool, x, y = x[:500], x[500:], y[500:]
    clients = [(x[i::4].float() / 255, y[i::4]) for i in range(4)]
    test = (torch.from_numpy(src.x_test.copy()).float() / 255, torch.from_numpy(src.y_test.copy()))

    # the server: DAE pretraining on the unlabeled pool, then FLOP-aware channel pruning
    # and magnitude pruning to 70% sparsity
    ticket = fedticket.find_ticket(SmallResNet(src.num_classes), pool, sparsity=0.7,
                                   structured=True, pretrain=PretrainSpec(epochs=3))
    print("kept channels:", ticket.report["prune"]["structure"]["kept_units"])
    print(f"density {ticket.mask.density:.3f}; compact model "
          f"{sum(p.numel() for p in ticket.compact_model().parameters()):,} parameters")

    # the clients: FedAvg on the subnetwork only, in this process and through Flower
    spec = FederateSpec(rounds=args.rounds, client_fraction=0.5, local_epochs=2,
                        batch_size=16, lr=0.05, momentum=0.9)
    for engine in ("simulator", "flower"):
        result = fedticket.federate(ticket, clients, test, spec=spec, engine=engine)
        last = result.rounds[-1]
        print(f"{engine}: test accuracy {last['test_accuracy']:.3f} after {last['round']} "
              f"rounds, {last['cum_down_bytes'] + last['cum_up_bytes']:,} bytes of traffic")

    # ship it: the compact model, float32 images in [0, 1] in, logits out
    report = result.export(args.out)
    print(f"{report['path']}: {report['bytes']:,} bytes, {report['params']:,} parameters")


if __name__ == "__main__":
    main()
