"""Every network compiles as one graph: ``torch.compile(fullgraph=True)`` traces it with no graph
break (no host sync, no ``.item()``, no Python randomness, static shapes: the promise of
:mod:`convrnn.loop`) and the traced program computes what eager mode computes.  The ``eager``
backend traces with TorchDynamo without generating kernels, so this runs in seconds on a CPU; the
kernels inductor would generate for a GPU are not tested here."""
import pytest
import torch
import torch._dynamo
from helpers import one_thread  # noqa: F401  (autouse fixture)

from convrnn import create_model
from convrnn.schedules import sample_mask
from convrnn.train import PredictionTask

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")

CELLS = ("convlstm", "convgru", "convjanet", "rgclstm", "gem", "predrnn", "predrnnpp", "predrnnv2",
         "mim", "trajgru", "preciplstm")
SMALL = {"channels": 4, "frame_size": (16, 16), "in_len": 2, "out_len": 2}
NETS = ([pytest.param({"name": "stack", "cell": c, "layers": 2, **SMALL}, id=f"stack-{c}") for c in CELLS]
        + [pytest.param({"name": "msrnn", "cell": c, "layers": 3, "scales": [1, 0.5, 1], **SMALL}, id=f"msrnn-{c}")
           for c in ("convlstm", "gem", "predrnn", "trajgru")]
        + [pytest.param({"name": "stack", "cell": "convlstm_indconv", "layers": 2, **SMALL},
                        id="stack-convlstm_indconv")]
        + [pytest.param({"name": m, "layers": 3, "channels": 4, "frame_size": (16, 16), "in_len": 2, "out_len": 2,
                         **({"scales": [1, 0.5, 1]} if m != "predrnnpp" else {})}, id=m)
           for m in ("predrnnpp", "predrnnv2", "mim", "motionrnn")]
        + [pytest.param({"name": "composite", "cell": "convlstm", "layers": 1, "codec_channels": (4, 4, 4), **SMALL},
                        id="composite")])


def _model(cfg: dict):
    cfg = dict(cfg)
    torch.manual_seed(0)
    return create_model(cfg.pop("name"), **cfg)


@pytest.mark.parametrize("cfg", NETS)
def test_network_is_one_graph_and_matches_eager(cfg):
    model = _model(cfg)
    frames = torch.rand(2, 4, 1, 16, 16)
    mask = sample_mask(0.5, 0.5, 2, 2, 2, per_sample=True, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    for m in (mask, None):       # training (scheduled sampling) and free running
        got, want = compiled(frames, m), model(frames, m)
        torch.testing.assert_close(got.outputs, want.outputs)
        assert sorted(got.aux) == sorted(want.aux)


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
