"""Pieces several test files use: the smallest config that runs, and a Flower grid
whose nodes answer at once (no Flower process involved)."""

GOOD = """
methods = ["fedavg"]
seeds = [0]
[data]
dataset = "digits"
pool_size = 200
num_clients = 4
[model]
name = "mlp"
hidden = [16]
[pretrain]
epochs = 1
[federate]
rounds = 1
client_fraction = 0.5
local_epochs = 1
batch_size = 32
"""


TINY_MLP = """
seeds = [0]
[data]
dataset = "digits"
pool_size = 200
train_size = 400
num_clients = 4
[model]
name = "mlp"
hidden = [24]
[pretrain]
epochs = 1
[prune]
synflow_iterations = 5
[federate]
rounds = 2
client_fraction = 0.5
local_epochs = 1
batch_size = 20
"""
"""A run of any preset in a second or two: the 8x8 digits, 4 clients, 2 a round, a small
MLP (test_engines.py runs every preset on it, test_new_method.py a new one)."""


class Loopback:
    """A grid whose nodes answer at once, each with its own reply function."""

    def __init__(self, answer):
        self.answer, self.inbox = answer, {}

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            ids.append(m.object_id)
            self.inbox[m.object_id] = self.answer(m)
        return ids

    def pull_messages(self, ids):
        return [self.inbox.pop(i) for i in list(ids) if i in self.inbox]
