"""The fused cell step (RecurrentOp.add_to and the cells' fused gate arithmetic) computes what the
unfused equations compute, forward and backward, with the same parameters (state_dict keys and shapes
unchanged: tests/test_saved_networks.py reloads networks saved before the fusion).

The references below are written out from the equations, with the unfused recurrent term
``wx(x) + uh(h)`` (RecurrentOp.forward, which builds U ∘ h as its own tensor)."""
import pytest
import torch
from helpers import one_thread, randomize  # noqa: F401  (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

from convrnn import create_cell
from convrnn.cost import count_ops
from convrnn.layers import RecurrentOp

C, SIZE = 4, (6, 6)
TOL = dict(rtol=1e-5, atol=1e-6)     # addcmul may round its product-and-add once (an FMA)


@settings(max_examples=30, deadline=None)
@given(kinds=st.lists(st.sampled_from(["conv", "hadamard"]), min_size=1, max_size=5),
       mode=st.sampled_from(["position", "channel"]), batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_add_to_equals_pre_plus_the_recurrent_terms(kinds, mode, batch, seed):
    torch.manual_seed(seed)
    op = randomize(RecurrentOp(C, kinds, 3, mode, SIZE), 0.5)
    pre = torch.randn(batch, len(kinds) * C, *SIZE, requires_grad=True)
    h = torch.randn(batch, C, *SIZE, requires_grad=True)
    want = pre + op(h)
    got = op.add_to(pre * 1, h)              # `* 1`: a non-leaf, as a convolution's output is
    torch.testing.assert_close(got, want, **TOL)
    g = torch.randn_like(want)
    grads = torch.autograd.grad(want, [pre, h, *op.parameters()], g)
    torch.testing.assert_close(torch.autograd.grad(got, [pre, h, *op.parameters()], g), grads, **TOL)


def test_add_to_writes_into_a_channel_slice_of_its_input():
    op = randomize(RecurrentOp(C, ("hadamard", "conv"), 3, "position", SIZE))
    full, h = torch.randn(2, 3 * C, *SIZE), torch.randn(2, C, *SIZE)
    want = full[:, :2 * C] + op(h)
    out = op.add_to(full[:, :2 * C], h)
    assert out.data_ptr() == full.data_ptr()
    torch.testing.assert_close(full[:, :2 * C], want, **TOL)


def test_add_to_with_several_links_falls_back_to_the_sum():
    op = randomize(RecurrentOp(C, ("hadamard", "conv"), 1, "channel", links=3))
    pre, h = torch.randn(2, 2 * C, *SIZE), torch.randn(2, 3 * C, *SIZE)
    torch.testing.assert_close(op.add_to(pre, h), pre + op(h), rtol=0, atol=0)


# -- the cells against their unfused equations ---------------------------------------------------
def lstm(cell, x, h, c):
    i, f, o, g = (cell.wx(x) + cell.uh(h)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), (c,)


def gru(cell, x, h):
    xz, xr, xh = cell.wx(x).chunk(3, 1)
    uz, ur = cell.uh(h).chunk(2, 1)
    z, r = torch.sigmoid(xz + uz), torch.sigmoid(xr + ur)
    return (1 - z) * h + z * torch.tanh(xh + cell.uc(r * h)), ()


def janet(cell, x, c):
    s, g = (cell.wx(x) + cell.uh(c)).chunk(2, 1)
    return torch.sigmoid(s) * c + (1 - torch.sigmoid(s - 1.0)) * torch.tanh(g), ()


def gem(cell, x, h, e):
    g, z, ec, hc = (cell.wx(x) + cell.uh(h)).chunk(4, 1)
    g, z = torch.sigmoid(g), torch.sigmoid(z)
    e = g * e + (1 - g) * torch.tanh(ec)
    return z * torch.tanh(e) + (1 - z) * torch.tanh(hc), (e,)


REFERENCES = {"convlstm": lstm, "convgru": gru, "convjanet": janet, "gem": gem}


@pytest.mark.parametrize("mode", ["position", "channel"])
@pytest.mark.parametrize("variant", ["conv", "indconv", "ind"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_fused_cell_equals_its_unfused_equations(name, variant, mode):
    torch.manual_seed(0)
    cell = randomize(create_cell(name, in_channels=3, channels=C, recurrent=variant, hadamard=mode, size=SIZE))
    x = torch.randn(2, 3, *SIZE)
    state = tuple(torch.randn(2, C, *SIZE) for _ in cell.init_state(x))
    h, new, _ = cell(x, type(cell.init_state(x))(*state))
    want_h, want_rest = REFERENCES[name](cell, x, *state)
    torch.testing.assert_close(h, want_h, **TOL)
    for got, want in zip(new[1:], want_rest):
        torch.testing.assert_close(got, want, **TOL)
    params = list(cell.parameters())
    torch.testing.assert_close(torch.autograd.grad(h.square().sum(), params),
                               torch.autograd.grad(want_h.square().sum(), params), **TOL)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_fused_step_builds_no_concatenation_and_one_addcmul_per_hadamard_run(name):
    """The unfused ConvIndConv step concatenated conv and Hadamard terms and permuted them into block
    order; the fused one adds each run of Hadamard blocks with one in-place addcmul_."""
    cell = create_cell(name, in_channels=C, channels=C, recurrent="indconv", size=SIZE)
    x = torch.randn(1, C, *SIZE)
    ops = count_ops(cell, x, type(cell.init_state(x))(*[torch.randn(1, C, *SIZE) for _ in cell.init_state(x)])).ops
    assert ops["aten.cat"] == 0 and ops["aten.index"] == 0 and ops["aten.stack"] == 0
    assert ops["aten.addcmul_"] == 1                     # the gates' Hadamard run
    assert ops["aten.convolution"] == 2                  # W * x (every block) and U * h (the candidates)


def test_addcmul_products_are_counted():
    a, b, c = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(3, 4)
    assert count_ops(torch.addcmul, a, b, c).products == 24
    assert count_ops(lambda: a.clone().addcmul_(b, c)).products == 24
    assert count_ops(torch.addcmul, a, b, torch.tensor(2.0)).products == 0     # a scaling, not a product
