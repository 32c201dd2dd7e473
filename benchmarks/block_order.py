"""Pool-then-ReLU against ReLU-then-pool in the FedAvg CNN's conv blocks (one thread).

The registry's CNNs pool before the ReLU. The two orders compute the same numbers bit
for bit, forward and backward (``tests/test_models.py`` checks it), because ReLU is
monotone and so commutes with a max. Pooling first leaves the ReLU a quarter of the
values. This prints the CPU time of each order (channels-last, as the clients run; the
two called in turn 9 times, the ratio the median of the per-pair ratios) on real
Fashion-MNIST images for

* the server's test pass: fedticket's ``evaluate`` on the 10,000 test images;
* a client update: 40 SGD steps at batch 10 (E=1 on 400 images, the study's setting).

On random images (``torch.rand``) the ReLU-first evaluation is far slower than on real
ones (2.9 s against 1.8 s in one run), which made the pool-first order look like 0.59x;
on real images it is a few percent. The real images are what the study evaluates.

and ``p8_eval_pool_first_over_relu_first: X`` last.

    .venv/bin/python benchmarks/block_order.py
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import cpu_model, paired_cpu_s

from fedticket.data import Labeled
from fedticket.data.sources import load_fashion_mnist, to_tensor
from fedticket.federated.client import evaluate
from fedticket.io import git_commit, versions
from fedticket.models import build, fast_layout
from fedticket.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def net(pool_first: bool):
    """The FedAvg CNN with its blocks in either order (same weights for both)."""
    torch.manual_seed(0)
    model = build(ModelSpec(), (1, 28, 28), 10)
    if not pool_first:
        parts = dict(model.body.named_children())
        order = [n for n in parts if not n.startswith("pool")]
        for i in (1, 2):
            order.insert(order.index(f"relu{i}") + 1, f"pool{i}")
        model.body = torch.nn.Sequential(OrderedDict((n, parts[n]) for n in order))
    return fast_layout(model)


def main() -> None:
    torch.set_num_threads(1)
    src = load_fashion_mnist("")
    x, y = to_tensor(src.x_train[:400]), torch.as_tensor(src.y_train[:400]).long()
    test = Labeled(to_tensor(src.x_test), torch.as_tensor(src.y_test).long())

    def update(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, foreach=True)
        for i in range(0, 400, 10):
            loss = F.cross_entropy(model(x[i:i + 10]), y[i:i + 10])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    def evaluation(pool_first):
        model = net(pool_first).eval()

        return lambda: evaluate(model, test)

    print(f"CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}")
    rows = {}
    for name, make in (("evaluation", evaluation),
                       ("client update", lambda pf: (lambda: update(net(pf))))):
        a, b, ratio = paired_cpu_s(make(False), make(True))
        rows[name] = {"relu_first_s": a, "pool_first_s": b, "ratio": ratio}
        print(f"{name:14} relu-first {a:6.3f} s   pool-first {b:6.3f} s   ratio {ratio:.2f}")
    sa, sb = update(net(False)).state_dict(), update(net(True)).state_dict()
    same = all(torch.equal(sa[k], sb[k]) for k in sa)
    print(f"weights after one client update identical: {same}")
    out = ROOT / "benchmarks" / "results" / "block_order.json"
    out.write_text(json.dumps({"rows": rows, "identical": same, "cpu": cpu_model(),
                               "git": git_commit(), "versions": versions(),
                               "argv": sys.argv}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    print(f"p8_eval_pool_first_over_relu_first: {rows['evaluation']['ratio']:.3f}")


if __name__ == "__main__":
    main()
