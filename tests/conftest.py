
import pytest
import torch

# Tiny tensors: one thread avoids thread wake-up stalls on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
