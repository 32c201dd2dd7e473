"""Channels-last against the default memory layout for the FedAvg CNN (one thread).

Three workloads, each timed as CPU time of this process (median of 5), default
layout first, then channels-last, then the ratio:

* a client update: 40 SGD steps at batch 10 (E=1 on 400 images, the study's setting);
* evaluation of 10,000 images at batch 100;
* a DAE epoch slice: 10 Adam steps at batch 64 through encoder and decoder.

The two layouts hold the same values; results agree to float rounding (the largest
weight difference after the client update is printed too).

    .venv/bin/python benchmarks/layout.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import median_cpu_s

from fedticket.io import git_commit, versions
from fedticket.models import build, fast_layout
from fedticket.pretrain.server import _Autoencoder
from fedticket.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def net(channels_last: bool):
    torch.manual_seed(0)
    model = build(ModelSpec(), (1, 28, 28), 10)
    return fast_layout(model) if channels_last else model


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(400, 1, 28, 28, generator=g), torch.randint(0, 10, (400,), generator=g)
    test = torch.rand(10000, 1, 28, 28, generator=g)

    def update(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, foreach=True)
        for i in range(0, 400, 10):
            loss = F.cross_entropy(model(x[i:i + 10]), y[i:i + 10])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    def evaluate(model):
        with torch.no_grad():
            for i in range(0, len(test), 100):
                model(test[i:i + 100]).argmax(1)

    def dae(channels_last):
        m = build(ModelSpec(), (1, 28, 28), 10)
        ae = _Autoencoder(m.body, m.decoder())
        if channels_last:
            fast_layout(ae)
        opt = torch.optim.Adam(ae.parameters())

        def step():
            for i in range(0, 640, 64):
                xb = test[i:i + 64]
                loss = F.binary_cross_entropy_with_logits(ae(xb), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return step

    def evaluation(channels_last):
        model = net(channels_last).eval()
        return lambda: evaluate(model)

    rows = {}
    for name, make in (("client update", lambda cl: (lambda: update(net(cl)))),
                       ("evaluation", evaluation), ("DAE steps", dae)):
        a, b = median_cpu_s(make(False)), median_cpu_s(make(True))
        rows[name] = {"default_s": a, "channels_last_s": b, "ratio": b / a}
        print(f"{name:14} default {a:6.3f} s   channels-last {b:6.3f} s   ratio {b / a:.2f}")
    da, db = update(net(False)).state_dict(), update(net(True)).state_dict()
    diff = max(float((da[k] - db[k]).abs().max()) for k in da)
    print(f"largest weight difference after one client update: {diff:.2e}")
    out = ROOT / "benchmarks" / "results" / "layout.json"
    out.write_text(json.dumps({"rows": rows, "max_weight_diff": diff, "git": git_commit(),
                               "versions": versions(), "argv": sys.argv}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
