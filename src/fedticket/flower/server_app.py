"""The fedticket ServerApp: the same run as ``fedticket run``, with a Flower Grid as engine.

Before round 1 the server pretrains the DAE and prunes on its own unlabeled pool (the
cached stages of :mod:`fedticket.stages`), asks every SuperNode once which client
partition it holds, then drives :class:`~fedticket.federated.TicketStrategy` over the
grid. The run folder it writes (under the run config's ``out``) has the format of the
simulator's, named ``..._flower``, plus Flower's own byte counts per message.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedticket.accounting.wire import Codec
from fedticket.data import Splits
from fedticket.errors import FedticketError
from fedticket.federated.client import LocalTrainer
from fedticket.federated.messages import Failure, Instruction, Reply
from fedticket.flower.codec import instruction_record, read_reply
from fedticket.flower.common import (
    RECORD,
    RUN_CONFIG_DEFAULTS,
    framework_bytes,
    get,
    set_threads,
    spec_from_run_config,
)
from fedticket.io import atomic_write_json
from fedticket.runner import run_one

app = ServerApp()

POLL_S = 0.5
QUERY_TIMEOUT_S = 60.0  # a node asked mid-run for its partition (starts a ClientApp)


def exchange(grid: Grid, msgs: Sequence[Message], timeout_s: float) -> list[Message]:
    """Push ``msgs`` and pull their replies until all came or ``timeout_s`` passed,
    asking every ``POLL_S`` (Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls:
    up to 3 s lost on each exchange)."""
    pending = set(grid.push_messages(msgs))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(pending)))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(POLL_S)
    return replies


def ask_partitions(grid: Grid, nodes: Sequence[int], num_partitions: int,
                   timeout_s: float) -> list[tuple[int, int]]:
    """``(partition id, node id)`` for each of ``nodes`` that says which partition it holds
    (a QUERY message each); a node that errs, or names no partition of this run, is left
    out with a warning."""
    msgs = [Message(RecordDict({RECORD: ConfigRecord({})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]
    out = []
    for rep in exchange(grid, msgs, max(timeout_s, 1.0)):
        node = rep.metadata.src_node_id
        if rep.has_error():
            log(WARNING, "node %s did not say its partition: %s", node, rep.error.reason)
            continue
        try:
            pid = get(rep.content.config_records[RECORD], "partition-id", int)
        except (KeyError, TypeError, ValueError) as e:  # another node's bytes: not trusted
            log(WARNING, "node %s answered the partition query with %r", node, e)
            continue
        if not 0 <= pid < num_partitions:
            log(WARNING, "node %s holds partition %s; this run has partitions 0-%s",
                node, pid, num_partitions - 1)
            continue
        out.append((pid, node))
    return out


def partition_map(grid: Grid, num_partitions: int, wait_s: float,
                  asked: set[int] | None = None) -> dict[int, int]:
    """``partition id -> node id``, asking each connected node once (a QUERY message).

    Waits up to ``wait_s`` seconds for a node per partition; a partition held by two
    nodes, or one that no node holds in time, is an error. The nodes asked are added to
    ``asked``.
    """
    found: dict[int, int] = {}
    asked = set() if asked is None else asked
    deadline = time.monotonic() + wait_s
    while len(found) < num_partitions:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            asked.update(new)
            for pid, node in ask_partitions(grid, new, num_partitions,
                                            deadline - time.monotonic()):
                if pid in found and found[pid] != node:
                    raise FedticketError(f"partition {pid} is held by nodes {found[pid]} "
                                         f"and {node}; give each SuperNode its own partition-id")
                found[pid] = node
        if len(found) < num_partitions:
            if time.monotonic() > deadline:
                missing = sorted(set(range(num_partitions)) - set(found))
                raise FedticketError(f"no SuperNode holds partitions {missing} after "
                                     f"{wait_s:.0f} s; start one per partition")
            time.sleep(1.0)
    return found


class GridEngine:
    """Carries each round's instructions as Flower TRAIN messages, one per node."""

    name = "flower"

    def __init__(self, grid: Grid, nodes: dict[int, int], timeout_s: float,
                 asked: set[int] | None = None):
        self.grid, self.nodes, self.timeout_s = grid, nodes, timeout_s
        self.asked = set(nodes.values()) if asked is None else asked
        self.claims: dict[int, int] = {}  # partition -> node waiting for it

    def lost_state(self) -> set[int]:
        """Partitions whose SuperNode came back under a new node id (a restarted
        SuperNode): from now on they go to the new node, whose ``context.state`` is empty,
        so the strategy sends them the mask again.

        Nodes that joined since the last round are asked once for their partition. A
        claim on a partition whose node is still online is refused: without node
        authentication anyone who can reach the SuperLink can claim any partition, and
        the newest claim must not win. The claim is kept, and honoured once the holder
        has gone (a killed SuperNode stays online until its heartbeat expires, up to a
        minute, while its restarted self already asks)."""
        online = set(self.grid.get_node_ids())
        new = [n for n in online if n not in self.asked]
        self.asked.update(new)
        if new:
            for pid, node in ask_partitions(self.grid, new, len(self.nodes),
                                            min(self.timeout_s, QUERY_TIMEOUT_S)):
                if self.nodes.get(pid) == node:
                    continue
                if self.nodes.get(pid) in online:
                    log(WARNING, "partition %s: node %s claims it while node %s holds it "
                        "and is online; refused until that node has gone", pid, node,
                        self.nodes.get(pid))
                self.claims[pid] = node
        moved = set()
        for pid, node in sorted(self.claims.items()):
            if node not in online:  # the claimant left
                del self.claims[pid]
            elif self.nodes.get(pid) not in online:
                log(WARNING, "partition %s: node %s replaces node %s, which has gone (a "
                    "restarted SuperNode)", pid, node, self.nodes.get(pid))
                self.nodes[pid] = node
                moved.add(pid)
                del self.claims[pid]
        return moved

    def train_round(
        self, instructions: Sequence[Instruction]
    ) -> tuple[list[Reply], list[Failure]]:
        msgs, down_fw = [], {}
        for ins in instructions:
            msg = Message(RecordDict({RECORD: instruction_record(ins)}),
                          dst_node_id=self.nodes[ins.client], message_type=MessageType.TRAIN)
            down_fw[ins.client] = framework_bytes(msg)
            msgs.append(msg)
        sent = time.monotonic()
        ids = list(self.grid.push_messages(msgs))
        client_of = dict(zip(ids, (i.client for i in instructions), strict=True))
        pending = set(ids)
        replies: list[Reply] = []
        failures: list[Failure] = []
        r = instructions[0].round if instructions else 0
        deadline = time.monotonic() + self.timeout_s
        while pending and time.monotonic() < deadline:
            for msg in self.grid.pull_messages(list(pending)):
                mid = msg.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                cid = client_of[mid]
                if msg.has_error():
                    failures.append(Failure(r, cid, f"node error {msg.error.code}: "
                                                    f"{msg.error.reason}"))
                    continue
                try:
                    replies.append(_reply(msg, cid, down_fw[cid], time.monotonic() - sent))
                except (KeyError, TypeError, ValueError) as e:
                    failures.append(Failure(r, cid, f"malformed reply: {e!r}"))
            if pending:
                time.sleep(POLL_S)
        for mid in pending:
            failures.append(Failure(r, client_of[mid], f"no reply in {self.timeout_s:.0f} s"))
        for f in failures:
            log(WARNING, "round %s: client %s lost: %s", f.round, f.client, f.reason)
        log(INFO, "round %s: %s replies, %s failures", r, len(replies), len(failures))
        return replies, failures


def _reply(msg: Message, client: int, down_fw: int, elapsed_s: float) -> Reply:
    rep = read_reply(msg.content.config_records[RECORD], client)
    return replace(rep, framework_down_bytes=down_fw, framework_up_bytes=framework_bytes(msg),
                   elapsed_s=elapsed_s)


class FlowerEngine:
    """Engine factory for :func:`fedticket.runner.run_one`: maps partitions to nodes
    once the data is known, then hands out a :class:`GridEngine`."""

    name = "flower"
    clients_keep_state = False
    """A node's ``context.state`` belongs to one Flower run; a restarted ServerApp is a new
    run, so every node is sent the mask again."""

    def __init__(self, grid: Grid, min_replies: int, timeout_s: float, node_wait_s: float):
        self.grid, self.min_replies = grid, min_replies
        self.timeout_s, self.node_wait_s = timeout_s, node_wait_s
        self.engine: GridEngine | None = None

    def __call__(self, trainer: LocalTrainer, codec: Codec, splits: Splits) -> GridEngine:
        if self.engine is None:  # a run may ask for two (the saliency step, then training)
            asked: set[int] = set()
            nodes = partition_map(self.grid, len(splits.clients), self.node_wait_s, asked)
            log(INFO, "partitions -> nodes: %s", nodes)
            self.engine = GridEngine(self.grid, nodes, self.timeout_s, asked)
        return self.engine


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RUN_CONFIG_DEFAULTS | dict(context.run_config)
    end = str(cfg.get("end-file", ""))
    try:
        set_threads(cfg)
        spec = spec_from_run_config(cfg)
        engine = FlowerEngine(grid, int(cfg["min-replies"]), float(cfg["round-timeout"]),
                              float(cfg["node-wait"]))
        folder = run_one(spec, Path(str(cfg["out"])), sys.stderr, "", engine)
    except BaseException as e:  # the deployment reads why from here, not from Flower's log
        if end:
            atomic_write_json(Path(end), {"run_id": context.run_id, "status": "failed",
                                          "reason": f"{type(e).__name__}: {e}"})
        raise
    log(INFO, "fedticket run folder: %s", folder)
    if end:
        atomic_write_json(Path(end), {"run_id": context.run_id, "status": "completed",
                                      "reason": str(folder)})
