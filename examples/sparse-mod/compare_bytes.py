"""Run this example app twice on a local deployment (2 SuperNodes on 127.0.0.1), with the
sparse mod and without, and print the SuperLink's network traffic and the test accuracy.

    .venv/bin/python examples/sparse-mod/compare_bytes.py
"""

import json
import tempfile
from pathlib import Path

import numpy as np

from fedticket.flower.deploy import LocalDeployment

APP = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sparse-mod-") as tmp:
        work = Path(tmp)
        nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
        with LocalDeployment(work / "deploy", nodes) as dep:
            for sparse in (True, False):
                out = work / f"final-{sparse}.npz"
                cfg = work / f"run-{sparse}.toml"
                cfg.write_text(f'sparse = {str(sparse).lower()}\nout = "{out}"\n')
                # the ServerApp writes OUT.json last: wait for it, not by polling Flower
                status = dep.wait(dep.submit(APP, cfg), 600, done=Path(str(out) + ".json"))
                if status["status"] != "finished:completed":
                    raise SystemExit(f"run {status['status']}")
                acc = json.loads(Path(str(out) + ".json").read_text())["test_accuracy"]
                w = np.load(out)["0.weight"]
                traffic = status["network-traffic"]
                print(f"sparse={str(sparse).lower():5}  total {traffic['total-bytes']:>9,} B  "
                      f"(in {traffic['inbound-bytes']:,}, out {traffic['outbound-bytes']:,})  "
                      f"test accuracy {acc:.3f}  zeros in 0.weight {(w == 0).mean():.4f}")


if __name__ == "__main__":
    main()
