"""Cells against hand-written steps from their equations, for every variant and Hadamard mode.

Each reference step below re-derives the cell from its equations (reference/cells.md) with
F.conv2d and the module's own weights, split by block by hand; it never calls the module.  Which
recurrent terms are convolutions and which Hadamard products follows from the variant's definition
(helpers.VARIANT_KINDS, docs/models.md §1) and each block's role (gate or candidate), never from the
module's own ``kinds``.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convrnn import create_cell
from convrnn.cost import count_ops
from convrnn.layers import RecurrentOp
from helpers import dead_blocks, hadamard_blocks, in_blocks, randomize, rec_blocks

sig, tanh = torch.sigmoid, torch.tanh

# (test id, registered name, extra constructor kwargs)
CELLS = [
    ("convlstm", "convlstm", {}),
    ("convlstm_peephole", "convlstm", {"peephole": True}),
    ("convgru", "convgru", {}),
    ("convjanet", "convjanet", {}),
    ("rgclstm", "rgclstm", {}),
    ("gem", "gem", {}),
]
# (recurrent variant, Hadamard mode); the mode is irrelevant without Hadamard blocks
VARIANTS = [("conv", "position"), ("indconv", "position"), ("indconv", "channel"),
            ("ind", "position"), ("ind", "channel")]
CASES = [pytest.param(c, v, m, id=f"{c[0]}-{v}-{m}") for c in CELLS for v, m in VARIANTS]
CIN, C, SIZE = 2, 3, (6, 7)  # non-square on purpose


def make(spec, variant, mode, cin=CIN, channels=C, size=SIZE, kernel=3):
    _, name, kw = spec
    needs_size = (variant != "conv" and mode == "position") or kw.get("peephole", False)
    return create_cell(name, in_channels=cin, channels=channels, kernel=kernel, recurrent=variant,
                       hadamard=mode, size=size if needs_size else None, **kw)


# -- hand computation helpers: in_blocks, rec_blocks (helpers.py) --------------------------
def add(a, b):
    return [p + q for p, q in zip(a, b)]


def ref_convlstm(cell, x, state, variant):
    h, c = state
    i, f, o, g = add(in_blocks(cell.wx, x, 4), rec_blocks(cell.uh, h, variant, "gggc"))  # gates i, f, o
    if cell.peephole:
        i = i + cell.w_peep[0] * c
        f = f + cell.w_peep[1] * c
    c = sig(f) * c + sig(i) * tanh(g)
    if cell.peephole:
        o = o + cell.w_peep[2] * c
    h = sig(o) * tanh(c)
    return h, (h, c)


def ref_convgru(cell, x, state, variant):
    (h,) = state
    xz, xr, xh = in_blocks(cell.wx, x, 3)
    uz, ur = rec_blocks(cell.uh, h, variant, "gg")     # z, r gates
    z, r = sig(xz + uz), sig(xr + ur)
    (uh,) = rec_blocks(cell.uc, r * h, variant, "c")  # the candidate
    h = (1 - z) * h + z * tanh(xh + uh)
    return h, (h,)


def ref_convjanet(cell, x, state, variant):
    (c,) = state
    xf, xc = in_blocks(cell.wx, x, 2)
    uf, uc = rec_blocks(cell.uh, c, variant, "gc")    # f gate; candidate
    s = xf + uf
    c = sig(s) * c + (1 - sig(s - 1.0)) * tanh(xc + uc)
    return c, (c,)


def hard_sigmoid(v):
    return torch.clamp(0.2 * v + 0.5, 0.0, 1.0)


def ref_rgclstm(cell, x, state, variant):
    h, c = state
    xf, xg = in_blocks(cell.wx, x, 2)
    if variant == "conv":  # the paper's W_f * [h; c]: one convolution over the concatenation
        w = torch.cat([cell.uh.conv.weight[:C], cell.uc.conv.weight], 1)
        uf = F.conv2d(torch.cat([h, c], 1), w, padding=1)
    else:
        uf = rec_blocks(cell.uh, h, variant, "gc")[0] + rec_blocks(cell.uc, c, variant, "g")[0]
    ug = rec_blocks(cell.uh, h, variant, "gc")[1]     # f gate; g candidate
    f = hard_sigmoid(xf + uf)
    c = f * c + f * tanh(xg + ug)
    h = f * tanh(c)
    return h, (h, c)


def ref_gem(cell, x, state, variant):
    h, e = state
    g, z, ec, hc = add(in_blocks(cell.wx, x, 4), rec_blocks(cell.uh, h, variant, "ggcc"))  # gates g, z
    g, z = sig(g), sig(z)
    e = g * e + (1 - g) * tanh(ec)
    h = z * tanh(e) + (1 - z) * tanh(hc)
    return h, (h, e)


REFS = {"convlstm": ref_convlstm, "convgru": ref_convgru, "convjanet": ref_convjanet,
        "rgclstm": ref_rgclstm, "gem": ref_gem}
STATE_FIELDS = {"convlstm": ("h", "c"), "convgru": ("h",), "convjanet": ("h",), "rgclstm": ("h", "c"),
                "gem": ("h", "e")}


def random_state(name, batch=2, size=SIZE):
    return tuple(torch.randn(batch, C, *size) for _ in STATE_FIELDS[name])


# -- values --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,variant,mode", CASES)
def test_step_matches_equations(spec, variant, mode):
    cell = randomize(make(spec, variant, mode))
    ref = REFS[spec[1]]
    x = torch.randn(2, CIN, *SIZE)
    zeros = tuple(torch.zeros(2, C, *SIZE) for _ in STATE_FIELDS[spec[1]])
    for state in (random_state(spec[1]), None):
        h, new, _ = cell(x, None if state is None else cell.init_state(x)._make(state))
        h_ref, new_ref = ref(cell, x, zeros if state is None else state, variant)
        assert new._fields == STATE_FIELDS[spec[1]]
        assert new.h is h
        torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
        for got, want in zip(new, new_ref, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_random_state_matters():
    """The hand check above would be vacuous if the state were ignored."""
    cell = randomize(make(CELLS[5], "indconv", "position"))
    x = torch.randn(2, CIN, *SIZE)
    assert not torch.allclose(cell(x)[0], cell(x, cell.init_state(x)._make(random_state("gem")))[0])


@pytest.mark.parametrize("spec,variant,mode", CASES)
def test_gradients_reach_every_block(spec, variant, mode):
    cell = randomize(make(spec, variant, mode))
    x = torch.randn(2, CIN, *SIZE)
    _, s, _ = cell(x)
    _, s, _ = cell(x, s)  # second step: recurrent weights see a non-zero state
    sum(t.square().sum() for t in s).backward()
    assert not dead_blocks(cell, C), f"no gradient reaches {dead_blocks(cell, C)}"


# -- structure: which blocks each variant changes --------------------------------------------
# per cell: input blocks, then per recurrent operator (conv blocks, Hadamard blocks) per variant
BLOCKS = {
    "convlstm": (4, {"uh": {"conv": (4, 0), "indconv": (1, 3), "ind": (0, 4)}}),
    "convgru": (3, {"uh": {"conv": (2, 0), "indconv": (0, 2), "ind": (0, 2)},
                    "uc": {"conv": (1, 0), "indconv": (1, 0), "ind": (0, 1)}}),
    "convjanet": (2, {"uh": {"conv": (2, 0), "indconv": (1, 1), "ind": (0, 2)}}),
    "rgclstm": (2, {"uh": {"conv": (2, 0), "indconv": (1, 1), "ind": (0, 2)},
                    "uc": {"conv": (1, 0), "indconv": (0, 1), "ind": (0, 1)}}),
    "gem": (4, {"uh": {"conv": (4, 0), "indconv": (2, 2), "ind": (0, 4)}}),
}


@pytest.mark.parametrize("spec,variant,mode", CASES)
def test_variant_changes_exactly_its_blocks(spec, variant, mode):
    cell = make(spec, variant, mode)
    n_in, ops = BLOCKS[spec[1]]
    assert cell.wx.in_channels == CIN and cell.wx.out_channels == n_in * C and cell.wx.bias.shape == (n_in * C,)
    assert {n for n, m in cell.named_children() if isinstance(m, RecurrentOp)} == set(ops)
    for attr, table in ops.items():
        op = getattr(cell, attr)
        n_conv, n_had = table[variant]
        if n_conv:
            assert (op.conv.in_channels, op.conv.out_channels, op.conv.bias) == (C, n_conv * C, None)
        else:
            assert op.conv is None
        if n_had:
            assert op.weight.shape == ((n_had, C, *SIZE) if mode == "position" else (n_had, C, 1, 1))
        else:
            assert op.weight is None
    if spec[2].get("peephole"):
        assert cell.w_peep.shape == (3, C, *SIZE)


@pytest.mark.parametrize("name,cls,variant", [
    ("convindconvlstm", "ConvLSTM", "indconv"), ("convindlstm", "ConvLSTM", "ind"),
    ("convgru", "ConvGRU", "conv"), ("convindconvgru", "ConvGRU", "indconv"), ("convindgru", "ConvGRU", "ind"),
    ("convgru_indconv", "ConvGRU", "indconv"), ("convjanet", "ConvJANET", "conv"),
    ("convindconvjanet", "ConvJANET", "indconv"), ("convindjanet", "ConvJANET", "ind"),
    ("rgclstm", "RGCLSTM", "conv"), ("rgclstm_ind", "RGCLSTM", "ind"),
    ("gem", "GEM", "conv"), ("gem_indconv", "GEM", "indconv"), ("gem_hadamard", "GEM", "indconv"),
    ("gem_ind", "GEM", "ind"),
])
def test_registered_names(name, cls, variant):
    cell = create_cell(name, in_channels=1, channels=2, size=(4, 4))
    assert type(cell).__name__ == cls and cell.recurrent == variant


def test_gem_docstring_says_reconstruction():
    cls = type(create_cell("gem", in_channels=1, channels=2))
    assert "reconstruction" in cls.__doc__.splitlines()[0].lower()
    assert "not the paper's equations" in cls.__doc__.splitlines()[0]


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [pytest.param(c, id=c[0]) for c in CELLS])
def test_errors(spec):
    cell = make(spec, "indconv", "position")
    with pytest.raises(ValueError, match=r"one time step of shape \(B, C, H, W\)"):
        cell(torch.randn(2, 4, CIN, *SIZE))
    with pytest.raises(ValueError, match="built for 2 input channels but got 5.*set in_channels=5"):
        cell(torch.randn(2, 5, *SIZE))
    with pytest.raises(ValueError, match=r"does not match the per-position Hadamard weight.*size=\(8, 8\)"):
        cell(torch.randn(2, CIN, 8, 8))
    with pytest.raises(ValueError, match=r"need the state size: pass size=\(H, W\)"):
        create_cell(spec[1], in_channels=CIN, channels=C, recurrent="ind")
    with pytest.raises(ValueError, match="is not a variant"):
        create_cell(spec[1], in_channels=CIN, channels=C, recurrent="hadamard")
    with pytest.raises(ValueError, match="hadamard='row'"):
        create_cell(spec[1], in_channels=CIN, channels=C, hadamard="row", size=SIZE)
    with pytest.raises(ValueError, match="kernel must be odd"):
        create_cell(spec[1], in_channels=CIN, channels=C, kernel=2)
    # channel-mode Hadamard and pure convolutions are resolution-free
    for variant, mode in (("ind", "channel"), ("conv", "position")):
        if not spec[2]:
            h, _, _ = make(spec, variant, mode)(torch.randn(1, CIN, 8, 5))
            assert h.shape == (1, C, 8, 5)


def test_peephole_errors():
    with pytest.raises(ValueError, match="peephole weights are per position"):
        create_cell("convlstm", in_channels=1, channels=2, peephole=True)
    cell = create_cell("convlstm", in_channels=1, channels=2, peephole=True, size=(4, 4))
    with pytest.raises(ValueError, match=r"does not match the per-position peephole weights.*size=\(6, 6\)"):
        cell(torch.randn(1, 1, 6, 6))


def test_named_variant_refuses_other_recurrent():
    with pytest.raises(ValueError, match="fixes"):
        create_cell("convindgru", in_channels=1, channels=2, recurrent="conv")


# -- ConvJANET forget bias -----------------------------------------------------------------
def test_janet_forget_bias_default_and_chrono():
    cell = create_cell("convjanet", in_channels=1, channels=64)
    assert torch.equal(cell.wx.bias[:64], torch.ones(64))
    chrono = create_cell("convjanet", in_channels=1, channels=64, chrono_tmax=20)
    bf = chrono.wx.bias[:64]
    assert bf.min() >= 0 and bf.max() <= math.log(19) and bf.std() > 0.1
    assert not torch.equal(chrono.wx.bias[64:], torch.ones(64))  # candidate bias untouched
    with pytest.raises(ValueError, match="chrono_tmax"):
        create_cell("convjanet", in_channels=1, channels=2, chrono_tmax=1)


# -- forget biases: where they land, read from what the cell does ----------------------------
# per cell, the memories that a forget gate guards (the cells' equations: f for c in ConvLSTM;
# f, f' in ST-LSTM; f of MIM-N, MIM-S and f' in MIM and MotionRNN; f, f', f_s and the TDM's f in PrecipLSTM)
GUARDED = {"convlstm": ("c",), "predrnn": ("c", "m"), "mim": ("n", "s", "m"), "motionrnn": ("n", "s", "m"),
           "preciplstm": ("c", "m", "ms", "mt")}


@pytest.mark.parametrize("name, guarded", GUARDED.items(), ids=list(GUARDED))
def test_forget_bias_lands_in_the_forget_gates(name, guarded):
    """Every weight and bias zero except the forget bias b = 20: then each forget gate is σ(20) ≈ 1, each
    input gate σ(0) = 1/2 and each candidate tanh(0) = 0, so c_t = f ⊙ c + i ⊙ g = c for every memory a
    forget gate guards.  A bias written into another block (the input gate, say) leaves f = 1/2 and
    halves that memory."""
    torch.manual_seed(0)
    kw = {"neighbourhood": 3} if name == "preciplstm" else {}
    cell = create_cell(name, in_channels=4, channels=4, size=(6, 6), forget_bias=20.0, **kw)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.where(p == 20.0, p, torch.zeros_like(p)))   # keep only the forget bias
    assert sum(int((p == 20.0).sum()) for p in cell.parameters()) == 4 * len(guarded)
    x = torch.randn(2, 4, 6, 6)
    state = cell(x)[1]
    state = state._make(None if t is None else torch.randn_like(t) for t in state)
    _, new, _ = cell(x, state, state.m if cell.zigzag else None)
    for field in guarded:
        torch.testing.assert_close(getattr(new, field), getattr(state, field), atol=1e-6, rtol=0, msg=field)


def test_convlstm_forget_bias_sets_block_f_only_and_is_off_by_default():
    torch.manual_seed(3)
    default = create_cell("convlstm", in_channels=2, channels=3)
    torch.manual_seed(3)
    zero = create_cell("convlstm", in_channels=2, channels=3, forget_bias=0.0)
    torch.manual_seed(3)
    one = create_cell("convlstm", in_channels=2, channels=3, forget_bias=1.0)
    assert torch.equal(default.wx.bias, zero.wx.bias)
    assert torch.equal(one.wx.bias.view(4, 3)[1], torch.ones(3))   # blocks i, f, o, g (the docstring's order)
    for block in (0, 2, 3):
        assert torch.equal(one.wx.bias.view(4, 3)[block], zero.wx.bias.view(4, 3)[block])


# -- RecurrentOp block order ----------------------------------------------------------------
@pytest.mark.parametrize("kinds", [("hadamard", "conv", "hadamard"), ("conv", "hadamard", "conv"),
                                   ("hadamard", "hadamard", "conv"),  # permutation not its own inverse
                                   ("conv", "hadamard", "hadamard", "conv", "hadamard")])
@pytest.mark.parametrize("mode", ["position", "channel"])
def test_recurrent_op_block_order_with_mixed_kinds(kinds, mode):
    op = RecurrentOp(3, kinds, kernel=3, hadamard=mode, size=(5, 4))
    with torch.no_grad():
        op.weight.normal_()
    h = torch.randn(2, 3, 5, 4)
    out = op(h).split(3, 1)
    n_conv = kinds.count("conv")
    assert op.conv.weight.shape == (n_conv * 3, 3, 3, 3)
    conv_ws = op.conv.weight.split(3, 0)
    ci = hi = 0
    for kind, got in zip(kinds, out, strict=True):
        if kind == "conv":
            want = F.conv2d(h, conv_ws[ci], padding=1)
            ci += 1
        else:
            want = op.weight[hi] * h
            hi += 1
        torch.testing.assert_close(got, want)


def test_recurrent_op_hadamard_needs_square_operand():
    with pytest.raises(ValueError, match="as many channels as the state"):
        RecurrentOp(3, ("hadamard",), size=(4, 4), in_channels=6)


# -- property test over small random sizes --------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(spec=st.sampled_from(CELLS), variant=st.sampled_from(["conv", "indconv", "ind"]),
       mode=st.sampled_from(["position", "channel"]), batch=st.integers(1, 3), cin=st.integers(1, 4),
       channels=st.integers(1, 5), height=st.integers(1, 9), width=st.integers(1, 9),
       kernel=st.sampled_from([1, 3, 5]))
def test_property_shapes_and_finite(spec, variant, mode, batch, cin, channels, height, width, kernel):
    cell = make(spec, variant, mode, cin=cin, channels=channels, size=(height, width), kernel=kernel)
    state = None
    for _ in range(2):
        x = torch.randn(batch, cin, height, width) * 3
        h, state, _ = cell(x, state)
        assert h.shape == (batch, channels, height, width)
        assert state.h is h
        for t in state:
            assert t.shape == (batch, channels, height, width) and torch.isfinite(t).all()


# -- costs: the §4 table and the runtime product count ---------------------------------------
@pytest.mark.parametrize("spec,variant,mode", CASES)
def test_runtime_products_equal_gating_plus_hadamard(spec, variant, mode):
    cell = make(spec, variant, mode)
    x = torch.randn(2, CIN, *SIZE)
    state = cell.init_state(x)._make(random_state(spec[1]))
    counter = count_ops(cell, x, state)
    per_map = 2 * C * SIZE[0] * SIZE[1]
    peep = 3 if spec[2].get("peephole") else 0
    assert counter.products == (cell.gating_products + hadamard_blocks(cell) + peep) * per_map


def analytic_cost(cell, hw=(16, 16)):
    """(params, multiplications) per step, batch 1, in the counting of reference/cells.md §4."""
    params = sum(p.numel() for p in cell.parameters())
    n = hw[0] * hw[1]
    convs = sum(m.weight.numel() * n for m in cell.modules() if isinstance(m, nn.Conv2d))
    products = (hadamard_blocks(cell) + cell.gating_products) * cell.channels * n
    return params, convs, convs + products


# reference/cells.md §4 (params in K, mults in M), C_x = C = 64, k = 3, 16 x 16, per-position
TABLE = [("convlstm", "conv", 295.2, 75.55), ("convlstm", "indconv", 233.7, 47.28),
         ("convlstm", "ind", 213.2, 37.86), ("convgru", "conv", 221.4, 56.67),
         ("convgru", "indconv", 180.4, 37.83), ("convgru", "ind", 159.9, 28.41),
         ("convjanet", "conv", 147.6, 37.78), ("convjanet", "indconv", 127.1, 28.36),
         ("convjanet", "ind", 106.6, 18.94)]


def big(name, variant):
    return create_cell(name, in_channels=64, channels=64, recurrent=variant, size=(16, 16))


@pytest.mark.parametrize("name,variant,kparams,mmults", TABLE)
def test_reference_cost_table(name, variant, kparams, mmults):
    params, _, mults = analytic_cost(big(name, variant))
    assert round(params / 1e3, 1) == kparams
    assert round(mults / 1e6, 2) == mmults


def test_gem_counts_against_convlstm():
    lstm_p, lstm_conv, lstm_m = analytic_cost(big("convlstm", "conv"))
    gem_p, gem_conv, gem_m = analytic_cost(big("gem", "conv"))
    had_p, had_conv, had_m = analytic_cost(big("gem_hadamard", "indconv"))
    chw = 64 * 16 * 16
    assert gem_p == lstm_p == 295_168
    assert gem_conv == lstm_conv  # same 8 convolutions
    assert gem_m - lstm_m == chw  # 4 gating products against ConvLSTM's 3
    assert round(100 * (1 - had_p / lstm_p), 1) == 13.9
    assert had_conv / lstm_conv == 0.75  # exactly 2 of the 8 convolutions become Hadamard products
    assert round(100 * (1 - had_m / lstm_m), 1) == 24.9  # with Hadamard and gating products counted
