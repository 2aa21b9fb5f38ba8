"""MIM (Wang et al. 2019) and MotionRNN (Wu et al. 2021): steps against hand computations from the
papers' equations (F.conv2d with the modules' own weights, never calling the module under test for
the reference), warping, gradients, training, costs and errors."""
import pytest
import torch
import torch.nn.functional as F

from convrnn import create_cell, create_model
from convrnn.cells.motionrnn import MotionGRU, neighbourhood_warp, warp
from convrnn.cost import analytic_cell_cost, count_ops
from convrnn.registry import cell_entry
import helpers
from helpers import Count, hadamard_blocks, in_blocks, rec_blocks, train_losses
from helpers import one_thread  # noqa: F401  (autouse fixture)

sig, tanh = torch.sigmoid, torch.tanh
C, SIZE = 4, (6, 8)
VARIANTS = [("conv", "position"), ("indconv", "position"), ("indconv", "channel"), ("ind", "channel")]


def make(name="mim", variant="conv", mode="position", cin=C, size=SIZE, **kw):
    return create_cell(name, in_channels=cin, channels=C, recurrent=variant, hadamard=mode, size=size, **kw)


def randomize(module):
    return helpers.randomize(module, 0.4)


def states(batch=2, cin=C):
    return [torch.randn(batch, C, *SIZE) for _ in range(5)] + [torch.randn(batch, cin, *SIZE)]


# -- the MIM block by hand ---------------------------------------------------------------------
def ref_mim_n(cell, delta, n):
    """MIM-N, paper eq.: i, f, g from W * δ + U ∘ N_{t-1}; N_t = f ⊙ N + i ⊙ g;
    D = σ(W_o * δ + U_o ∘ N_t) ⊙ tanh(N_t)."""
    wi, wf, wg, wo = in_blocks(cell.n_wx, delta, 4)
    ui, uf, ug = rec_blocks(cell.n_un, n)
    n = sig(wf + uf) * n + sig(wi + ui) * tanh(wg + ug)
    (uo,) = rec_blocks(cell.n_uo, n)
    return sig(wo + uo) * tanh(n), n


def ref_mim_s(cell, d, c, s):
    """MIM-S, paper eq.: i, f, o, g from W * D + U ∘ C_{t-1}; S_t = f ⊙ S + i ⊙ g;
    T = σ(o + V ∘ S_t) ⊙ tanh(S_t)."""
    wi, wf, wo, wg = in_blocks(cell.s_wd, d, 4)
    ui, uf, uo, ug = rec_blocks(cell.s_uc, c)
    s = sig(wf + uf) * s + sig(wi + ui) * tanh(wg + ug)
    (vo,) = rec_blocks(cell.s_uo, s)
    return sig(wo + uo + vo) * tanh(s), s


def ref_mim(cell, x, state, memory):
    h, c, _, n, s, prev_input = state[:6]
    d, n = ref_mim_n(cell, x - prev_input, n)
    t, s = ref_mim_s(cell, d, c, s)
    xi, xo, xg, xi2, xf2, xg2 = in_blocks(cell.wx, x, 6)
    ui, uo, ug = rec_blocks(cell.uh, h)
    vi, vf, vg = rec_blocks(cell.um, memory)
    c = t + sig(xi + ui) * tanh(xg + ug)
    m = sig(xf2 + vf) * memory + sig(xi2 + vi) * tanh(xg2 + vg)
    (oc,), (om,) = rec_blocks(cell.vc, c), rec_blocks(cell.vm, m)
    o = sig(xo + uo + oc + om)
    h = o * tanh(F.conv2d(torch.cat([c, m], 1), cell.fuse.weight, cell.fuse.bias))
    return h, (h, c, m, n, s, x)


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_mim_n_and_mim_s_single_step(variant, mode):
    cell = randomize(make(variant=variant, mode=mode))
    delta, n, d, c, s = (torch.randn(2, C, *SIZE) for _ in range(5))
    for got, want in zip(cell.nonstationary(delta, n), ref_mim_n(cell, delta, n), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(cell.stationary(d, c, s), ref_mim_s(cell, d, c, s), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_mim_block_step_matches_equations(variant, mode):
    cell = randomize(make(variant=variant, mode=mode, cin=3))
    x, memory = torch.randn(2, 3, *SIZE), torch.randn(2, C, *SIZE)
    state = type(cell.init_state(x))(*states(cin=3))
    h, new, _ = cell(x, state, memory)
    h_ref, new_ref = ref_mim(cell, x, state, memory)
    assert new._fields == ("h", "c", "m", "n", "s", "prev_input", "lateral") and new.h is h
    assert new.lateral is None          # only the openstl variant passes MIM-N's output up
    torch.testing.assert_close(h, h_ref)
    for got, want in zip(new[:6], new_ref, strict=True):
        torch.testing.assert_close(got, want)
    # without memory= the cell reads its own previous M (a one-layer zig-zag)
    torch.testing.assert_close(cell(x, state)[0], ref_mim(cell, x, state, state.m)[0])


def test_mim_uses_the_input_difference_and_first_step_is_zero_difference():
    cell = randomize(make())
    x = torch.randn(2, C, *SIZE)
    zeros = [torch.zeros(2, C, *SIZE)] * 5
    _, first, _ = cell(x)  # state None: x_{t-1} := x, so δ_0 = 0 (not x - 0)
    assert torch.equal(first.prev_input, x)
    want_n = ref_mim_n(cell, torch.zeros_like(x), zeros[0])[1]
    torch.testing.assert_close(first.n, want_n)
    against_zero = cell(x, type(cell.init_state(x))(*zeros + [torch.zeros_like(x)]))[1].n
    assert not torch.allclose(first.n, against_zero)
    # the second step differences against the first input: only x - prev_input reaches MIM-N
    y = torch.randn_like(x)
    _, second, _ = cell(y, first)
    torch.testing.assert_close(second.n, ref_mim_n(cell, y - x, first.n)[1])
    shifted = first._replace(prev_input=x + 1.0)
    assert not torch.allclose(cell(y, shifted)[1].n, second.n)


# -- MotionGRU ----------------------------------------------------------------------------------
def test_motiongru_transient_and_trend_by_hand():
    mg = randomize(MotionGRU(8, kernel=3))
    x = torch.randn(2, 8, 8, 8)
    f, d = torch.randn(2, 18, 4, 4), torch.randn(2, 18, 4, 4)
    _, f_new, d_new = mg(x, f, d)
    torch.testing.assert_close(d_new, d + 0.5 * (f - d))  # D_t = D_{t-1} + α (F_{t-1} - D_{t-1})
    e = F.conv2d(x, mg.enc.weight, mg.enc.bias, stride=2, padding=1)
    ur = sig(F.conv2d(torch.cat([e, f], 1), mg.w_ur.weight, mg.w_ur.bias, padding=1))
    u, r = ur[:, :18], ur[:, 18:]
    z = tanh(F.conv2d(torch.cat([e, r * f], 1), mg.w_z.weight, mg.w_z.bias, padding=1))
    torch.testing.assert_close(f_new, u * z + (1 - u) * f + d_new)


def test_motiongru_output_by_hand_with_zero_offsets():
    """With F = D = 0 and a zero candidate, the warp is the plain 3x3 neighbourhood: the whole
    MotionGRU is Enc -> mask -> 3x3 conv (Mix) -> Dec -> gate, written out with F.conv2d."""
    mg = randomize(MotionGRU(8, kernel=3))
    with torch.no_grad():
        mg.w_z.weight.zero_()
        mg.w_z.bias.zero_()
    x = torch.randn(2, 8, 8, 8)
    zero = torch.zeros(2, 18, 4, 4)
    out, f_new, _ = mg(x, zero, zero)
    assert torch.equal(f_new, zero)
    e = F.conv2d(x, mg.enc.weight, mg.enc.bias, stride=2, padding=1)
    mask = sig(F.conv2d(e, mg.w_mask.weight, mg.w_mask.bias, padding=1))  # (B, 9, 4, 4)
    # neighbour n = 3 ky + kx sits at offset (ky - 1, kx - 1): unfold gives the same order
    patches = F.unfold(e, 3, padding=1).view(2, 2, 9, 4, 4) * mask.unsqueeze(1)
    mixed = torch.einsum("oc,bchw->bohw", mg.mix.weight.flatten(1), patches.flatten(1, 2))
    dec = F.conv_transpose2d(mixed, mg.dec.weight, mg.dec.bias, stride=2, padding=1)
    g = sig(F.conv2d(torch.cat([dec, x], 1), mg.w_gate.weight, mg.w_gate.bias, padding=1))
    torch.testing.assert_close(out, g * dec + (1 - g) * x)


def test_warp_zero_flow_is_identity_and_integer_flow_shifts():
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 5, 7)), x)
    flow = torch.zeros(2, 2, 5, 7)
    flow[:, 0] = 1.0  # read one pixel to the right
    shifted = warp(x, flow)
    torch.testing.assert_close(shifted[..., :-1], x[..., 1:])
    assert torch.equal(shifted[..., -1], torch.zeros_like(shifted[..., -1]))  # zeros outside
    flow = torch.zeros(2, 2, 5, 7)
    flow[:, 1] = 0.5  # half a pixel down: the mean of two rows
    torch.testing.assert_close(warp(x, flow)[..., :-1, :], (x[..., :-1, :] + x[..., 1:, :]) / 2)


def test_neighbourhood_warp_with_zero_offsets_is_the_unfolded_neighbourhood():
    x = torch.randn(2, 3, 5, 6)
    got = neighbourhood_warp(x, torch.zeros(2, 18, 5, 6), 3)
    torch.testing.assert_close(got, F.unfold(x, 3, padding=1).view(2, 3, 9, 5, 6))
    with pytest.raises(ValueError, match=r"offsets must have shape \(2, 18, 5, 6\)"):
        neighbourhood_warp(x, torch.zeros(2, 8, 5, 6), 3)


# -- MotionRNN cell -------------------------------------------------------------------------------
def test_motionrnn_step_is_motiongru_then_mim_block_plus_highway():
    cell = randomize(make("motionrnn", size=(6, 8)))
    x, memory = torch.randn(2, C, *SIZE), torch.randn(2, C, *SIZE)
    mim_state = states()
    f, d = torch.randn(2, 18, 3, 4), torch.randn(2, 18, 3, 4)
    state = type(cell.init_state(x))(*mim_state + [f, d])
    h, new, _ = cell(x, state, memory)
    assert new._fields == ("h", "c", "m", "n", "s", "prev_input", "f", "d", "lateral") and new.h is h
    xm, f_ref, d_ref = cell.motion(x, f, d)
    # the MIM block runs on X = MotionGRU(x); MIM-N differences the raw input x
    h_blk, (_, c, m, n, s, _) = ref_mim(cell, xm, mim_state[:5] + [mim_state[5] - x + xm], memory)
    _, xo, *_ = in_blocks(cell.wx, xm, 6)
    o = sig(xo + rec_blocks(cell.uh, mim_state[0])[1] + rec_blocks(cell.vc, c)[0] + rec_blocks(cell.vm, m)[0])
    torch.testing.assert_close(h, h_blk + (1 - o) * x)  # Motion Highway
    for got, want in zip(new[1:8], (c, m, n, s, x, f_ref, d_ref), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["mim", "motionrnn"])
@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_gradients_reach_every_parameter(name, variant, mode):
    cell = randomize(make(name, variant=variant, mode=mode))
    x = torch.randn(2, C, *SIZE)
    _, s, _ = cell(x)
    _, s, _ = cell(torch.randn_like(x), s)  # second step: non-zero difference, states and offsets
    sum(t.square().sum() for t in s if t is not None).backward()
    for pname, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


# -- networks ------------------------------------------------------------------------------------
def have_predrnn():
    try:
        cell_entry("predrnn")
    except KeyError:
        return False
    return True


needs_predrnn = pytest.mark.skipif(not have_predrnn(), reason="the 'predrnn' cell (MIM's first layer) is missing")
TINY = {"channels": 8, "frame_size": (16, 16), "in_len": 4, "out_len": 2, "embed": "conv1x1"}


@needs_predrnn
@pytest.mark.parametrize("name", ["mim", "motionrnn"])
def test_presets_layout_and_equal_params_flat_vs_ms(name):
    flat = create_model(name, layers=4, **TINY)
    ms = create_model(name, layers=4, scales=(1, 0.5, 0.5, 1), **TINY)
    assert [c.registry_name for c in flat.cells] == ["predrnn", name, name, name]
    assert ms.sizes == [(16, 16), (8, 8), (8, 8), (16, 16)]
    assert sum(p.numel() for p in flat.parameters()) == sum(p.numel() for p in ms.parameters())


def moving_squares(batch=2, steps=6):
    """A fixed tiny batch with structure: a 4x4 square moving 2 px right per frame."""
    frames = torch.zeros(batch, steps, 1, 16, 16)
    for b in range(batch):
        for t in range(steps):
            frames[b, t, 0, 3 + 2 * b:7 + 2 * b, 2 + 2 * t:6 + 2 * t] = 1.0
    return frames


@needs_predrnn
@pytest.mark.parametrize("name", ["mim", "motionrnn"])
@pytest.mark.parametrize("scales", [None, (1, 0.5, 0.5, 1)], ids=["flat", "ms"])
def test_models_train(name, scales):
    torch.manual_seed(0)
    model = create_model(name, layers=4 if scales else 3, scales=scales, **TINY)
    frames = moving_squares()
    targets = frames[:, 1:]
    constant = (targets - targets.mean()).square().mean().item()  # best constant prediction
    tf = torch.ones(2, 5, dtype=torch.bool)
    losses = train_losses(model, frames, tf, lr=3e-3)
    # measured: 0.06-0.07 -> 0.005-0.012 (the constant prediction scores 0.059)
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 0.4 * constant, losses


@needs_predrnn
@pytest.mark.parametrize("variant,mode", [("indconv", "position"), ("ind", "channel")])
def test_hadamard_variants_run_in_the_pyramid(variant, mode):
    model = create_model("motionrnn_net", layers=4, scales=(1, 0.5, 0.5, 1), cell_kw={"recurrent": variant,
                                                                                 "hadamard": mode}, **TINY)
    assert model.cells[1].uh.n_hadamard == (2 if variant == "indconv" else 3)
    out = model(torch.rand(2, 6, 1, 16, 16)).outputs
    assert out.shape == (2, 5, 1, 16, 16) and torch.isfinite(out).all()


def test_all_mim_stack_without_predrnn():
    """The block also works as every layer (MS-RNN's own code uses MIM cells everywhere)."""
    model = create_model("stack", cell="mim", layers=3, scales=(1, 0.5, 1), **TINY)
    out = model(torch.rand(1, 6, 1, 16, 16)).outputs
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# -- costs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_mim_runtime_products_equal_declared(variant, mode):
    cell = make(variant=variant, mode=mode)
    x = torch.randn(2, C, *SIZE)
    n = count_ops(cell, x, type(cell.init_state(x))(*states()), torch.randn(2, C, *SIZE))
    assert cell.gating_products == 10
    assert n.products == (cell.gating_products + hadamard_blocks(cell)) * 2 * C * SIZE[0] * SIZE[1]


@pytest.mark.parametrize("variant,mode", [("conv", "position"), ("ind", "position")])
def test_motionrnn_analytic_cost_matches_runtime(variant, mode):
    cell = make("motionrnn", variant=variant, mode=mode, size=(8, 8))
    x = torch.randn(1, C, 8, 8)
    with Count() as n:
        cell(x)
    cost = analytic_cell_cost(cell, 8, 8)
    mg = cell.motion
    bilinear = 4 * mg.hidden * mg.k ** 2 * 16
    assert cost["macs"] == n.macs
    assert cost["mults"] == n.macs + n.products + bilinear
    assert cost["params"] == sum(p.numel() for p in cell.parameters())
    # the C·H·W products: MIM 10 + highway 1 + MotionGRU's output mix 2
    small = 3 * 18 * 16 + mg.hidden * 9 * 16
    assert n.products - small == (13 + hadamard_blocks(cell)) * C * 64


def test_cell_cost_uses_the_analytic_count():
    """convrnn.cost.cell_cost reports the walker's count with MotionRNN's hooks (its grid_sample and
    half-size maps hide multiplications from the walker) and counts MIM's parameters exactly."""
    from convrnn.cost import cell_cost
    motion = make("motionrnn", size=(8, 8))
    got = cell_cost(motion, 8, 8)
    want = analytic_cell_cost(motion, 8, 8)
    assert {k: got[k] for k in want} == want
    assert got["mults"] == got["mults_measured"]
    mim = make("mim", size=(8, 8))
    assert cell_cost(mim, 8, 8)["params"] == sum(p.numel() for p in mim.parameters())


# -- errors --------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ValueError, match=r"in_channels \(3\) must equal channels \(4\)"):
        create_cell("motionrnn", in_channels=3, channels=4)
    with pytest.raises(ValueError, match="even state size"):
        create_cell("motionrnn", in_channels=4, channels=4, size=(5, 8))
    cell = create_cell("motionrnn", in_channels=4, channels=4)
    with pytest.raises(ValueError, match="even height and width"):
        cell(torch.randn(1, 4, 5, 8))
    mim = create_cell("mim", in_channels=4, channels=4)
    with pytest.raises(ValueError, match="zig-zag memory M of shape"):
        mim(torch.randn(1, 4, 8, 8), None, torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="built for 4 input channels"):
        mim(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="fixes its cells"):
        create_model("mim_net", cell="convlstm", **TINY)
    with pytest.raises(ValueError, match="needs layers >= 2"):
        create_model("motionrnn_net", layers=1, **TINY)


@needs_predrnn
def test_motionrnn_pyramid_needs_sizes_divisible_by_8():
    kw = {**TINY, "frame_size": (20, 20)}
    create_model("mim_net", layers=6, scales=(1, 0.5, 0.25, 0.25, 0.5, 1), **kw)  # 20 / 4: fine for MIM
    with pytest.raises(ValueError, match="smallest valid size is 24x24"):
        create_model("motionrnn_net", layers=6, scales=(1, 0.5, 0.25, 0.25, 0.5, 1), **kw)
