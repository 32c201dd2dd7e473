"""Flower's message API in this process: a ticket from the Python API trained through a
Flower ``ClientApp``, with no SuperLink.

:func:`fedticket.federate` with ``engine="flower"`` lands here. The server side is the
ServerApp's own :class:`~fedticket.flower.server_app.GridEngine`: every instruction
becomes a Flower TRAIN ``Message``, every reply is read back with the same checks, and
Flower's byte count of each message is booked. The grid is :class:`InProcessGrid`,
which hands each message to a real ``flwr.clientapp.ClientApp`` (one ``Context`` per
node, so the mask is sent once and kept in ``context.state``, as on a SuperNode). The
ClientApp runs the same ``train_reply`` as fedticket's own, on data held in memory.

What this leaves out is the network: no SuperLink, SuperNode or gRPC. A deployment
across machines runs from a config (``fedticket deploy``), with the model named as
``PACKAGE.MODULE:FACTORY`` and the data as an image folder or ``.npz`` that each node
can read (docs/your-model.md).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedticket.accounting.wire import Codec
from fedticket.data import Labeled, Splits
from fedticket.federated.client import LocalTrainer
from fedticket.federated.messages import Failure, Instruction, Reply
from fedticket.federated.simulate import CLIENT_THREADS, threads
from fedticket.flower.client_app import train_reply
from fedticket.flower.server_app import GridEngine

ROUND_TIMEOUT_S = 3600.0
"""Every reply exists as soon as the message is pushed; the bound never binds."""
RUN_ID = 1
SERVER_NODE = 0


@contextmanager
def identity(node: int, task: int = 1) -> Iterator[None]:
    """Flower builds a message's id from the run and task identity of the process it runs
    in; a Flower process sets them, so here each side sets its own, and restores after."""
    from flwr.supercore.task_identity import TaskIdentity

    old = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, node, task
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class InProcessGrid(Grid):
    """A ``Grid`` whose nodes are ClientApps in this process: pushing a message runs the
    destination node's ClientApp on it at once; pulling returns the replies."""

    def __init__(self, apps: dict[int, ClientApp]):
        self.apps = apps
        self.contexts = {
            node: Context(run_id=RUN_ID, node_id=node, node_config={}, state=RecordDict(),
                          run_config={})
            for node in apps
        }
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        raise NotImplementedError("an in-process grid belongs to no Flower run")

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        raise NotImplementedError("build Message objects directly")

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def get_nodes(self) -> Any:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            try:
                with identity(node):
                    reply = self.apps[node](msg, self.contexts[node])
            except Exception as e:  # the node's app failed: an error reply, as Flower sends
                from flwr.app import Error

                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"),
                                reply_to=msg)
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def memory_client_app(model: Any, trainer: LocalTrainer, data: Labeled) -> ClientApp:
    """A ClientApp that trains a copy of ``model`` on ``data`` (one client's part)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context, copy.deepcopy(model), trainer.spec,
                           trainer.input_shape, data, trainer.saliency_batches)

    return app


class InProcessFlower:
    """The engine of :func:`fedticket.federate` for ``engine="flower"``: node ``i + 1``
    holds client ``i``'s data."""

    name = "flower-inprocess"

    def __init__(self, trainer: LocalTrainer, codec: Codec, clients: Sequence[Labeled]):
        apps = {i + 1: memory_client_app(trainer.model, trainer, c)
                for i, c in enumerate(clients)}
        self.grid = InProcessGrid(apps)
        self.engine = GridEngine(self.grid, {i: i + 1 for i in range(len(clients))},
                                 ROUND_TIMEOUT_S)

    def train_round(self, instructions: Sequence[Instruction]
                    ) -> tuple[list[Reply], list[Failure]]:
        with identity(SERVER_NODE), threads(CLIENT_THREADS):  # as the simulator's clients
            return self.engine.train_round(instructions)

    def lost_state(self) -> set[int]:
        return set()


class InProcessFlowerEngine:
    """:class:`InProcessFlower` as the engine of a whole run
    (:func:`fedticket.runner.run_one`): every client-side step of the run, the saliency
    prelude included, goes through Flower messages and a ClientApp."""

    name = "flower-inprocess"
    min_replies = 1
    clients_keep_state = True

    def __call__(self, trainer: LocalTrainer, codec: Codec, splits: Splits) -> InProcessFlower:
        return InProcessFlower(trainer, codec, splits.clients)
