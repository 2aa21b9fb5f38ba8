"""``PredictionTask(compile=...)`` compiles the network in place and keeps its checkpoint names.
Backend "eager" (TorchDynamo's trace replayed by eager kernels): the equal losses below only show the
compiled module is the one that runs, not that inductor's code is right.  That every registered
network traces as one graph is tested over the registry in test_contract.py."""
import pytest
import torch
import torch._dynamo
from helpers import one_thread  # noqa: F401  (autouse fixture)

from convrnn.train import PredictionTask

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")

SMALL = {"channels": 4, "frame_size": (16, 16), "in_len": 2, "out_len": 2}


def test_prediction_task_compiles_in_place_and_keeps_checkpoint_names():
    net = {"name": "stack", "cell": "convlstm", "layers": 1, "patch": 2, **SMALL}
    torch.manual_seed(0)
    plain = PredictionTask(net, schedule={"name": "teacher"})
    torch.manual_seed(0)
    torch._dynamo.reset()
    fast = PredictionTask(net, schedule={"name": "teacher"}, compile={"backend": "eager", "fullgraph": True})
    assert list(fast.state_dict()) == list(plain.state_dict())      # no "_orig_mod." prefix
    fast.load_state_dict(plain.state_dict())
    frames = torch.rand(2, 4, 1, 16, 16)
    torch.testing.assert_close(fast.training_step(frames, 0), plain.training_step(frames, 0))
    assert fast.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
