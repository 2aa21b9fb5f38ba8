"""PrecipLSTM (Ma et al. 2022): the local attention against a naive per-pixel loop, the
temporal-difference memory and a whole step against hand computations (F.conv2d with the module's
own weights), zig-zag memory, costs, gradients, training, Hadamard variants and errors."""
import pytest
import torch
import torch.nn.functional as F

from convrnn import create_cell, create_model
from convrnn.cost import analytic_cell_cost, cell_cost, count_ops
from convrnn.cells.preciplstm import local_attention, local_attention_mults

from helpers import (PYRAMID3, Count, check_free_run_by_hand, dead_blocks, hadamard_blocks, in_blocks,
                     moving_square, rec_blocks, train_losses)
from helpers import one_thread  # noqa: F401  (autouse fixture)
from helpers import randomize as _randomize

sig, tanh = torch.sigmoid, torch.tanh
CIN, C, SIZE, K = 3, 4, (6, 8), 3   # K: attention window in the unit tests
VARIANTS = [("conv", "position"), ("indconv", "position"), ("indconv", "channel"), ("ind", "position"),
            ("ind", "channel")]


def randomize(module):
    return _randomize(module, 0.4)


def make(variant="conv", mode="position", size=SIZE, cin=CIN, **kw):
    kw = {"neighbourhood": K, **kw}
    return create_cell("preciplstm", in_channels=cin, channels=C, recurrent=variant, hadamard=mode, size=size, **kw)


# -- the local attention ---------------------------------------------------------------------------
def naive_local_attention(q, k, v, size):
    """Pixel by pixel: logits q_ij · k_mn over the size x size window (0 for neighbours off the map,
    whose value is 0 too), softmax, weighted sum of v."""
    b, c, hh, ww = q.shape
    r = size // 2
    out = torch.zeros_like(q)
    for n in range(b):
        for i in range(hh):
            for j in range(ww):
                logits, values = [], []
                for m in range(i - r, i + r + 1):
                    for p in range(j - r, j + r + 1):
                        inside = 0 <= m < hh and 0 <= p < ww
                        logits.append(torch.dot(q[n, :, i, j], k[n, :, m, p]) if inside else q.new_zeros(()))
                        values.append(v[n, :, m, p] if inside else q.new_zeros(c))
                w = torch.softmax(torch.stack(logits), 0)
                out[n, :, i, j] = (w[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("size", [1, 3, 5, 13])   # 13 > the 6 x 8 map: every pixel sees it all
def test_local_attention_against_naive_loop(size):
    q, k, v = (torch.randn(2, C, *SIZE) for _ in range(3))
    torch.testing.assert_close(local_attention(q, k, v, size), naive_local_attention(q, k, v, size),
                               atol=1e-5, rtol=1e-5)


def unfold_local_attention(q, k, v, size):
    """Every pixel's whole size x size window materialised (F.unfold of the zero-padded k and v):
    logits q · k over all size² neighbours, off-map ones included (k = v = 0 there), softmax, weighted v."""
    b, c, hh, ww = q.shape
    kw, vw = (F.unfold(t, size, padding=size // 2).view(b, c, size * size, hh * ww) for t in (k, v))
    weights = torch.softmax((q.flatten(2)[:, :, None] * kw).sum(1), 1)       # (B, size², HW)
    return (weights[:, None] * vw).sum(2).view(b, c, hh, ww)


# maps cut into several query tiles (16 x 16), with padded last tiles and key spans clipped to the map
TILED = [((2, 3, 37, 20), 5), ((1, 2, 37, 20), 31), ((1, 2, 48, 64), 31), ((2, 2, 33, 17), 13), ((1, 3, 1, 40), 3)]


@pytest.mark.parametrize("shape,size", TILED, ids=[f"{s[2]}x{s[3]}-w{n}" for s, n in TILED])
def test_local_attention_and_its_gradients_against_the_unfolded_windows(shape, size):
    q, k, v = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    got, want = local_attention(q, k, v, size), unfold_local_attention(q, k, v, size)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(got)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_local_attention_trains_after_a_first_call_under_inference_mode():
    """The cached window tables are built outside inference mode: validation (inference_mode) before
    training must not leave tables that autograd refuses to save."""
    q, k, v = (torch.randn(1, C, 19, 21) for _ in range(3))
    with torch.inference_mode():
        first = local_attention(q, k, v, 7)
    q.requires_grad_(True)
    again = local_attention(q, k, v, 7)
    again.sum().backward()
    torch.testing.assert_close(again.detach(), first)
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_local_attention_counts_what_it_computes():
    """local_attention_mults (the analytic count) = the MACs the dispatch counter sees in the fused kernel."""
    for (b, c, hh, ww), size in TILED + [((2, C, *SIZE), 3)]:
        q, k, v = (torch.randn(b, c, hh, ww) for _ in range(3))
        counts = count_ops(local_attention, q, k, v, size)
        assert counts.macs == b * local_attention_mults(hh, ww, c, size)
    window = 2 * 31 * 31 * 64 * 64 * 64       # a 64 x 64 map, window 31: 2.2x the window's products
    assert 2.1 < local_attention_mults(64, 64, 64, 31) / window < 2.3


def test_window_one_is_the_identity_on_v():
    q, k, v = (torch.randn(1, C, *SIZE) for _ in range(3))
    torch.testing.assert_close(local_attention(q, k, v, 1), v)


# -- one step by hand ------------------------------------------------------------------------------
def conv(x, w, b=None):
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


def ref_step(cell, x, h, c, m, ms, mt, prev_input, variant):
    """The equations of the PrecipLSTM docstring, written out with the cell's weights."""
    wq, wk, wv = cell.qkv.weight.chunk(3, 0)
    att = naive_local_attention(conv(x, wq), conv(x, wk), conv(x, wv), cell.neighbourhood)
    xa = x + conv(att, cell.att_out.weight, cell.att_out.bias)
    i, f, o, g, i2, f2, g2, is_, fs, gs = in_blocks(cell.wx, xa, 10)
    ui, uf, uo, ug = rec_blocks(cell.uh, h, variant, "gggc")   # gates i, f, o; candidate g
    c = sig(f + uf) * c + sig(i + ui) * tanh(g + ug)
    vi, vf, vg = rec_blocks(cell.um, m, variant, "ggc")        # gates i', f'; candidate g'
    m = sig(f2 + vf) * m + sig(i2 + vi) * tanh(g2 + vg)
    si, sf, sg = rec_blocks(cell.us, ms, variant, "ggc")
    ms = sig(fs + sf) * ms + sig(is_ + si) * tanh(gs + sg)
    ti, tf, tg = in_blocks(cell.wd, x - prev_input, 3)
    ri, rf, rg = rec_blocks(cell.ut, mt, variant, "ggc")
    mt = sig(tf + rf) * mt + sig(ti + ri) * tanh(tg + rg)
    (oc,), (os_,), (ot,), (om,) = (rec_blocks(op, s, variant, "g") for op, s in
                                   ((cell.vc, c), (cell.vs, ms), (cell.vt, mt), (cell.vm, m)))
    o = sig(o + uo + oc + os_ + ot + om)
    h = o * tanh(conv(torch.cat([c, ms, mt, m], 1), cell.fuse.weight, cell.fuse.bias))
    return h, c, m, ms, mt


def random_state(batch=2):
    return [torch.randn(batch, C, *SIZE) for _ in range(5)] + [torch.randn(batch, CIN, *SIZE)]


@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_step_against_hand_computation(variant, mode):
    cell = randomize(make(variant, mode))
    x, state = torch.randn(2, CIN, *SIZE), random_state()
    memory = torch.randn(2, C, *SIZE)
    h, new, _ = cell(x, cell.init_state(x)._make(state), memory)
    h0, c0, _, ms0, mt0, xp0 = state
    want = ref_step(cell, x, h0, c0, memory, ms0, mt0, xp0, variant)
    for got, ref in zip((h, new.c, new.m, new.ms, new.mt), want):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert new.h is h and new.prev_input is x


def test_temporal_difference_memory():
    """TDM: mt_t = f ⊙ mt + i ⊙ g with [i, f, g] = W * (x_t - x_{t-1}) + U * mt; x_{t-1} = 0 at the
    first step (δ_0 = x_0), then the cell's own previous input."""
    cell = randomize(make())
    x0, x1 = torch.randn(2, CIN, *SIZE), torch.randn(2, CIN, *SIZE)

    def ref_mt(delta, mt):
        i, f, g = in_blocks(cell.wd, delta, 3)
        ri, rf, rg = rec_blocks(cell.ut, mt, "conv", "ggc")
        return sig(f + rf) * mt + sig(i + ri) * tanh(g + rg)

    _, s0, _ = cell(x0)
    assert s0.prev_input is x0
    torch.testing.assert_close(s0.mt, ref_mt(x0, torch.zeros(2, C, *SIZE)), atol=1e-6, rtol=1e-6)
    _, s1, _ = cell(x1, s0)
    torch.testing.assert_close(s1.mt, ref_mt(x1 - x0, s0.mt), atol=1e-6, rtol=1e-6)
    # the TDM sees only the difference: shifting both inputs by a constant leaves its update alone
    _, s2, _ = cell(x1 + 3.0, s0._replace(prev_input=x0 + 3.0))
    torch.testing.assert_close(s2.mt, s1.mt, atol=1e-6, rtol=1e-6)


def test_memory_argument_wins_and_own_memory_is_fed_back():
    cell = randomize(make())
    x = torch.randn(2, CIN, *SIZE)
    _, s, _ = cell(x)
    own, _, _ = cell(x, s)
    explicit, _, _ = cell(x, s, s.m)
    other, _, _ = cell(x, s, s.m + 1.0)
    torch.testing.assert_close(own, explicit)
    assert not torch.allclose(own, other)
    assert cell.zigzag and cell.registry_name == "preciplstm"


def test_defaults():
    cell = create_cell("preciplstm", in_channels=CIN, channels=C)
    assert cell.neighbourhood == 31 and cell.gating_products == 9 and cell.qkv.bias is None
    built = []
    for fb in (None, 0.0, 1.0):
        torch.manual_seed(0)
        kw = {} if fb is None else {"forget_bias": fb}
        built.append(create_cell("preciplstm", in_channels=CIN, channels=C, **kw))
    default, zero, one = built
    assert torch.equal(default.wx.bias, zero.wx.bias)   # no forget bias by default (the reference's)
    for conv, blocks, forget in ((one.wx, 10, (1, 5, 8)), (one.wd, 3, (1,))):   # f, f', SLAM's f; TDM's f
        other = zero.wx if conv is one.wx else zero.wd
        for k in range(blocks):
            want = torch.ones(C) if k in forget else other.bias.view(blocks, C)[k]
            assert torch.equal(conv.bias.view(blocks, C)[k], want)


# -- costs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,mode", VARIANTS)
def test_analytic_cost_matches_runtime_count(variant, mode):
    cell = randomize(make(variant, mode, neighbourhood=5))
    x = torch.randn(1, CIN, *SIZE)
    with Count() as n:
        cell(x, cell.init_state(x)._make(random_state(1)), torch.randn(1, C, *SIZE))
    hw = SIZE[0] * SIZE[1]
    assert n.products == (cell.gating_products + hadamard_blocks(cell)) * C * hw   # the attention: one fused op
    cost = analytic_cell_cost(cell, *SIZE)
    attention = local_attention_mults(*SIZE, CIN, 5)
    assert cost == {"params": sum(p.numel() for p in cell.parameters()), "mults": n.macs + n.products + attention,
                    "macs": n.macs + attention}


def test_cell_cost_uses_the_analytic_count_and_measures_the_same():
    """convrnn.cost.cell_cost reports the cell's analytic count, and its dispatch-mode count
    (every product, the local attention's included) agrees."""
    cell = make("indconv")
    got = cell_cost(cell, *SIZE)
    want = analytic_cell_cost(cell, *SIZE)
    assert {k: got[k] for k in want} == want
    assert got["mults_measured"] == want["mults"]


# -- gradients, training, variants in networks -----------------------------------------------------
def test_gradients_reach_every_block():
    cell = randomize(make("indconv", "channel"))
    x0, x1 = torch.randn(2, CIN, *SIZE), torch.randn(2, CIN, *SIZE)
    _, s, _ = cell(x0)
    h, s, _ = cell(x1, s)
    (h.square().sum() + s.m.sum()).backward()
    assert not dead_blocks(cell, C), f"no gradient reaches {dead_blocks(cell, C)}"


TINY = {"channels": 8, "frame_size": (16, 16), "in_len": 4, "out_len": 2, "embed": "conv1x1",
        "cell_kw": {"neighbourhood": 3}}


@pytest.mark.parametrize("name,layers", [("stack", 2), ("msrnn", 4)])
def test_model_trains(name, layers):
    torch.manual_seed(0)
    model = create_model(name, cell="preciplstm", layers=layers, **TINY)
    if name == "msrnn":
        assert model.scales == (1, 0.5, 0.5, 1)
    frames = moving_square()
    losses = train_losses(model, frames, torch.ones(2, 5, dtype=torch.bool), lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_pyramid_keeps_each_layers_previous_input_at_its_scale():
    model = create_model("msrnn", cell="preciplstm", layers=4, **TINY)
    frames = torch.rand(1, 6, 1, 16, 16)
    _, s1 = model.step(frames[:, 0], None)
    assert [tuple(s.prev_input.shape[-2:]) for s in s1.layers] == [(16, 16), (8, 8), (8, 8), (16, 16)]
    _, s2 = model.step(frames[:, 1], s1)
    # layer 1 differences its own input: the embedded frames
    emb = [model.codec.encode(frames[:, t]) for t in (0, 1)]
    torch.testing.assert_close(s1.layers[0].prev_input, emb[0])
    torch.testing.assert_close(s2.layers[0].prev_input, emb[1])


@pytest.mark.parametrize("variant,mode", VARIANTS[1:])
def test_hadamard_variants_run_in_a_pyramid(variant, mode):
    model = create_model("msrnn", cell="preciplstm_" + variant, layers=3, scales=(1, 0.5, 1),
                         **{**TINY, "cell_kw": {**TINY["cell_kw"], "hadamard": mode}})
    check_free_run_by_hand(randomize(model), **PYRAMID3, channels=8)


# -- errors ----------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ValueError, match="neighbourhood must be a positive odd window size"):
        make(neighbourhood=4)
    with pytest.raises(ValueError, match="positive odd size"):
        local_attention(*(torch.randn(1, C, *SIZE) for _ in range(3)), 2)
    with pytest.raises(ValueError, match="q, k, v must share one"):
        local_attention(torch.randn(1, C, *SIZE), torch.randn(1, C, 4, 4), torch.randn(1, C, *SIZE), 3)
    with pytest.raises(ValueError, match="need the state size"):
        make("indconv", size=None)
    cell = make()
    x = torch.randn(2, CIN, *SIZE)
    with pytest.raises(ValueError, match="built for 3 input channels but got 4"):
        cell(torch.randn(2, 4, *SIZE))
    with pytest.raises(ValueError, match="expects the zig-zag memory M of shape"):
        cell(x, None, torch.randn(2, C, 3, 4))
    _, s, _ = cell(x)
    with pytest.raises(ValueError, match="prev_input must be this layer's input at the previous step"):
        cell(x, s._replace(prev_input=torch.randn(2, CIN, 3, 4)))
