"""Real local Flower deployments (loopback, free ports, every process stopped by PID).

Each test starts a SuperLink and SuperNodes with fedticket's LocalDeployment; a round
costs about 10 s of Flower's fixed overhead, so the runs are two rounds long.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[flower]'")

from fedticket.flower.deploy import (  # noqa: E402
    CONNECTION,
    FLOWER_FILE,
    LocalDeployment,
    run_config_file,
    write_app,
)
from fedticket.flower.tls import node_key  # noqa: E402
from fedticket.spec import load_config, parse_set  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CONFIG = (ROOT / "configs" / "flower-tiny.toml").read_text()


def rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def only(folder: Path, suffix: str = "", method: str = "dae-ticket") -> Path:
    [run] = [p for p in folder.iterdir() if p.name.startswith(f"{method}_s0_")
             and p.name.endswith(suffix)]
    return run


# The real deployment's parity test runs SSFL's mask in 8-bit values, the method that
# needs most of Flower: a saliency round before round 1 (scored on the dense model in
# float32 whatever the run's values), the mask kept in each SuperNode's context.state,
# and q8 payloads both ways. Every other preset, and BatchNorm statistics on resnet8's
# compact model, go through Flower's messages and a real ClientApp in-process, against
# the simulator, in tests/test_engines.py.
def test_deploy_matches_the_simulator_round_for_round(tmp_path):
    method = "snip-ticket"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG.replace('methods = ["dae-ticket"]', f'methods = ["{method}"]'))
    # every download booked at the bytes it carries (federate.init_bytes = weights), so
    # that Flower's own count of the wire can be held against the ledger's below
    q8 = ["--set", 'federate.values="q8"', "--set", 'federate.init_bytes="weights"']
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sim = subprocess.run([str(BIN / "fedticket"), "run", str(cfg), "--out", str(tmp_path / "sim"),
                          "--threads", "1", "--quiet", *q8], capture_output=True, text=True,
                         env=env, timeout=300)
    assert sim.returncode == 0, sim.stderr
    dep = subprocess.run([str(BIN / "fedticket"), "deploy", str(cfg), "--out",
                          str(tmp_path / "dep"), "--nodes", "3", *q8],
                         capture_output=True, text=True, env=env, timeout=600)
    assert dep.returncode == 0, dep.stderr
    assert "3 SuperNodes, 1 torch thread(s) each" in dep.stderr  # 2 cores / 3 nodes
    # without --tls, one line says what anyone who reaches the SuperLink can do
    [warning] = [line for line in dep.stderr.splitlines()
                 if line.startswith("fedticket: warning")]
    assert "no SuperNode authentication" in warning and "use --tls" in warning
    a, b = only(tmp_path / "sim", method=method), only(tmp_path / "dep", "_flower", method)
    ma, mb = rows(a, "metrics.jsonl"), rows(b, "metrics.jsonl")
    assert [r["round"] for r in ma] == [r["round"] for r in mb] == [0, 1, 2]
    # the saliency of all 3 clients is round 0's traffic: dense float32 scores up, 4
    # bytes an entry of the whole model, not 8-bit values
    params = json.loads((a / "mask_report.json").read_text())["numel"]
    assert ma[0]["cum_up_bytes"] == mb[0]["cum_up_bytes"] == 3 * 4 * params
    for ra, rb in zip(ma, mb, strict=True):
        assert abs(ra["test_accuracy"] - rb["test_accuracy"]) <= 1e-4
        for key in ("cum_down_bytes", "cum_up_bytes", "cum_mask_bytes", "cum_client_flops"):
            assert ra[key] == rb[key], key
    assert ma[-1]["test_accuracy"] > ma[0]["test_accuracy"]  # it learned something
    # the same clients, in the same order, each round
    ca, cb = rows(a, "clients.jsonl"), rows(b, "clients.jsonl")
    assert sorted((r["round"], r["client"]) for r in ca) == \
        sorted((r["round"], r["client"]) for r in cb)
    # Flower's own counts: every message object, and the SuperLink's network total
    framework = mb[-1]["cum_framework_bytes"]
    payload = mb[-1]["cum_down_bytes"] + mb[-1]["cum_up_bytes"]
    assert payload < framework < 1.1 * payload
    flower = json.loads((b / FLOWER_FILE).read_text())
    assert flower["status"] == "finished:completed"
    assert framework <= flower["network_traffic"]["network-traffic"]["total-bytes"]
    summary = json.loads((b / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["threads"] == 1
    # compare reads both engines' folders side by side, marking the engine in each row
    both = tmp_path / "both"
    both.mkdir()
    for run in (a, b):
        os.symlink(run, both / run.name)
    out = subprocess.run([str(BIN / "fedticket"), "compare", str(both), "--json",
                          "--baseline", f"{method}+q8"], capture_output=True, text=True)
    assert set(json.loads(out.stdout)["methods"]) == {f"{method}+q8", f"{method}+q8@flower"}


def _spec(tmp_path, **federate):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    [spec] = load_config(cfg).specs(parse_set([f"federate.{k}={v}" for k, v in federate.items()]))
    return spec


def test_a_killed_supernode_is_logged_and_its_restart_takes_the_partition_back(tmp_path):
    """SIGKILL SuperNode 2 after round 1 and start it again at once: round 2 goes on
    without it (logged as a failure); the restarted node has a new node id and an empty
    state, so from round 3 it holds partition 2 again and is sent the mask again."""
    spec = _spec(tmp_path, client_fraction=1.0, rounds=3)
    app = write_app(tmp_path / "app")
    out = tmp_path / "out"
    nodes = [{"partition-id": i, "num-partitions": 3, "threads": 1} for i in range(3)]
    with LocalDeployment(tmp_path / "work", nodes) as dep:
        cfg = run_config_file(tmp_path / "r.toml", spec, out, 1, min_replies=2,
                              round_timeout=60.0)
        run_id = dep.submit(app, cfg)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait for round 1 in the run's temporary folder
            done = [r for m in out.glob(".tmp-*/metrics.jsonl") for r in rows(m.parent,
                                                                              m.name)]
            if any(r["round"] == 1 for r in done):
                break
            time.sleep(0.5)
        else:
            pytest.fail("round 1 never finished")
        dep.kill_node(2)
        dep.nodes[2] = dep.start_node(2)
        status = dep.wait(run_id, 400)
        log = dep.server_log(run_id)
    assert status["status"] == "finished:completed", log
    run = only(out, "_flower")
    # the ServerApp said it ended, and where its folder is (the wait watched for this)
    assert dep.ended(run_id) == {"run_id": run_id, "status": "completed", "reason": str(run)}
    metrics = rows(run, "metrics.jsonl")
    assert [(r["round"], r["clients"]) for r in metrics] == [(0, 0), (1, 3), (2, 2), (3, 3)]
    [lost] = rows(run, "failures.jsonl")
    assert (lost["round"], lost["client"]) == (2, 2)
    assert json.loads((run / "summary.json").read_text())["failed_client_rounds"] == 1
    assert "client 2 lost" in log
    assert "partition 2: node" in log and "(a restarted SuperNode)" in log
    mask = metrics[1]["cum_mask_bytes"] // 3  # round 1 sent it to each of the 3 nodes
    assert [r["cum_mask_bytes"] for r in metrics] == [0, 3 * mask, 3 * mask, 4 * mask]


@pytest.mark.parametrize("args, message", [
    (["--nodes", "4"], "--nodes 4 but data.num_clients is 3"),
    (["--nodes", "0"], "--nodes must be >= 1"),
    (["--round-timeout", "nan"], "--round-timeout must be a number of seconds > 0"),
    (["--min-replies", "0"], "--min-replies must be >= 1"),
    (["--method", "nope"], "unknown method 'nope'"),
])
def test_deploy_refuses_bad_input_before_starting_anything(tmp_path, capsys, args, message):
    from fedticket.cli import main

    out = tmp_path / "out"
    code = main(["deploy", str(ROOT / "configs" / "flower-tiny.toml"), "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()


def test_flower_app_writes_an_app_and_run_configs_that_carry_the_spec(tmp_path, capsys):
    import tomllib

    from fedticket.cli import main
    from fedticket.flower.common import spec_from_run_config

    app = tmp_path / "app"
    assert main(["flower-app", str(ROOT / "configs" / "quick.toml"), "--dir", str(app),
                 "--method", "dae-ticket", "--method", "fedavg", "--seed", "3",
                 "--out", "/srv/runs"]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["pyproject.toml", "run-dae-ticket-s3.toml",
                                               "run-fedavg-s3.toml"]
    project = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert project["components"] == {"serverapp": "fedticket.flower.server_app:app",
                                     "clientapp": "fedticket.flower.client_app:app"}
    run = tomllib.loads((app / "run-dae-ticket-s3.toml").read_text())
    assert set(run) <= set(project["config"])  # flwr refuses keys the app does not declare
    expected = next(s for s in load_config(ROOT / "configs" / "quick.toml").specs()
                    if s.method == "dae-ticket")
    spec = spec_from_run_config(run)
    assert (spec.method, spec.seed, run["out"]) == ("dae-ticket", 3, "/srv/runs")
    assert spec.data == expected.data and spec.federate == expected.federate


def test_a_killed_serverapp_resumes_from_its_checkpoint_in_a_new_run_over_tls(tmp_path):
    """On a deployment with TLS and SuperNode authentication (plain text to its port gets
    no answer, a SuperNode whose key was never registered is refused): SIGKILL the
    ServerApp after round 1 of 2 and submit the same run config again. The new run
    resumes after the checkpoint and ends with the simulator's model; the nodes' state
    died with the old run, so each is sent the mask again. Every process the deployment
    started is gone after it."""
    spec = _spec(tmp_path, rounds=2)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    sim = subprocess.run([str(BIN / "fedticket"), "run", str(cfg), "--out", str(tmp_path / "sim"),
                          "--threads", "1", "--quiet"], capture_output=True, text=True,
                         timeout=300)
    assert sim.returncode == 0, sim.stderr
    app = write_app(tmp_path / "app")
    out = tmp_path / "out"
    nodes = [{"partition-id": i, "num-partitions": 3, "threads": 1} for i in range(3)]
    with LocalDeployment(tmp_path / "work", nodes, tls=True) as dep:
        # plain text to the TLS port gets no answer
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{dep.address}/health", timeout=5)
        # a SuperNode whose key was never registered is refused and exits
        stranger = node_key(dep.certs["ca"].parent, "stranger")["stranger"]
        proc = dep.start_node(0, key=stranger)
        assert proc.popen.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in proc.log.read_text()
        run_cfg = run_config_file(tmp_path / "r.toml", spec, out, 1, round_timeout=120.0)
        first = dep.submit(app, run_cfg)
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            done = [r for m in out.glob(".tmp-*/metrics.jsonl") for r in rows(m.parent, m.name)]
            if any(r["round"] >= 1 for r in done):
                break
            if dep.ended(first) is not None:
                pytest.fail(f"the first run ended before round 1: {dep.server_log(first)}")
            time.sleep(0.5)
        else:
            pytest.fail(f"round 1 never finished: {dep.server_log(first)}")
        # this deployment's ServerApp (another test's may run beside it), by its PID
        found = subprocess.run(["pgrep", "-a", "-f", "flwr-serverapp"], capture_output=True,
                               text=True).stdout.splitlines()
        [server] = [int(line.split()[0]) for line in found if f":{dep.port} " in line + " "]
        os.kill(server, 9)
        dep.flwr("stop", str(first), CONNECTION)  # the SuperLink learns it is over
        second = dep.submit(app, run_cfg)
        status = dep.wait(second, 400)
        log = dep.server_log(second)
        pids = [p.popen.pid for p in dep.procs]
    assert status["status"] == "finished:completed", log
    for pid in pids:  # every process it started is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "resuming from the checkpoint after round" in log
    after = int(log.split("resuming from the checkpoint after round ")[1].split(";")[0])
    assert after >= 1
    run = only(out, "_flower")
    ms, mf = rows(only(tmp_path / "sim"), "metrics.jsonl"), rows(run, "metrics.jsonl")
    assert [r["round"] for r in mf] == [r["round"] for r in ms] == [0, 1, 2]
    for a, b in zip(ms, mf, strict=True):
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 1e-4
        assert a["cum_up_bytes"] == b["cum_up_bytes"]
    # after the restart the mask went again to every node sampled
    assert mf[-1]["cum_mask_bytes"] > ms[-1]["cum_mask_bytes"]
    with np.load(run / "final.npz") as f, np.load(only(tmp_path / "sim") / "final.npz") as s:
        for k in s.files:
            np.testing.assert_allclose(f[k], s[k], atol=1e-5)


def test_a_taken_port_is_given_up_for_another(tmp_path, monkeypatch):
    """The port a server is handed can be taken before it binds (an outgoing connection
    from the ephemeral range, say): the SuperLink or SuperNode then exits with errno 98,
    and the deployment starts it again on another port instead of running without it."""
    import fedticket.flower.deploy as deploy_mod

    holder = socket.socket()  # bound, not listening: like another process's connection
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    real, calls = deploy_mod.free_port, []

    def handed() -> int:  # calls 1 and 3: the SuperLink's and SuperNode 0's first ports
        calls.append(1)
        return taken if len(calls) in (1, 3) else real()

    monkeypatch.setattr(deploy_mod, "free_port", handed)
    try:
        with LocalDeployment(tmp_path / "work", [{"partition-id": 0}]) as dep:
            assert dep.port != taken
            urllib.request.urlopen(f"http://{dep.address}/health", timeout=5)
            [node] = dep.nodes
            assert node.popen.poll() is None  # the second SuperNode runs
            logs = {p.name: p.read_text().lower() for p in (tmp_path / "work").glob("*.log")}
    finally:
        holder.close()
    assert len(calls) == 4
    for name in ("superlink.log", "supernode0.log"):
        assert logs[name].count("address already in use") == 1, name


def test_a_failed_runs_reason_is_its_exception_in_plain_text():
    from fedticket.flower.deploy import failure_reason

    log = ("\x1b[92mINFO \x1b[0m:      round 0: 0 replies, 3 failures\n"
           "Traceback (most recent call last):\n"
           '  File "runner.py", line 9, in run_one\n'
           "fedticket.errors.FedticketError: no client sent usable saliency scores; the "
           "mask cannot be found\n"
           "\x1b[91mERROR \x1b[0m:     Exit Code: 201\n")
    assert failure_reason(log) == ("FedticketError: no client sent usable saliency scores; "
                                   "the mask cannot be found")
    assert failure_reason("\x1b[91mERROR \x1b[0m: Exit Code: 201\n") == "ERROR : Exit Code: 201"
    assert failure_reason("") == "no log"


def test_a_failed_deployment_keeps_its_logs_and_says_where(tmp_path, monkeypatch):
    """The run's failure is the message, and the deployment's log folder (which the
    message names) is still there; a deployment that succeeds removes it."""
    import fedticket.flower.deploy as deploy_mod
    from fedticket.errors import FedticketError

    class Started:  # no processes: what deploy() does around a run is under test
        def __init__(self, work, *args, **kwargs):
            self.address, self.work = "127.0.0.1:1", work
            (work / "superlink.log").write_text("the SuperLink's log\n")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    def fails(dep, *args, **kwargs):
        raise FedticketError("Flower run 7 ended finished:failed: FedticketError: no client "
                             "sent usable saliency scores; the mask cannot be found")

    monkeypatch.setattr(deploy_mod, "LocalDeployment", Started)
    monkeypatch.setattr(deploy_mod, "_deploy_one", fails)
    monkeypatch.setattr(deploy_mod.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    [spec] = load_config(ROOT / "configs" / "flower-tiny.toml").specs()
    with pytest.raises(FedticketError) as e:
        deploy_mod.deploy([spec], tmp_path / "out", stream=None)
    message = str(e.value)
    assert message.startswith("Flower run 7 ended finished:failed: FedticketError: no client")
    assert message.endswith(f"(the deployment's logs are kept in {tmp_path / 'work'})")
    assert (tmp_path / "work" / "superlink.log").read_text() == "the SuperLink's log\n"
    assert "\x1b" not in message
    monkeypatch.setattr(deploy_mod, "_deploy_one", lambda *a, **k: None)
    deploy_mod.deploy([spec], tmp_path / "out", stream=None)
    assert not (tmp_path / "work").exists()
