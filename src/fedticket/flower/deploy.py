"""Start, watch and stop a local Flower deployment, and run fedticket on it.

:class:`LocalDeployment` starts one ``flower-superlink`` and N ``flower-supernode``
processes on 127.0.0.1 (free ports, a private ``FLWR_HOME``), optionally with TLS
and SuperNode authentication, and stops every process it started by its PID.
:func:`deploy` runs specs on it with ``flwr run`` and waits for each run by polling
``flwr ls``, because the exit status of ``flwr run`` says nothing about the run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedticket import paths
from fedticket.environment import cores
from fedticket.errors import FedticketError, MachineError
from fedticket.io import atomic_write_json, atomic_write_text
from fedticket.runner import folder_name
from fedticket.spec import ExperimentSpec

CONNECTION = "fedticket-local"
FLOWER_FILE = "flower.json"

APP_PYPROJECT = """\
# A Flower app whose ServerApp and ClientApp are fedticket's (installed with
# `pip install fedticket[flower]` on the SuperLink's and every SuperNode's machine).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedticket-app"
version = "0.1.0"
dependencies = ["fedticket[flower]"]

[tool.flwr.app]
publisher = "fedticket"

[tool.flwr.app.components]
serverapp = "fedticket.flower.server_app:app"
clientapp = "fedticket.flower.client_app:app"

[tool.flwr.app.config]
{config}
"""


def write_app(folder: Path) -> Path:
    """Write the Flower app folder (only a ``pyproject.toml``) that ``flwr run`` takes."""
    from fedticket.flower.common import RUN_CONFIG_DEFAULTS

    folder.mkdir(parents=True, exist_ok=True)
    lines = "\n".join(f"{k} = {_toml(v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    atomic_write_text(folder / "pyproject.toml", APP_PYPROJECT.format(config=lines))
    return folder


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


BIND_CLASH = "address already in use"  # what a Flower server logs when its port is taken
START_ATTEMPTS = 3


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; else IANA's)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server we are about to start.

    It is taken below the ephemeral range: a port from inside it can go to any outgoing
    connection (a SuperNode's own to the SuperLink, say) between this check and the
    server's bind, and the server then exits with errno 98.
    """
    lo, _ = ephemeral_ports()
    pool = list(range(max(1024, lo - 12000), lo))
    for port in random.SystemRandom().sample(pool, min(len(pool), 200)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def threads_per_process(nodes: int) -> int:
    """torch threads for each of ``nodes`` ClientApp processes sharing this machine."""
    return max(1, cores() // max(1, nodes))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    log_offset: int = 0  # where this process's lines start in ``log``


@dataclass
class LocalDeployment:
    """A SuperLink and ``nodes`` SuperNodes on loopback; a context manager.

    ``node_configs[i]`` is SuperNode i's ``--node-config`` (e.g. its partition).
    """

    workdir: Path
    node_configs: Sequence[dict[str, Any]]
    tls: bool = False
    stream: TextIO | None = None
    start_timeout_s: float = 60.0
    procs: list[Proc] = field(default_factory=list)
    nodes: list[Proc | None] = field(default_factory=list)
    ends: dict[int, Path] = field(default_factory=dict)
    """Run id -> the file its ServerApp writes when it ends (:meth:`submit`)."""

    def __post_init__(self) -> None:
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.bin = Path(sys.executable).parent
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.update({
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            # the SuperLink and SuperNodes start flower-superexec / flwr-clientapp by name
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        self.certs: dict[str, Path] = {}

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.tls:
            from fedticket.flower.tls import make_certificates

            self.certs = make_certificates(self.workdir / "certs", len(self.node_configs))
        args = [str(self.bin / "flower-superlink"), "--host", "127.0.0.1",
                "--database", str(self.workdir / "state.db")]
        if self.tls:
            args += ["--ssl-ca-certfile", str(self.certs["ca"]),
                     "--ssl-certfile", str(self.certs["server"]),
                     "--ssl-keyfile", str(self.certs["server-key"]),
                     "--enable-supernode-auth"]
        else:
            args += ["--insecure"]
        for attempt in range(START_ATTEMPTS):
            proc = self._spawn("superlink", args + ["--port", str(self.port)])
            try:
                self._wait_healthy()
                break
            except MachineError:
                if attempt + 1 == START_ATTEMPTS or not self._clashed(proc):
                    raise
                self.procs.remove(proc)
                self.port = free_port()  # someone took the port: try another
                self.address = f"127.0.0.1:{self.port}"
        self._write_connection()
        for i in range(len(self.node_configs)):
            if self.tls:
                self.register_node(self.certs[f"node{i}.pub"])
        self.nodes.extend(self._start_nodes(range(len(self.node_configs))))

    def start_node(self, i: int, key: Path | None = None) -> Proc:
        """Start SuperNode ``i`` (with its own registered key under TLS, or ``key``) and
        wait until it listens or exits."""
        [proc] = self._start_nodes([i], key)
        return proc

    def _start_nodes(self, which: Sequence[int], key: Path | None = None) -> list[Proc]:
        """Start SuperNodes side by side and wait until each listens on its port or has
        exited; one that exited because its port was taken starts again on another."""
        procs = {i: self._spawn_node(i, key) for i in which}
        pending = list(procs)
        for attempt in range(START_ATTEMPTS):
            pending = [i for i in pending if not self._await_listening(*procs[i])
                       and self._clashed(procs[i][0])]
            if not pending or attempt + 1 == START_ATTEMPTS:
                break
            for i in pending:
                self.procs.remove(procs[i][0])
                procs[i] = self._spawn_node(i, key)
        return [proc for proc, _ in procs.values()]

    def _spawn_node(self, i: int, key: Path | None) -> tuple[Proc, int]:
        port = free_port()
        cfg = " ".join(f"{k}={_toml(v)}" for k, v in self.node_configs[i].items())
        args = [str(self.bin / "flower-supernode"), "--superlink", self.address,
                "--port", str(port), "--node-config", cfg]
        if self.tls:
            args += ["--root-certificates", str(self.certs["ca"]),
                     "--auth-supernode-private-key", str(key or self.certs[f"node{i}"])]
        else:
            args += ["--insecure"]
        return self._spawn(f"supernode{i}", args), port

    def _await_listening(self, proc: Proc, port: int) -> bool:
        """True once ``proc`` listens on ``port``; False if it exits first or times out."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                return False
            if listening(port):
                return True
            time.sleep(0.2)
        return False

    @staticmethod
    def _clashed(proc: Proc) -> bool:
        """Did ``proc`` exit because its port was taken? (Only its own log lines count.)"""
        if proc.popen.poll() is None:
            return False
        with open(proc.log, "rb") as f:
            f.seek(proc.log_offset)
            return BIND_CLASH in f.read().decode(errors="replace").lower()

    def _spawn(self, name: str, args: list[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as f:
            offset = f.tell()
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, p, log, offset)
        self.procs.append(proc)
        return proc

    def _wait_healthy(self) -> None:
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{self.address}/health"
        deadline = time.monotonic() + self.start_timeout_s
        ctx = None
        if self.tls:
            import ssl

            ctx = ssl.create_default_context(cafile=str(self.certs["ca"]))
        while time.monotonic() < deadline:
            link = self.procs[0].popen
            if link.poll() is not None:
                raise MachineError(f"flower-superlink exited with {link.returncode}; "
                                     f"see {self.procs[0].log}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise MachineError(f"flower-superlink not healthy after {self.start_timeout_s:.0f} s; "
                             f"see {self.procs[0].log}")

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "",
                 f"[superlink.{CONNECTION}]", f'address = "{self.address}"']
        if self.tls:
            lines.append(f'root-certificates = "{self.certs["ca"]}"')
        else:
            lines.append("insecure = true")
        atomic_write_text(self.home / "config.toml", "\n".join(lines) + "\n")

    def stop(self) -> None:
        """Stop every process this deployment started, newest first: SIGTERM to its
        process group, then SIGKILL after 10 s."""
        for proc in reversed(self.procs):
            _terminate(proc.popen)
        self.procs.clear()

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` and its ClientApp processes (a crash, not a shutdown)."""
        proc = self.nodes[i]
        if proc is None:
            return
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait()
        self.nodes[i] = None

    # ------------------------------------------------------------------- flwr
    def flwr(self, *args: str, timeout: float = 120) -> str:
        res = subprocess.run([str(self.bin / "flwr"), *args], env=self.env, text=True,
                             capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FedticketError(f"flwr {args[0]} failed ({res.returncode}): {tail[0]}")
        return res.stdout

    def register_node(self, public_key: Path) -> None:
        data = _json_in(self.flwr("supernode", "register", str(public_key), CONNECTION,
                                  "--format", "json"))
        if not data.get("success", True):  # flwr exits 0 on failure: read the JSON
            raise FedticketError(f"registering {public_key.name} failed: "
                                 f"{data.get('error-message', data)}")

    def submit(self, app: Path, run_config: Path) -> int:
        """``flwr run`` the app; return the run id (the command returns at once). A run
        config written by :func:`run_config_file` names the file its ServerApp writes when
        the run ends; an old one is removed first."""
        import tomllib

        end = tomllib.loads(run_config.read_text()).get("end-file")
        if end:
            Path(end).unlink(missing_ok=True)
        out = self.flwr("run", str(app), CONNECTION, "--run-config", str(run_config),
                        "--format", "json")
        data = _json_in(out)
        if not data.get("success", True) or "run-id" not in data:
            raise FedticketError(f"flwr run did not start a run: {out.strip()[:300]}")
        run_id = int(data["run-id"])
        if end:
            self.ends[run_id] = Path(end)
        return run_id

    def status(self, run_id: int) -> dict[str, Any]:
        data = _json_in(self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json"))
        if not data.get("success", True):
            raise FedticketError(f"flwr ls failed: {data.get('error-message', data)}")
        runs = data.get("runs") or []
        if not runs:
            raise FedticketError(f"flwr ls knows no run {run_id}")
        return dict(runs[0])

    def ended(self, run_id: int) -> dict[str, Any] | None:
        """What run ``run_id``'s ServerApp wrote when it ended (``status`` ``completed``
        or ``failed``, and a ``reason``), or None while it runs, if it was killed, or if
        its run config names no end file."""
        end = self.ends.get(run_id)
        try:
            data = json.loads(end.read_text()) if end is not None else None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("run_id") == run_id else None

    def wait(self, run_id: int, timeout_s: float, done: Path | None = None,
             poll_s: float = 0.2, ask_every_s: float = 15.0) -> dict[str, Any]:
        """Wait until the run finished; return its last ``flwr ls`` entry.

        Each ``flwr ls`` is a Python process (about 1.5 s of CPU here), so the wait
        watches for a file instead: the end file the run's ServerApp writes
        (:meth:`ended`), or ``done``, whichever the run makes. Until it appears it asks
        ``flwr ls`` only every ``ask_every_s`` seconds (a ServerApp that was killed
        writes nothing), then every second until Flower says the run finished."""
        deadline = time.monotonic() + timeout_s
        ask = time.monotonic() + ask_every_s
        while True:
            now = time.monotonic()
            over = self.ended(run_id) is not None or (done is not None and done.exists())
            if over or now >= ask:
                st = self.status(run_id)
                if str(st.get("status", "")).startswith("finished"):
                    return st
                ask = time.monotonic() + (1.0 if over else ask_every_s)
            if now > deadline:
                raise MachineError(f"run {run_id} not finished after {timeout_s:.0f} s")
            if self.procs and self.procs[0].popen.poll() is not None:
                raise MachineError("flower-superlink died during the run; "
                                     f"see {self.procs[0].log}")
            time.sleep(poll_s)

    def server_log(self, run_id: int) -> str:
        try:
            return self.flwr("log", str(run_id), CONNECTION, "--show", timeout=60)
        except (FedticketError, MachineError, subprocess.TimeoutExpired) as e:
            return f"(no log: {e})"


def _terminate(p: subprocess.Popen, grace_s: float = 10.0) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def _json_in(text: str) -> dict[str, Any]:
    """The JSON object in a ``flwr ... --format json`` output."""
    start = text.find("{")
    if start < 0:
        raise FedticketError(f"flwr printed no JSON: {text.strip()[:200]}")
    obj = json.loads(text[start:])
    if not isinstance(obj, dict):
        raise FedticketError("flwr printed JSON that is not an object")
    return obj


# ------------------------------------------------------------------- fedticket
def run_config_file(path: Path, spec: ExperimentSpec, out: Path, threads: int,
                    resolve: bool = True, **extra: Any) -> Path:
    """The ``--run-config`` TOML of one run: the spec as JSON and where to write results
    (made absolute when ``resolve``: the ServerApp does not run in this directory).

    With ``resolve`` (a run on this machine) it also names an end file beside ``path``
    (``.end.json``), which the ServerApp writes when the run ends, so that
    :meth:`LocalDeployment.wait` need not poll Flower."""
    cfg = {"spec": json.dumps(spec.to_dict()), "out": str(out.resolve() if resolve else out),
           "threads": threads}
    if resolve:
        cfg["end-file"] = str(path.with_suffix(".end.json").resolve())
    cfg.update({k.replace("_", "-"): v for k, v in extra.items()})
    atomic_write_text(path, "".join(f"{k} = {_toml(v)}\n" for k, v in cfg.items()))
    return path


def no_auth_warning(address: str) -> str:
    """The one line a deployment without SuperNode authentication prints."""
    return (f"fedticket: warning: no TLS and no SuperNode authentication: any process that "
            f"can reach {address} can join as a SuperNode, take a partition once its node "
            "has gone, and send updates (checked, not authenticated); use --tls")


def deploy(
    specs: Sequence[ExperimentSpec],
    out: Path,
    nodes: int | None = None,
    tls: bool = False,
    threads: int | None = None,
    stream: TextIO | None = sys.stderr,
    run_timeout_s: float = 3600.0,
    min_replies: int = 1,
    round_timeout_s: float = 600.0,
) -> list[Path]:
    """Run each spec on a fresh local deployment; return the run folders.

    One SuperNode per client partition (``data.num_clients``). Finished run folders
    are skipped, as with ``fedticket run``.
    """
    if not specs:
        return []
    parts = {s.data.num_clients for s in specs}
    if len(parts) != 1:
        raise FedticketError("every spec of one deploy must have the same data.num_clients")
    n = parts.pop()
    if nodes is not None and nodes != n:
        raise FedticketError(f"--nodes {nodes} but data.num_clients is {n}: each SuperNode "
                             f"holds one client partition; use --set data.num_clients={nodes}")
    threads = threads or threads_per_process(n)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not paths.is_finished(paths.run_dir(out, folder_name(s, "flower")))]
    folders = []
    for s in specs:
        if s not in todo and stream:
            print(f"{s.method} seed {s.seed}: finished already, skipped", file=stream)
    if todo:
        work = Path(tempfile.mkdtemp(prefix="fedticket-deploy-"))
        ok = False
        try:
            app = write_app(work / "app")
            node_cfgs = [{"partition-id": i, "num-partitions": n, "threads": threads}
                         for i in range(n)]
            with LocalDeployment(work, node_cfgs, tls=tls, stream=stream) as dep:
                if stream:
                    print(f"deployment: SuperLink {dep.address}{' (TLS, node auth)' if tls else ''}"
                          f", {n} SuperNodes, {threads} torch thread(s) each; logs in {work}",
                          file=stream, flush=True)
                if not tls:  # always, even with --quiet: it is about security
                    print(no_auth_warning(dep.address), file=sys.stderr, flush=True)
                for i, spec in enumerate(todo, start=1):
                    _deploy_one(dep, app, spec, out, threads, work, stream, run_timeout_s,
                                f"[{i}/{len(todo)}] {spec.method} seed {spec.seed}",
                                min_replies=min_replies, round_timeout=round_timeout_s)
            ok = True
        except (FedticketError, MachineError) as e:  # the logs say why: keep them
            raise type(e)(f"{e} (the deployment's logs are kept in {work})") from None
        finally:
            if ok:
                shutil.rmtree(work, ignore_errors=True)
    for s in specs:
        folders.append(paths.run_dir(out, folder_name(s, "flower")))
    return folders


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
"""A terminal escape sequence (Flower colours its log lines)."""
EXCEPTION = re.compile(r"\b((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception)): (.+)")


def failure_reason(log: str) -> str:
    """Why a Flower run failed, in one line from its ServerApp's log: the last exception
    it names (type and message, without the module path), else the last line that says
    error, else the last line; never a terminal escape code."""
    lines = [ln.strip() for ln in ANSI.sub("", log).splitlines() if ln.strip()]
    for line in reversed(lines):
        found = EXCEPTION.search(line)
        if found:
            return f"{found.group(1).rsplit('.', 1)[-1]}: {found.group(2).strip()}"
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no log"])[-1]


def _deploy_one(dep: LocalDeployment, app: Path, spec: ExperimentSpec, out: Path, threads: int,
                work: Path, stream: TextIO | None, timeout_s: float, label: str,
                **extra: Any) -> Path:
    cfg = run_config_file(work / f"run-{spec.run_name()}.toml", spec, out, threads, **extra)
    started = time.monotonic()
    run_id = dep.submit(app, cfg)
    if stream:
        print(f"{label}: Flower run {run_id} submitted", file=stream, flush=True)
    st = dep.wait(run_id, timeout_s)
    folder = paths.run_dir(out, folder_name(spec, "flower"))
    if st.get("status") != "finished:completed" or not paths.is_finished(folder):
        end = dep.ended(run_id) or {}
        reason = end.get("reason") if end.get("status") == "failed" else None
        raise FedticketError(f"Flower run {run_id} ended {st.get('status')}: "
                             f"{reason or failure_reason(dep.server_log(run_id))}")
    record = {
        "run_id": run_id,
        "status": st.get("status"),
        "network_traffic": {k: v for k, v in st.items() if "traffic" in k or "bytes" in k},
        "flwr_ls": st,
        "wall_s": time.monotonic() - started,
        "nodes": len(dep.node_configs),
        "threads": threads,
        "tls": dep.tls,
    }
    atomic_write_json(folder / FLOWER_FILE, record)
    if stream:
        print(f"{label}: done in {record['wall_s']:.0f} s -> {folder}", file=stream, flush=True)
    return folder
