"""Contract tests over the registries (timm's tests/test_models.py style): every registered cell
family and every registered model is tested by being registered, with no list to keep by hand.

Cells: the one signature ``h, state, m = cell(x, state=None, m=None)``; the state is a NamedTuple
whose ``h`` is the output; ``state=None`` means zeros; a cell that does not use the zig-zag memory
returns ``m`` untouched; backward reaches every block of every parameter; the analytic cost equals
the measured one (the full variant x mode grid is in test_cost.py).  Models: sequence shapes, every
block trained, and ``torch.compile(fullgraph=True)`` traces each model, and each cell family that no
model holds inside a 2-layer stack, with no graph break (backend "eager": this checks graph breaks
only -- TorchDynamo's trace replayed by eager kernels -- not inductor's generated code; inductor needs
~25-40 s of C++ compilation per cold start on this 2-core CPU, too slow for the unit suite)."""
import pytest
import torch
import torch._dynamo
from helpers import dead_blocks, one_thread, randomize  # noqa: F401  (autouse fixture)

from convrnn import cell_families, create_cell, create_model, list_models
from convrnn.cells.base import Cell
from convrnn.cost import cell_cost
from convrnn.schedules import sample_mask

C, SIZE = 4, (8, 8)
FAMILIES = sorted(cell_families())
MODELS = sorted(list_models())
SMALL = {"channels": C, "frame_size": (16, 16), "in_len": 2, "out_len": 2}


def make_cell(name, variant="conv", mode="position"):
    return randomize(create_cell(name, in_channels=C, channels=C, recurrent=variant, hadamard=mode, size=SIZE), 0.3)


def test_the_registries_hold_every_family_and_model():
    assert {"convlstm", "convgru", "convjanet", "rgclstm", "gem", "predrnn", "predrnnpp", "predrnnv2", "mim",
            "motionrnn", "trajgru", "preciplstm"} <= set(FAMILIES)
    assert {"stack", "msrnn", "composite", "predrnnpp_net", "predrnnv2_net", "mim_net", "motionrnn_net"} <= set(MODELS)


@pytest.mark.parametrize("variant", ["conv", "indconv", "ind"])
@pytest.mark.parametrize("name", FAMILIES)
def test_cell_signature_and_state(name, variant):
    cell = make_cell(name, variant)
    x = torch.randn(2, C, *SIZE)
    m_in = torch.randn(2, C, *SIZE)
    h, state, m = cell(x, None, m_in)
    assert h.shape == (2, C, *SIZE) and torch.isfinite(h).all()
    assert hasattr(state, "_fields") and state._fields[0] == "h" and state.h is h
    if cell.zigzag:
        assert m is state.m and m.shape == m_in.shape and not torch.equal(m, m_in)
    else:
        assert m is m_in                               # passed through untouched
        assert cell(x, None, None)[2] is None
    # state=None is the zero state built by init_state
    same = cell(x, cell.init_state(x), m_in)
    torch.testing.assert_close(same[0], h, rtol=0, atol=0)
    # the state round-trips: feeding it back changes the output and keeps its type and shapes
    h2, state2, _ = cell(x, state, m)
    assert type(state2) is type(state)
    assert [None if s is None else s.shape for s in state2] == [None if s is None else s.shape for s in state]
    assert not torch.allclose(h2, h)


@pytest.mark.parametrize("variant", ["conv", "indconv", "ind"])
@pytest.mark.parametrize("name", FAMILIES)
def test_cell_backward_reaches_every_parameter(name, variant):
    cell = make_cell(name, variant)
    x = torch.randn(2, C, *SIZE)
    h, state, m = cell(x)
    h, state, m = cell(torch.randn_like(x), state, m)   # second step: recurrent weights see a state
    loss = h.square().sum() + (0 if m is None else m.square().sum())
    loss.backward()
    assert not dead_blocks(cell, C), f"no gradient reaches {dead_blocks(cell, C)}"


@pytest.mark.parametrize("name", FAMILIES)
def test_cell_cost_analytic_equals_measured(name):
    cost = cell_cost(make_cell(name, "indconv"), *SIZE, batch=2)
    assert cost["mults"] == cost["mults_measured"]


def make_model(name, **overrides):
    torch.manual_seed(0)
    kw = {**SMALL, **overrides}
    if name == "composite":
        # conditioned on frames: an unconditioned reconstructor is fed zeros, so its cells' input
        # weights get no gradient (they only add their bias)
        kw.update(codec_channels=(4, 4, 4), conditional_reconstructor=True)
    if name in ("stack", "msrnn", "composite"):
        kw["layers"] = 3 if name == "msrnn" else 2
    if name == "msrnn":
        kw["scales"] = (1, 0.5, 1)
    if name.endswith("_net"):
        kw["layers"] = 2
    return randomize(create_model(name, **kw), 0.2)


@pytest.mark.parametrize("name", MODELS)
def test_model_sequence_shapes_and_backward(name):
    model = make_model(name)
    frames = torch.rand(2, 4, 1, 16, 16)
    mask = sample_mask(0.5, 0.5, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    pred = model(frames, mask)
    assert pred.future.shape == (2, 2, 1, 16, 16)
    assert pred.outputs.shape == pred.targets.shape and pred.outputs.shape[1] >= 3
    loss = (pred.outputs - pred.targets).square().mean() + sum(pred.aux.values(), torch.zeros(()))
    loss.backward()
    assert not dead_blocks(model, C), f"no gradient reaches {dead_blocks(model, C)}"
    free = model(frames[:, :2])
    assert free.future.shape == (2, 2, 1, 16, 16) and free.targets is None


def families_in(model):
    return {m.registry_name for m in model.modules() if isinstance(m, Cell)}


# every model, and each cell family that no model above holds, inside a 2-layer stack
IN_MODELS = set().union(*(families_in(make_model(n)) for n in MODELS))
TRACED = MODELS + [f"stack:{c}" for c in FAMILIES if c not in IN_MODELS]


def test_every_family_is_traced():
    assert set(FAMILIES) <= IN_MODELS | {t.split(":")[1] for t in TRACED if t.startswith("stack:")}


@pytest.mark.parametrize("name", TRACED)
def test_network_traces_as_one_graph(name):
    """Graph breaks only: backend 'eager' replays TorchDynamo's trace with eager kernels, so the values
    cannot differ from eager mode; what fails here is a graph break (``fullgraph=True``)."""
    # two steps (in_len 2, out_len 1): the first from the zero state, the second from a state
    if name.startswith("stack:"):
        torch.manual_seed(0)
        cell = name.split(":")[1]
        kw = {"cell_kw": {"neighbourhood": 3}} if cell == "preciplstm" else {}   # a 3x3 window traces faster
        model = create_model("stack", cell=cell, layers=2, **{**SMALL, "out_len": 1}, **kw)
    else:
        model = make_model(name, out_len=1)
    frames = torch.rand(2, 4, 1, 16, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    got = compiled(frames[:, :model.in_len])
    torch.testing.assert_close(got.future, model(frames[:, :model.in_len]).future)


@pytest.mark.parametrize("old, new", [("predrnnpp", "predrnnpp_net"), ("predrnnv2", "predrnnv2_net"),
                                      ("mim", "mim_net"), ("motionrnn", "motionrnn_net")])
def test_old_model_names_are_aliases_of_the_net_names(old, new):
    from convrnn import model_aliases
    from convrnn.registry import model_entry
    assert model_aliases()[old] == new and model_entry(old) is model_entry(new)
    assert old not in list_models()        # listed once, under its own name
