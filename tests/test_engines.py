"""One client path for every engine: every preset in METHODS, with float32 values and
with 8-bit values where the preset takes them, runs 2 rounds on the simulator and
through Flower's message API (a real ClientApp per node, InProcessFlower), the
saliency prelude included, and both engines book the same bytes and FLOPs and end with
the same model."""

import json

import pytest
import torch

from fedticket import paths
from fedticket.errors import ConfigError
from fedticket.flower.inprocess import InProcessFlowerEngine
from fedticket.io import load_states
from fedticket.runner import Simulator, run_one
from fedticket.spec import (
    METHODS,
    ExperimentSpec,
    apply_overrides,
    load_config,
    with_method,
)
from shared import TINY_MLP

KEYS = ("cum_down_bytes", "cum_up_bytes", "cum_mask_bytes", "cum_client_flops")


def spec_of(base, method, values):
    try:
        return apply_overrides(with_method(base, method), {"federate.values": values})
    except ConfigError:
        return None


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    cfg.write_text(TINY_MLP)
    return load_config(cfg).base


CASES = [(m, v) for m in METHODS for v in ("f32", "q8")
         if spec_of(ExperimentSpec(), m, v) is not None]


def test_every_preset_runs_in_f32_and_in_q8():
    assert len(CASES) == 2 * len(METHODS)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


RESNET = {"model.name": "resnet8", "data.pool_size": 100, "data.train_size": 200}
"""A residual network with BatchNorm, on its compact (channel-pruned) model: the running
statistics travel too."""


@pytest.mark.parametrize("method,values,model", [
    *((m, v, {}) for m, v in CASES), ("dae-ticket-fast", "f32", RESNET),
    ("dae-ticket-fast", "q8", RESNET)])
def test_simulator_and_flower_messages_agree(base, out, method, values, model):
    spec = apply_overrides(spec_of(base, method, values), model)
    runs = {}
    for engine in (Simulator(), InProcessFlowerEngine()):
        folder = run_one(spec, out, stream=None, engine=engine)
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        runs[engine.name] = rows, load_states(folder / paths.FINAL)["global"]
    (sim_rows, sim_final), (fl_rows, fl_final) = runs["simulator"], runs["flower-inprocess"]
    assert [{k: r[k] for k in KEYS} for r in sim_rows] == \
        [{k: r[k] for k in KEYS} for r in fl_rows]
    assert sim_rows[-1]["cum_up_bytes"] > 0
    assert sim_final.keys() == fl_final.keys()
    for k in sim_final:
        torch.testing.assert_close(sim_final[k], fl_final[k], rtol=0, atol=1e-5)
    assert [r["test_accuracy"] for r in sim_rows] == \
        pytest.approx([r["test_accuracy"] for r in fl_rows], abs=0.01)
