"""Nothing moves: every preset of configs/quick.toml and configs/peers.toml, run short,
gives the per-round accuracies, bytes and client FLOPs recorded from the code before
methods became registered parts (tests/data/presets.json, made by tests/preset_runs.py
at commit 79837e1, whose src is 70dc122's). FedDST's rows (feddst, and the new
feddst-0.05 and feddst-0.5) were recorded again when FedDST was put on its authors'
schedule and swap rate, a change of behaviour on purpose, and the new controls'
(fedavg-thin, random-ticket-fast) were recorded when they were added. Every method whose
start is reproducible from the seed was recorded again when the booking convention
(``federate.init_bytes = seed``, docs/PEERS.md) made its round-1 download cost the seed:
only its ``cum_down_bytes`` moved (every other number and every pretrained method's row
is unchanged), and fedpm and topk-ef-2way were recorded when they were added."""

import json

import pytest

from conftest import needs_fmnist
from fedticket.federated.simulate import threads
from preset_runs import FIXTURE, preset_methods, run_preset

RECORDED = json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One folder for the runs of a test worker: their server stages are shared."""
    return tmp_path_factory.mktemp("presets")


def test_the_fixture_covers_every_preset_of_both_configs():
    assert {c: list(m) for c, m in RECORDED.items()} == preset_methods()
    assert len(RECORDED["quick"]) == 9 and len(RECORDED["peers"]) == 21


@needs_fmnist
@pytest.mark.parametrize("config,method", [(c, m) for c, ms in preset_methods().items()
                                           for m in ms])
def test_a_short_run_gives_the_recorded_numbers(out, config, method):
    with threads(1):
        assert run_preset(config, method, out) == RECORDED[config][method]
