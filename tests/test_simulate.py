"""The simulator's engines: clients on one thread each, in this process or in worker
processes, with the same replies either way; client CPU time that a busy machine cannot
move."""

import json
import multiprocessing
import time

import pytest
import torch
from tests.test_federated import tiny_setup

from fedticket.accounting.wire import Codec
from fedticket.cli import main
from fedticket.errors import DivergenceError, FedticketError
from fedticket.federated.client import LocalTrainer, cpu_clock
from fedticket.federated.simulate import LocalEngine, ParallelEngine, threads
from fedticket.federated.strategy import Instruction
from fedticket.pruning.mask import model_tensors
from fedticket.runner import client_workers, cores
from fedticket.spec import FederateSpec

TIMES = ("wall_s", "cpu_s")


def round_of(codec, state, sizes):
    payload = codec.encode(state)
    return [Instruction(1, c, payload, b"", 100 + c) for c in sizes]


def test_worker_processes_give_the_replies_of_one_process_in_the_instructions_order():
    m, mask, clients, _ = tiny_setup(n_clients=5)
    # clients of different sizes, so the greedy split by size puts them out of order
    clients = [type(c)(c.x[: 4 + 4 * i], c.y[: 4 + 4 * i]) for i, c in enumerate(clients)]
    spec = FederateSpec(batch_size=4, momentum=0.9)
    trainer = LocalTrainer(m, mask, spec, (1, 8, 8))
    codec = Codec(mask)
    instructions = round_of(codec, model_tensors(m), [3, 0, 4, 1])
    local, _ = LocalEngine(trainer, codec, clients).train_round(instructions)
    with ParallelEngine(trainer, codec, clients, workers=2) as engine:
        parallel, failures = engine.train_round(instructions)
        again, _ = engine.train_round(instructions)  # the workers serve round after round
    assert failures == [] and [r.client for r in parallel] == [3, 0, 4, 1]
    for a, b, c in zip(local, parallel, again, strict=True):
        assert a.payload == b.payload == c.payload  # the same bytes go on the wire
        assert {k: v for k, v in vars(a).items() if k not in TIMES} == \
            {k: v for k, v in vars(b).items() if k not in TIMES}
        assert b.cpu_s > 0 and b.wall_s > 0
    assert not multiprocessing.active_children()  # closed: the workers are gone


def test_a_divergence_in_a_worker_is_the_runs_error_and_stops_no_one_else():
    m, mask, clients, _ = tiny_setup(n_clients=4)
    trainer = LocalTrainer(m, mask, FederateSpec(lr=1e30, batch_size=4), (1, 8, 8))
    codec = Codec(mask)
    with ParallelEngine(trainer, codec, clients, workers=2) as engine:
        with pytest.raises(DivergenceError, match="lower federate.lr"):
            engine.train_round(round_of(codec, model_tensors(m), [0, 1, 2]))
    assert not multiprocessing.active_children()


def test_clients_train_on_one_thread_and_the_clock_is_the_threads_own():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
        start, start_thread = cpu_clock(), time.thread_time()
        sum(i * i for i in range(200_000))
        # with one torch thread the clock is this thread's CPU time
        assert cpu_clock() - start == pytest.approx(time.thread_time() - start_thread, abs=2e-3)
    assert torch.get_num_threads() == before


def tiny_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'methods = ["fedavg", "dae-ticket-fast"]\nseeds = [0]\n'
        '[data]\ndataset = "digits"\npool_size = 300\nnum_clients = 6\ntest_size = 200\n'
        '[model]\nname = "cnn-digits"\n[pretrain]\nepochs = 1\nbatch_size = 32\n'
        '[prune]\nsparsity = 0.75\n'
        '[federate]\nrounds = 3\nclient_fraction = 0.5\nbatch_size = 8\nlr = 0.05\n')
    return path


def metrics(folder):
    return [{k: v for k, v in json.loads(line).items()
             if "wall_s" not in k and "cpu_s" not in k}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(cores() < 2, reason="worker processes need 2 cores to be allowed")
def test_a_run_with_worker_processes_has_the_metrics_of_a_sequential_run(tmp_path, capsys):
    config = tiny_config(tmp_path)
    for workers in ("1", "2"):
        assert main(["run", str(config), "--out", str(tmp_path / workers), "--quiet",
                     "--workers", workers]) == 0
    capsys.readouterr()
    for one in sorted((tmp_path / "1").glob("*_s0_*")):
        two = tmp_path / "2" / one.name
        assert metrics(one) == metrics(two), one.name  # accuracy, loss, bytes, FLOPs
        assert json.loads((two / "summary.json").read_text())["workers"] == 2
    assert not multiprocessing.active_children()


def test_worker_counts_that_would_share_a_core_are_refused():
    assert client_workers(1) == cores() and client_workers(cores()) == 1
    with pytest.raises(FedticketError, match=f"--jobs {cores() + 1} is more than the"):
        client_workers(cores() + 1)  # more runs at once than cores: refused as well
    with pytest.raises(FedticketError, match="--workers must be >= 1"):
        client_workers(1, 0)
    with pytest.raises(FedticketError, match=f"needs {2 * cores()} cores"):
        client_workers(2, cores())



