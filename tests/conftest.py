import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# every run times the speed probe before its first round (5 repeats, about 0.2 s); the
# suite's hundreds of short runs do not (test_study's probe test turns it on)
os.environ.setdefault("FEDTICKET_PROBE_REPEATS", "0")
# pytest-xdist runs the suite in worker processes (pyproject.toml): each worker's torch gets one
# thread (two processes with torch's default threads each on 2 cores run 13x slower)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else
                      min(2, os.cpu_count() or 1))

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed (make test installs it)",
)


@pytest.fixture
def flower_task_identity():
    """Flower builds a Message's id from the run and task identity of the process it runs
    in; outside a Flower process the tests set one, and restore it after."""
    from fedticket.flower.inprocess import SERVER_NODE, identity

    with identity(SERVER_NODE):
        yield


# Tests that start real Flower deployments spend most of their time waiting on Flower's
# polls and heartbeats: they go first, so that the other tests fill the cores meanwhile
# instead of leaving one deployment to run alone at the end.
DEPLOYMENTS = ("test_flower_deploy.py::test_a_killed", "test_flower_deploy.py::test_deploy",
               "test_flower_mods.py::test_batchnorm_app", "test_examples.py::test_the_users_model")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not any(d in item.nodeid for d in DEPLOYMENTS))
