import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# pytest-xdist runs the suite in one worker per core: each worker's torch gets one
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
