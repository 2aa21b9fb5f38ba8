"""TrajGRU (Shi et al. 2017): the warp against the paper's bilinear formula, one step against a hand
computation (F.conv2d with the module's own weights), zero-flow start, costs, gradients, training,
Hadamard variants and errors."""
import pytest
import torch
import torch.nn.functional as F

from convrnn import create_cell, create_model
from convrnn.cost import analytic_cell_cost, cell_cost
from convrnn.cells.trajgru import warp_links

from helpers import Count, moving_square, train_losses
from helpers import one_thread  # noqa: F401  (autouse fixture)
from helpers import randomize as _randomize

sig = torch.sigmoid
CIN, C, L, SIZE = 3, 4, 3, (6, 8)   # non-square, so swapped axes would show
VARIANTS = [("conv", "position"), ("indconv", "position"), ("indconv", "channel"), ("ind", "position"),
            ("ind", "channel")]


def randomize(module):
    return _randomize(module, 0.5)


def make(variant="conv", mode="position", size=SIZE, **kw):
    kw = {"links": L, "flow_channels": 5, "flow_kernel": 3, **kw}
    return create_cell("trajgru", in_channels=CIN, channels=C, recurrent=variant, hadamard=mode, size=size, **kw)


def paper_warp(h, u, v):
    """The paper's warp: M[c, i, j] = Σ_{m,n} h[c, m, n] max(0, 1 - |i + V_ij - m|) max(0, 1 - |j + U_ij - n|)
    with h (B, C, H, W), U, V (B, H, W); dense over all (m, n), no grid_sample."""
    _, _, hh, ww = h.shape
    i = torch.arange(hh, dtype=h.dtype).view(1, hh, 1, 1, 1)
    j = torch.arange(ww, dtype=h.dtype).view(1, 1, ww, 1, 1)
    m = torch.arange(hh, dtype=h.dtype).view(1, 1, 1, hh, 1)
    n = torch.arange(ww, dtype=h.dtype).view(1, 1, 1, 1, ww)
    ky = torch.relu(1 - (i + v[..., None, None] - m).abs())
    kx = torch.relu(1 - (j + u[..., None, None] - n).abs())
    return torch.einsum("bcmn,bijmn->bcij", h, ky * kx)


# -- the warp ------------------------------------------------------------------------------------
def test_zero_flow_warp_is_identity():
    h = torch.randn(2, C, *SIZE)
    out = warp_links(h, torch.zeros(2, 2 * L, *SIZE))
    assert out.shape == (2, C, L, *SIZE)
    for link in range(L):
        torch.testing.assert_close(out[:, :, link], h, atol=1e-6, rtol=0)


def test_integer_flows_shift_the_map_with_zeros_outside():
    h = torch.randn(1, C, *SIZE)
    flows = torch.zeros(1, 4, *SIZE)
    flows[:, 0] = 1.0    # link 0: U = +1, sample (i, j + 1)
    flows[:, 3] = -2.0   # link 1: V = -2, sample (i - 2, j)
    out = warp_links(h, flows)
    torch.testing.assert_close(out[:, :, 0, :, :-1], h[..., 1:], atol=1e-6, rtol=0)
    assert out[:, :, 0, :, -1].abs().max() < 1e-5   # off the map: zeros (up to rounding)
    torch.testing.assert_close(out[:, :, 1, 2:], h[:, :, :-2], atol=1e-6, rtol=0)
    assert out[:, :, 1, :2].abs().max() < 1e-5


def test_warp_matches_the_papers_bilinear_formula():
    h = torch.randn(2, C, *SIZE)
    flows = torch.randn(2, 2 * L, *SIZE) * 2.5   # fractional, some samples fall off the map
    out = warp_links(h, flows)
    for link in range(L):
        want = paper_warp(h, flows[:, 2 * link], flows[:, 2 * link + 1])
        torch.testing.assert_close(out[:, :, link], want, atol=1e-5, rtol=1e-5)


# -- one step by hand ----------------------------------------------------------------------------
def conv(x, w, b=None):
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


def ref_step(cell, x, h):
    """The paper's equations with the cell's weights: γ -> L flows -> warps -> Σ_l U^l ∘ w_l -> GRU."""
    hidden = F.leaky_relu(conv(x, cell.flow_x.weight, cell.flow_x.bias) + conv(h, cell.flow_h.weight), 0.2)
    flows = conv(hidden, cell.flow_out.weight, cell.flow_out.bias)
    warped = [paper_warp(h, flows[:, 2 * l], flows[:, 2 * l + 1]) for l in range(L)]
    op = cell.uh
    terms, ci, hi = [], 0, 0
    for kind in op.kinds:
        if kind == "conv":   # 1x1 over the links; input channel c·L + l is channel c of link l
            w = op.conv.weight[ci * C:(ci + 1) * C]
            terms.append(sum(conv(warped[l], w[:, l::L]) for l in range(L)))
            ci += 1
        else:
            terms.append(sum(op.weight[hi, :, l] * warped[l] for l in range(L)))
            hi += 1
    wz, wr, wh = (conv(x, cell.wx.weight[i * C:(i + 1) * C], cell.wx.bias[i * C:(i + 1) * C]) for i in range(3))
    z = sig(wz + terms[0])
    r = sig(wr + terms[1])
    proj = terms[2] if cell.b_hh is None else terms[2] + cell.b_hh.view(1, C, 1, 1)  # b_hh inside r ⊙ (·)
    cand = F.leaky_relu(wh + r * proj, 0.2)
    return (1 - z) * cand + z * h


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_step_against_hand_computation(variant, mode):
    cell = randomize(make(variant, mode))
    x, h = torch.randn(2, CIN, *SIZE), torch.randn(2, C, *SIZE)
    out, state, _ = cell(x, cell.init_state(x)._make([h]))
    torch.testing.assert_close(out, ref_step(cell, x, h), atol=1e-5, rtol=1e-5)
    assert state.h is out
    kinds = {"conv": ("conv",) * 3, "indconv": ("hadamard", "hadamard", "conv"), "ind": ("hadamard",) * 3}
    assert cell.uh.kinds == kinds[variant]


@pytest.mark.parametrize("variant,mode", VARIANTS[:2] + VARIANTS[-1:])
def test_candidate_bias_sits_inside_the_reset_gate(variant, mode):
    """candidate_bias=True (both reference codes bias the projection): h~ = LeakyReLU(W x + r ⊙ (U w + b_hh) + b).
    It is not redundant: moving b_hh into the input bias b changes the function wherever r != 1."""
    cell = randomize(make(variant, mode, candidate_bias=True))
    assert cell.b_hh.shape == (C,) and sum(p.numel() for p in cell.parameters()) == \
        sum(p.numel() for p in make(variant, mode).parameters()) + C
    x, h = torch.randn(2, CIN, *SIZE), torch.randn(2, C, *SIZE)
    out, _, _ = cell(x, cell.init_state(x)._make([h]))
    torch.testing.assert_close(out, ref_step(cell, x, h), atol=1e-5, rtol=1e-5)
    folded = make(variant, mode)
    folded.load_state_dict({k: v for k, v in cell.state_dict().items() if k != "b_hh"})
    with torch.no_grad():
        folded.wx.bias[2 * C:] += cell.b_hh
    assert not torch.allclose(folded(x, folded.init_state(x)._make([h]))[0], out, atol=1e-4)


def test_flows_start_at_zero_and_first_step_is_a_gru_on_h():
    cell = make()
    x, h = torch.randn(2, CIN, *SIZE), torch.randn(2, C, *SIZE)
    assert cell.flows(x, h).abs().max() == 0   # warp = identity at initialisation
    out, _, _ = cell(x, cell.init_state(x)._make([h]))
    # with zero flows every link sees h itself: the 1x1 projection acts on L copies of h
    w = cell.uh.conv.weight.view(3 * C, C, L).sum(-1, keepdim=True).unsqueeze(-1)
    uz, ur, uh = conv(h, w).chunk(3, 1)
    wz, wr, wh = cell.wx(x).chunk(3, 1)
    z, r = sig(wz + uz), sig(wr + ur)
    torch.testing.assert_close(out, (1 - z) * F.leaky_relu(wh + r * uh, 0.2) + z * h, atol=1e-5, rtol=1e-5)


def test_zero_state_default_and_sequence():
    cell = randomize(make())
    x = torch.randn(2, CIN, *SIZE)
    a, s, _ = cell(x)
    b, _, _ = cell(x, cell.init_state(x))
    torch.testing.assert_close(a, b)
    c, _, _ = cell(x, s)
    assert c.shape == (2, C, *SIZE) and not torch.allclose(a, c)


def test_defaults_follow_the_paper():
    cell = create_cell("trajgru", in_channels=CIN, channels=C)
    assert cell.links == 13 and cell.flow_out.out_channels == 26
    assert cell.flow_x.out_channels == 32 and cell.flow_x.kernel_size == (5, 5)
    assert cell.registry_name == "trajgru" and not cell.zigzag


# -- costs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_analytic_cost_matches_runtime_count(variant, mode):
    cell = randomize(make(variant, mode))
    x = torch.randn(1, CIN, *SIZE)
    with Count() as n:
        cell(x, cell.init_state(x)._make([torch.randn(1, C, *SIZE)]))
    per_map = C * SIZE[0] * SIZE[1]
    n_had = cell.uh.n_hadamard
    assert n.products == (cell.gating_products + n_had * L) * per_map  # r⊙·, (1-z)⊙h~, z⊙h + link products
    cost = analytic_cell_cost(cell, *SIZE)
    assert cost["macs"] == n.macs
    assert cost["mults"] == n.macs + n.products + 4 * L * per_map   # + bilinear sampling inside grid_sample
    assert cost["params"] == sum(p.numel() for p in cell.parameters())


def test_cell_cost_uses_the_analytic_count_and_measures_the_same():
    """convrnn.cost.cell_cost reports the cell's analytic count, and its dispatch-mode count
    (which sees inside grid_sample) agrees."""
    cell = make("indconv")
    got = cell_cost(cell, *SIZE)
    want = analytic_cell_cost(cell, *SIZE)
    assert {k: got[k] for k in want} == want
    assert got["mults_measured"] == want["mults"]


# -- gradients, training, variants in networks -----------------------------------------------------
def test_gradients_reach_every_parameter():
    cell = randomize(make("indconv", "channel"))
    x = torch.randn(2, CIN, *SIZE)
    h, s, _ = cell(x)
    h, _, _ = cell(torch.randn(2, CIN, *SIZE), s)
    h.square().sum().backward()
    missing = [n for n, p in cell.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_zero_initialised_flows_still_receive_gradient():
    cell = make()
    x = torch.randn(2, CIN, *SIZE)
    _, s, _ = cell(x)
    h, _, _ = cell(x, s._replace(h=torch.randn(2, C, *SIZE)))
    h.square().sum().backward()
    assert cell.flow_out.weight.grad.abs().sum() > 0 and cell.flow_out.bias.grad.abs().sum() > 0


TINY = {"channels": 8, "frame_size": (16, 16), "in_len": 4, "out_len": 2, "embed": "conv1x1",
        "cell_kw": {"links": 5, "flow_channels": 8, "flow_kernel": 3}}


@pytest.mark.parametrize("name,layers", [("stack", 2), ("msrnn", 4)])
def test_model_trains(name, layers):
    torch.manual_seed(0)
    model = create_model(name, cell="trajgru", layers=layers, **TINY)
    if name == "msrnn":
        assert model.scales == (1, 0.5, 0.5, 1)
    frames = moving_square()
    losses = train_losses(model, frames, torch.ones(2, 5, dtype=torch.bool), lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("variant,mode", VARIANTS[1:])
def test_hadamard_variants_run_in_a_pyramid(variant, mode):
    model = create_model("msrnn", cell="trajgru_" + variant, layers=3, scales=(1, 0.5, 1),
                         **{**TINY, "cell_kw": {**TINY["cell_kw"], "hadamard": mode}})
    pred = model(torch.rand(1, 6, 1, 16, 16))
    assert pred.future.shape == (1, 2, 1, 16, 16) and torch.isfinite(pred.outputs).all()
    pred.outputs.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    if mode == "position":
        assert [tuple(c.uh.weight.shape[-2:]) for c in model.cells] == [(16, 16), (8, 8), (16, 16)]


# -- errors --------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ValueError, match="links and flow_channels must be positive"):
        make(links=0)
    with pytest.raises(ValueError, match="flow_kernel must be odd"):
        make(flow_kernel=4)
    with pytest.raises(ValueError, match="need the state size"):
        make("indconv", size=None)
    with pytest.raises(ValueError, match="is not a variant"):
        make("hadamard")
    cell = make("ind", size=(8, 8))
    with pytest.raises(ValueError, match=r"does not match the per-position Hadamard weight.*size=\(6, 8\)"):
        cell(torch.randn(1, CIN, *SIZE))
    with pytest.raises(ValueError, match="built for 3 input channels but got 2"):
        make()(torch.randn(1, 2, *SIZE))
    with pytest.raises(ValueError, match=r"flows must have shape \(B, 2L, H, W\)"):
        warp_links(torch.randn(1, C, *SIZE), torch.zeros(1, 3, *SIZE))
