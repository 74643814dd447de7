import os

import pytest
import torch

# One thread per worker: with pytest-xdist the workers already use every core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
