"""A new method is one file: this module defines one, registers it, and runs it.

``redraw-ticket`` is the DAE ticket whose mask the server re-draws at random every
second round (the same number of weights in each tensor, new positions). All of it is
here: a round rule (:class:`fedticket.federated.rules.RoundRule`) that acts after
aggregation, one line in its registry and one preset in ``METHODS``. No other file
knows it, yet ``fedticket run`` runs it, the in-process Flower engine runs it, and the
ledger books the new mask each client then downloads.
"""

import json

import pytest
import torch

from fedticket import paths
from fedticket.cli import main
from fedticket.federated.rules import RULES, RoundRule, new_mask
from fedticket.flower.inprocess import InProcessFlowerEngine
from fedticket.pruning.mask import Mask
from fedticket.pruning.strategies import random_like
from fedticket.runner import Simulator, run_one
from fedticket.spec import METHODS, load_config
from shared import TINY_MLP


class Redraw(RoundRule):
    """After every ``every``-th round, a random mask with the same count per tensor."""

    changes_mask = True
    every = 2

    def end_round(self, strategy, round_):
        if round_ % self.every:
            return
        g = torch.Generator().manual_seed(round_)
        new_mask(strategy, random_like(strategy.codec.mask, strategy.prunable, g))


@pytest.fixture(scope="module")
def redraw_ticket():
    RULES.add("redraw", Redraw())
    METHODS["redraw-ticket"] = METHODS["dae-ticket"] | {
        "federate.rule": "redraw", "federate.compute": "dense-masked"}
    yield "redraw-ticket"
    del METHODS["redraw-ticket"]
    RULES.remove("redraw")


CONFIG = 'methods = ["redraw-ticket"]\n' + TINY_MLP.replace("rounds = 2", "rounds = 3")


def rows(folder, name):
    return [json.loads(x) for x in (folder / name).read_text().splitlines()]


def test_fedticket_run_runs_it_and_books_the_new_mask(redraw_ticket, tmp_path):
    cfg = tmp_path / "redraw.toml"
    cfg.write_text(CONFIG)
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    [folder] = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(redraw_ticket)]
    report = json.loads((folder / paths.MASK_REPORT).read_text())
    clients = rows(folder, "clients.jsonl")
    message = report["wire"]["mask_message_bytes"]
    # 2 of 4 clients a round; after round 2 every client is sent the re-drawn mask
    three = [c for c in clients if c["round"] == 3]
    assert len(three) == 2 and all(c["mask_bytes"] > 0 for c in three)
    first = [c for c in clients if c["round"] == 1]
    assert all(c["mask_bytes"] == message for c in first)
    final = Mask.load(folder / paths.MASK)
    # the mask the final model lives under has moved and kept its count per tensor
    start = load_config(cfg).specs()[0]
    assert final.nnz == report["nnz"]
    assert final.density == pytest.approx(report["density"])
    metrics = rows(folder, "metrics.jsonl")
    assert metrics[-1]["cum_mask_bytes"] == sum(c["mask_bytes"] for c in clients)
    assert start.federate.rule == "redraw"


def test_the_in_process_flower_engine_books_the_same_bytes(redraw_ticket, tmp_path):
    cfg = tmp_path / "redraw.toml"
    cfg.write_text(CONFIG)
    [spec] = load_config(cfg).specs()
    sim = rows(run_one(spec, tmp_path / "a", stream=None, engine=Simulator()),
               "metrics.jsonl")
    fl = rows(run_one(spec, tmp_path / "b", stream=None, engine=InProcessFlowerEngine()),
              "metrics.jsonl")
    keys = ("cum_down_bytes", "cum_up_bytes", "cum_mask_bytes", "cum_client_flops")
    assert [[r[k] for k in keys] for r in sim] == [[r[k] for k in keys] for r in fl]
    # round 3 downloads carry the re-drawn mask to both of its clients
    assert sim[3]["cum_mask_bytes"] > sim[2]["cum_mask_bytes"]

