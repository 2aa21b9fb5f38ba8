"""The PredRNN family: ST-LSTM (PredRNN), Causal LSTM + GHU (PredRNN++), PredRNN-V2.

Reference steps are written from the papers' equations with F.conv2d and the module's own weights,
block by block; they never call the module's forward.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convrnn import create_cell, create_model
from convrnn.cost import count_ops
from convrnn.layers import RecurrentOp
from helpers import (hadamard_blocks, in_blocks, moving_square, randomize, rec_blocks,
                     train_losses)
from helpers import one_thread  # noqa: F401  (autouse fixture)

sig, tanh = torch.sigmoid, torch.tanh
CIN, C, SIZE = 2, 3, (6, 7)  # non-square on purpose
VARIANTS = [("conv", "position"), ("indconv", "position"), ("indconv", "channel"), ("ind", "position"),
            ("ind", "channel")]


def make(name, variant="conv", mode="position", variant_=None, **kw):
    """``variant``: the recurrent operator (conv, indconv, ind); ``variant_``: the cell's reference form."""
    if variant_ is not None:
        kw["variant"] = variant_
    cell = create_cell(name, in_channels=CIN, channels=C, recurrent=variant, hadamard=mode, size=SIZE, **kw)
    return randomize(cell)  # signed random weights: no block hides behind its initialisation


def rand(*shape):
    return torch.randn(*shape)


# -- hand computation helpers ----------------------------------------------------------------
def conv1x1(conv, x):
    return F.conv2d(x, conv.weight, conv.bias)


def ref_stlstm(cell, x, h, c, m):
    """PredRNN (Wang et al. 2017): returns h, c, M, ΔC, ΔM."""
    xi, xf, xo, xg, xi2, xf2, xg2 = in_blocks(cell.wx, x, 7)
    hi, hf, ho, hg = rec_blocks(cell.uh, h)
    mi, mf, mg = rec_blocks(cell.um, m)
    dc = sig(xi + hi) * tanh(xg + hg)
    c = sig(xf + hf) * c + dc
    dm = sig(xi2 + mi) * tanh(xg2 + mg)
    m = sig(xf2 + mf) * m + dm
    o = sig(xo + ho + rec_blocks(cell.vc, c)[0] + rec_blocks(cell.vm, m)[0])
    h = o * tanh(conv1x1(cell.fuse, torch.cat([c, m], 1)))
    return h, c, m, dc, dm


def ref_causal(cell, x, h, c, m, openstl=False):
    """PredRNN++ Causal LSTM (Wang et al. 2018, Eq. 3): returns h, c, M.  ``openstl``: OpenSTL's
    CausalLSTMCell, g' = tanh(W x + V ∘ c_t) without the M term and a k x k W_3."""
    xi, xf, xg, xi2, xf2, xo, xg2 = in_blocks(cell.wx, x, 7)
    hi, hf, hg = rec_blocks(cell.uh, h)
    ci, cf, cg = rec_blocks(cell.uc, c)
    c = sig(xf + hf + cf) * c + sig(xi + hi + ci) * tanh(xg + hg + cg)
    vi, vf, vo, vg = rec_blocks(cell.vc, c)
    if openstl:
        (mi, mf), mg = rec_blocks(cell.um, m), 0
        w3 = F.conv2d(m, cell.w3.weight, cell.w3.bias, padding=cell.kernel // 2)
    else:
        mi, mf, mg = rec_blocks(cell.um, m)
        w3 = conv1x1(cell.w3, m)
    m = sig(xf2 + vf + mf) * tanh(w3) + sig(xi2 + vi + mi) * tanh(xg2 + vg + mg)
    o = xo + vo + rec_blocks(cell.vm, m)[0]
    if cell.o_from_h:
        o = o + rec_blocks(cell.uo, h)[0]
    h = tanh(o) * tanh(conv1x1(cell.fuse, torch.cat([c, m], 1)))
    return h, c, m


def ref_ghu(cell, h, z):
    """Gradient Highway Unit: [s, p] = W * h + U ∘ z; z_t = σ(s) ⊙ tanh(p) + (1 - σ(s)) ⊙ z."""
    xs, xp = in_blocks(cell.ghu_x, h, 2)
    zs, zp = rec_blocks(cell.ghu_z, z)
    s = sig(xs + zs)
    return s * tanh(xp + zp) + (1 - s) * z


# -- single steps against the equations ------------------------------------------------------
@pytest.mark.parametrize("variant,mode", VARIANTS)
@pytest.mark.parametrize("name", ["predrnn", "predrnnv2"])
def test_stlstm_step_matches_equations(name, variant, mode):
    cell = make(name, variant, mode)
    x, h, c, m, m_below = rand(2, CIN, *SIZE), *(rand(2, C, *SIZE) for _ in range(4))
    state = cell.init_state(x)._replace(h=h, c=c, m=m)
    out, new, _ = cell(x, state, m_below)
    want = ref_stlstm(cell, x, h, c, m_below)  # M comes from below, not from the cell's own state
    assert torch.allclose(out, want[0], atol=1e-5)
    for got, ref in zip(new, want):
        assert torch.allclose(got, ref, atol=1e-5)
    assert new.h is out


@pytest.mark.parametrize("variant,mode", VARIANTS)
@pytest.mark.parametrize("o_from_h", [False, True])
def test_causal_lstm_step_matches_equations(variant, mode, o_from_h):
    cell = make("predrnnpp", variant, mode, o_from_h=o_from_h)
    x, h, c, m = rand(2, CIN, *SIZE), *(rand(2, C, *SIZE) for _ in range(3))
    out, new, _ = cell(x, cell.init_state(x)._replace(h=h, c=c), m)
    want = ref_causal(cell, x, h, c, m)
    assert torch.allclose(out, want[0], atol=1e-5)
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(new[:3], want))
    assert new.h_lstm is None


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_gradient_highway_matches_equations(variant, mode):
    cell = make("predrnnpp", variant, mode, highway=True)
    x, h, c, m, z = rand(2, CIN, *SIZE), *(rand(2, C, *SIZE) for _ in range(4))
    out, new, _ = cell(x, cell.init_state(x)._replace(h=z, c=c, h_lstm=h), m)   # h: the output z_{t-1}
    h_t, c_t, m_t = ref_causal(cell, x, h, c, m)
    z_t = ref_ghu(cell, h_t, z)
    assert torch.allclose(out, z_t, atol=1e-5)        # the next layer reads z_t ...
    assert new.h is out                               # ... which is the state's output field
    assert torch.allclose(new.h_lstm, h_t, atol=1e-5)  # ... the Causal LSTM keeps its own h_t
    assert torch.allclose(new.m, m_t, atol=1e-5) and torch.allclose(new.c, c_t, atol=1e-5)


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_causal_lstm_openstl_variant(variant, mode):
    """variant='openstl' (OpenSTL's CausalLSTMCell): k x k W_3, no M term in g', o also from h."""
    cell = make("predrnnpp", variant, mode, variant_="openstl")
    assert cell.w3.kernel_size == (3, 3) and cell.o_from_h and len(cell.um.kinds) == 2
    x, h, c, m = rand(2, CIN, *SIZE), *(rand(2, C, *SIZE) for _ in range(3))
    out, new, _ = cell(x, cell.init_state(x)._replace(h=h, c=c), m)
    want = ref_causal(cell, x, h, c, m, openstl=True)
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip((out, new.c, new.m), want))
    paper = make("predrnnpp", variant, mode)
    assert paper.w3.kernel_size == (1, 1) and not paper.o_from_h and len(paper.um.kinds) == 3
    assert make("predrnnpp", variant, mode, variant_="openstl", o_from_h=False).uo is None


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_gradient_highway_on_the_input(variant, mode):
    """highway='input' (MS-RNN's layer 2): z_t = GHU(x_t, z_{t-1}); the Causal LSTM runs on z_t."""
    cell = make("predrnnpp", variant, mode, highway="input")
    assert cell.ghu_x.in_channels == CIN and cell.wx.in_channels == C and cell.gating_products == 7
    x, h, c, m, z = rand(2, CIN, *SIZE), *(rand(2, C, *SIZE) for _ in range(4))
    out, new, _ = cell(x, cell.init_state(x)._replace(h=h, c=c, z=z), m)
    z_t = ref_ghu(cell, x, z)
    h_t, c_t, m_t = ref_causal(cell, z_t, h, c, m)
    for got, want in ((out, h_t), (new.z, z_t), (new.c, c_t), (new.m, m_t)):
        assert torch.allclose(got, want, atol=1e-5)
    assert new.h is out and new.h_lstm is None


def test_cell_without_memory_feeds_back_its_own_m_then_zeros():
    cell = make("predrnn")
    x, m = rand(1, CIN, *SIZE), rand(1, C, *SIZE)
    state = cell.init_state(x)._replace(m=m)
    assert torch.equal(cell(x, state)[0], cell(x, state, m)[0])
    assert torch.equal(cell(x)[0], cell(x, None, torch.zeros(1, C, *SIZE))[0])


@pytest.mark.parametrize("name, forget_blocks", [("predrnn", (1, 5)), ("predrnnpp", (1, 4))])
def test_forget_bias_sets_f_and_f_prime_only(name, forget_blocks):
    """Input blocks: ST-LSTM (i, f, o, g, i', f', g'), Causal LSTM (i, f, g, i', f', o, g')."""
    torch.manual_seed(1)
    a = create_cell(name, in_channels=CIN, channels=C, forget_bias=0.0)   # 0: the default initialisation
    torch.manual_seed(1)
    b = create_cell(name, in_channels=CIN, channels=C)                    # default 1.0
    before, after = a.wx.bias.view(7, C), b.wx.bias.view(7, C)
    for block in range(7):
        if block in forget_blocks:
            assert torch.equal(after[block], torch.ones(C))
        else:
            assert torch.equal(after[block], before[block])


def test_bad_memory_shape_is_a_clear_error():
    cell = make("predrnn")
    x = rand(2, CIN, *SIZE)
    with pytest.raises(ValueError, match="zig-zag memory M of shape"):
        cell(x, None, rand(2, C + 1, *SIZE))
    with pytest.raises(ValueError, match="zig-zag memory M of shape"):
        make("predrnnpp")(x, None, rand(2, C, 3, 3))


def test_per_position_hadamard_needs_the_state_size():
    with pytest.raises(ValueError, match="size=\\(H, W\\)"):
        create_cell("predrnn_indconv", in_channels=CIN, channels=C)
    cell = make("predrnnpp", "indconv", "position")
    with pytest.raises(ValueError, match="does not match the per-position Hadamard weight"):
        cell(rand(1, CIN, 8, 8))


# -- the decoupling loss ---------------------------------------------------------------------
def hand_decouple(adapter_w, dc, dm):
    a = F.conv2d(dc, adapter_w).flatten(2)
    b = F.conv2d(dm, adapter_w).flatten(2)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return cos.abs().mean()


def tiny(name, layers=2, scales=None, channels=4, **kw):
    base = {"layers": layers, "channels": channels, "frame_size": (16, 16), "in_len": 4, "out_len": 2,
            "scales": scales}
    if name == "predrnn":
        return create_model("stack", cell="predrnn", **base, **kw)
    return create_model(name, **base, **kw)


@pytest.mark.parametrize("scales", [None, (1, 0.5, 1)])
def test_decoupling_loss_against_hand_computation(scales):
    layers = 2 if scales is None else 3
    model = tiny("predrnnv2", layers=layers, scales=scales, decouple_beta=0.25)
    frames = torch.rand(2, 6, 1, 16, 16)
    teacher = torch.ones(2, 5, dtype=torch.bool)
    pred = model(frames, teacher)
    # hand: run the steps, collect ΔC, ΔM of every layer at every step
    terms, state = [], None
    for t in range(5):
        _, state = model.step(frames[:, t], state)
        terms += [hand_decouple(model.adapter.weight, s.delta_c, s.delta_m) for s in state.layers]
    assert len(terms) == 5 * layers
    assert torch.allclose(pred.aux["decouple"], 0.25 * torch.stack(terms).mean(), atol=1e-6)


def test_decoupling_is_zero_for_orthogonal_increments_and_one_for_parallel():
    adapter = torch.eye(3).view(3, 3, 1, 1)
    dc = torch.zeros(1, 3, 2, 2)
    dc[..., 0, 0] = 1.0
    dm = torch.zeros(1, 3, 2, 2)
    dm[..., 1, 1] = -2.0
    assert hand_decouple(adapter, dc, dm) == 0
    from convrnn.cells.predrnnv2 import decoupling_loss
    conv = nn.Conv2d(3, 3, 1, bias=False)
    conv.weight.data.copy_(adapter)
    assert decoupling_loss(conv, dc, dm) == 0
    assert torch.isclose(decoupling_loss(conv, dc + 0.5, -3 * (dc + 0.5)), torch.tensor(1.0))


def test_predrnnv2_rejects_stacks_without_v2_cells():
    with pytest.raises(ValueError, match="at least one 'predrnnv2' cell"):
        tiny("predrnnv2", cell="predrnn")
    with pytest.raises(ValueError, match="decouple_beta"):
        tiny("predrnnv2", decouple_beta=-1)


def test_one_adapter_shared_by_all_layers():
    model = tiny("predrnnv2", layers=3)
    adapters = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                and m.bias is None and m.in_channels == m.out_channels == 4]
    assert adapters == [model.adapter]


# -- networks: gradients, memory flow, presets, training -------------------------------------
NETS = ["predrnn", "predrnnpp", "predrnnv2"]
SCALES = [pytest.param(None, id="flat"), pytest.param((1, 0.5, 1), id="ms")]


def total_loss(pred):
    return F.mse_loss(pred.outputs, pred.targets) + sum(pred.aux.values())


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("name", NETS)
def test_gradients_reach_every_parameter(name, scales):
    model = tiny(name, layers=2 if scales is None else 3, scales=scales)
    total_loss(model(torch.rand(2, 6, 1, 16, 16))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_predrnnpp_preset_puts_the_highway_on_layer_one_only():
    model = tiny("predrnnpp", layers=3)
    assert [c.highway for c in model.cells] == ["output", None, None]
    assert [c.gating_products for c in model.cells] == [7, 5, 5]
    with pytest.raises(ValueError, match="layer_kw has 1 entries for 3 layers"):
        tiny("predrnnpp", layers=3, layer_kw=[{}])
    # variants through cell_kw, and an explicit opt-out
    model = tiny("predrnnpp", layers=2, cell_kw={"recurrent": "indconv"}, layer_kw=[{"highway": False}, {}])
    assert not model.cells[0].highway and model.cells[1].recurrent == "indconv"


@pytest.mark.parametrize("name", NETS)
def test_memory_zigzags_from_layer_one_into_layer_two(name):
    model = tiny(name, layers=2)
    seen = {}
    hook = model.cells[1].register_forward_pre_hook(
        lambda mod, args: seen.update(m=args[2]))
    frame = torch.rand(2, 1, 16, 16)
    _, state = model.step(frame, None)
    assert torch.equal(seen["m"], state.layers[0].m)  # layer 2 reads exactly layer 1's new M
    assert torch.equal(state.m, state.layers[1].m)     # the top layer's M re-enters layer 1 next step
    hook.remove()
    # changing the M that enters layer 1 changes layer 2 (also through M alone: same h and c)
    _, a = model.step(frame, state)
    _, b = model.step(frame, state._replace(m=state.m + 1.0))
    assert not torch.allclose(a.layers[1].h, b.layers[1].h)
    cell1, cell2 = model.cells
    x1, x2 = rand(2, 1, 16, 16), rand(2, 4, 16, 16)
    h2 = [cell2(x2, state.layers[1], cell1(x1, state.layers[0], m)[1].m)[0]
          for m in (state.m, state.m + 1.0)]
    assert not torch.allclose(*h2)


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("name", NETS)
def test_every_model_trains(name, scales):
    torch.manual_seed(0)
    model = tiny(name, layers=2 if scales is None else 3, scales=scales, channels=8)
    frames = moving_square()
    teacher = torch.ones(2, 5, dtype=torch.bool)
    losses = train_losses(model, frames, teacher, lr=1e-2, loss_fn=total_loss)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("variant,mode", VARIANTS[1:])
@pytest.mark.parametrize("name", NETS)
def test_hadamard_variants_run_in_the_ms_pyramid(name, variant, mode):
    model = tiny(name, layers=3, scales=(1, 0.5, 1), cell_kw={"recurrent": variant, "hadamard": mode})
    n_had = hadamard_blocks(model)
    assert n_had > 0 and all(c.recurrent == variant for c in model.cells)
    pred = model(torch.rand(1, 6, 1, 16, 16))
    assert pred.future.shape == (1, 2, 1, 16, 16) and torch.isfinite(pred.outputs).all()


def test_hadamard_blocks_are_the_gates():
    """indconv: state terms of the gates are Hadamard, candidates stay convolutions; ind: all."""
    st = make("predrnn", "indconv")
    assert (st.uh.kinds, st.um.kinds) == (("hadamard",) * 3 + ("conv",), ("hadamard",) * 2 + ("conv",))
    assert st.vc.kinds == st.vm.kinds == ("hadamard",)
    pp = make("predrnnpp", "indconv", highway=True, o_from_h=True)
    assert pp.vc.kinds == ("hadamard",) * 3 + ("conv",) and pp.ghu_z.kinds == ("hadamard", "conv")
    ind = make("predrnnpp", "ind", highway=True, o_from_h=True)
    assert all(k == "hadamard" for m in ind.modules() if isinstance(m, RecurrentOp) for k in m.kinds)


# -- costs -----------------------------------------------------------------------------------
CELL_SPECS = [("predrnn", {}), ("predrnnv2", {}), ("predrnnpp", {}), ("predrnnpp", {"o_from_h": True}),
              ("predrnnpp", {"highway": True})]


@pytest.mark.parametrize("variant,mode", VARIANTS)
@pytest.mark.parametrize("name,kw", CELL_SPECS)
def test_runtime_products_equal_gating_products_plus_hadamard(name, kw, variant, mode):
    cell = make(name, variant, mode, **kw)
    x = rand(2, CIN, *SIZE)
    counter = count_ops(cell, x, cell.init_state(x), rand(2, C, *SIZE))
    n_had = hadamard_blocks(cell)
    assert counter.products == (cell.gating_products + n_had) * 2 * C * SIZE[0] * SIZE[1]


@pytest.mark.parametrize("name,kw", CELL_SPECS)
@pytest.mark.parametrize("variant", ["conv", "indconv", "ind"])
def test_analytic_cost_equals_measured(name, kw, variant):
    import convrnn.cost as cost
    cell = make(name, variant, "position", **kw)
    got = cost.cell_cost(cell, *SIZE)
    assert got["mults"] == got["mults_measured"]
    hw = SIZE[0] * SIZE[1]
    convs = sum(m.weight.numel() * hw for m in cell.modules() if isinstance(m, nn.Conv2d))
    n_had = hadamard_blocks(cell)
    assert got["mults"] == convs + (cell.gating_products + n_had) * C * hw
