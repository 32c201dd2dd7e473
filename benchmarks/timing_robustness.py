"""How much a busy machine moves a run's client time (target p7).

Runs `configs/quick.toml` with `fedavg` (8 rounds) twice per setting: on an idle machine
and beside a child process that spins on one core for the whole run, and prints the
ratio of the run's client CPU time to the target accuracy, busy over idle. Settings:

- `2 threads`: every client update on 2 torch threads, in this process, timed with the
  process's CPU time (what fedticket did before clients were single-threaded);
- `1 thread, 2 workers`: what `fedticket run` does on 2 cores: each client update on
  one torch thread in one of two worker processes, timed with the thread's own CPU time.

The last line is `p7_busy_over_idle`, the second setting's ratio (target <= 1.10).
Run it with nothing else on the machine:

    .venv/bin/python benchmarks/timing_robustness.py [--rounds 8] [--target 0.6]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from _timing import cpu_model

from fedticket.report import compare, load_runs
from fedticket.runner import Simulator, cores, run_one
from fedticket.spec import load_config, parse_set

ROOT = Path(__file__).resolve().parents[1]
SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def client_time(rounds: int, target: float, engine: Simulator, threads: int,
                busy: bool) -> tuple[float, float]:
    """(client CPU s to ``target``, the run's wall s) of one fresh run."""
    config = replace(load_config(ROOT / "configs" / "quick.toml"), methods=("fedavg",))
    [spec] = config.specs(parse_set([f"federate.rounds={rounds}"]))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as out:
            run_one(spec, Path(out), None, engine=engine)
            result = compare(load_runs(out), target=target)["methods"]["fedavg"]
            wall = load_runs(out)[0].summary["run_wall_s"]
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        torch.set_num_threads(before)
    if result["client_cpu_s_to_target"]["mean"] is None:
        raise SystemExit(f"fedavg did not reach {target} in {rounds} rounds; lower --target")
    return result["client_cpu_s_to_target"]["mean"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--target", type=float, default=0.6)
    args = ap.parse_args()
    workers = max(1, cores())
    settings = {
        "2 threads": (Simulator(workers=1, client_threads=2), 2),
        f"1 thread, {workers} workers": (Simulator(workers=workers), torch.get_num_threads()),
    }
    print(f"CPU: {cpu_model()}; {cores()} cores; torch {torch.__version__}; "
          f"configs/quick.toml fedavg, {args.rounds} rounds, client CPU s to {args.target}")
    print(f"{'setting':22} {'idle s':>7} {'busy s':>7} {'busy/idle':>9} {'wall idle':>9} "
          f"{'wall busy':>9}")
    ratio = 0.0
    for label, (engine, threads) in settings.items():
        idle, wall_idle = client_time(args.rounds, args.target, engine, threads, busy=False)
        busy, wall_busy = client_time(args.rounds, args.target, engine, threads, busy=True)
        ratio = busy / idle
        print(f"{label:22} {idle:7.2f} {busy:7.2f} {ratio:9.3f} {wall_idle:9.1f} "
              f"{wall_busy:9.1f}")
    print(f"p7_busy_over_idle: {ratio:.3f}")


if __name__ == "__main__":
    main()
