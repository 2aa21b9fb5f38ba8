"""The reference forms (issue 15): each option that makes a cell or preset compute OpenSTL's, MS-RNN's
or thuml's function, against a hand computation written from that reference's equations (F.conv2d
with the module's own weights, block by block; never the module's forward), plus the network
plumbing they need (``Below``), the per-epoch reverse schedule, layouts, gradients, costs, compile.

Checkpoint import (the reference key names and layouts) is tests/test_convert.py."""
import math
from typing import NamedTuple

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from convrnn import create_cell, create_model
from convrnn.cells.base import Below, Cell
from convrnn.cells.motionrnn import MotionGRU, neighbourhood_warp
from convrnn.cost import cell_cost
from convrnn.layers import resample
from convrnn.models.stack import step_layers
from convrnn.schedules import ReverseScheduled, create_schedule
from helpers import in_blocks, moving_square, randomize, rec_blocks, train_losses
from helpers import one_thread  # noqa: F401  (autouse fixture)

sig, tanh = torch.sigmoid, torch.tanh
C, SIZE = 4, (6, 8)
VARIANTS = [("conv", "position"), ("indconv", "position"), ("ind", "channel")]


def make(name, recurrent="conv", mode="position", cin=C, size=SIZE, **kw):
    return randomize(create_cell(name, in_channels=cin, channels=C, recurrent=recurrent, hadamard=mode, size=size,
                                 **kw), 0.4)


def rand(*shape):
    return torch.randn(*shape)


def conv(x, module, padding=None):
    w = module.weight
    return F.conv2d(x, w, module.bias, padding=w.shape[-1] // 2 if padding is None else padding)


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# -- the network hands `reads_below` cells their skip-free input and the lateral of the layer below
class RecorderState(NamedTuple):
    h: torch.Tensor
    lateral: torch.Tensor


class Recorder(Cell):
    """A cell that records what the network passes it and outputs a fixed function of x."""
    reads_below = True

    def __init__(self, in_channels, channels, kernel=3, recurrent="conv", hadamard="position", size=None):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        self.seen = []

    def forward(self, x, state=None, m=None, below=None):
        self.seen.append((x, below))
        h = 2 * x + 1
        return h, RecorderState(h, 10 * h), m


def test_step_layers_passes_direct_input_and_resampled_lateral():
    cells = [Recorder(C, C) for _ in range(4)]
    sizes = [(8, 8), (4, 4), (4, 4), (8, 8)]
    x = rand(2, C, 8, 8)
    step_layers(cells, x, None, None, sizes, skip_from=[(), (), (), (0,)])
    x0, b0 = cells[0].seen[0]
    assert x0 is x and b0.direct is x and b0.lateral is None          # layer 1: the input itself
    h0 = 2 * x + 1
    x1, b1 = cells[1].seen[0]
    close(b1.direct, F.max_pool2d(h0, 2))
    close(b1.lateral, F.max_pool2d(10 * h0, 2))                        # layer 1's lateral, pooled
    h2 = 2 * (2 * x1 + 1) + 1
    x3, b3 = cells[3].seen[0]
    up = resample(h2, (8, 8))
    close(b3.direct, up)                                               # without the skip ...
    close(x3, up + h0)                                                 # ... which x includes
    close(b3.lateral, resample(10 * h2, (8, 8)))
    # a cell without reads_below is called with the one signature (no `below`)
    plain = create_cell("convlstm", in_channels=C, channels=C)
    step_layers([Recorder(C, C), plain], x, None, None)


# -- PredRNN++ (the cell's openstl variant and highway='input': tests/test_predrnn.py) -----------
def highway_moved(paper_state):
    """Move the GHU from layer 1's output (paper) to layer 2's input (msrnn): same tensors."""
    return {k.replace("cells.0.ghu", "cells.1.ghu"): v for k, v in paper_state.items()}


def test_msrnn_highway_is_the_paper_function_in_a_flat_stack_and_not_in_the_pyramid():
    kw = {"layers": 4, "channels": C, "frame_size": (16, 16), "in_len": 3, "out_len": 2, "embed": "conv1x1"}
    torch.manual_seed(0)
    paper = randomize(create_model("predrnnpp_net", **kw), 0.3)
    msrnn = create_model("predrnnpp_net", variant="msrnn", **kw)
    assert [c.highway for c in paper.cells] == ["output", None, None, None]
    assert [c.highway for c in msrnn.cells] == [None, "input", None, None]
    msrnn.load_state_dict(highway_moved(paper.state_dict()))
    frames = torch.rand(2, 5, 1, 16, 16)
    close(msrnn(frames).outputs, paper(frames).outputs)
    # MS-PredRNN++: the GHU runs at layer 2's scale, and the skip into the top layer is layer 1's h
    ms = {**kw, "scales": (1, 0.5, 0.5, 1)}
    torch.manual_seed(0)
    paper = randomize(create_model("predrnnpp_net", **ms), 0.3)
    msrnn = create_model("predrnnpp_net", variant="msrnn", **ms)
    msrnn.load_state_dict(highway_moved(paper.state_dict()))
    assert not torch.allclose(msrnn(frames).outputs, paper(frames).outputs, atol=1e-4)
    seen = {}
    msrnn.cells[3].register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    _, state = msrnn.step(frames[:, 0], None)
    close(seen["x"], resample(state.layers[2].h, (16, 16)) + state.layers[0].h)
    assert state.layers[1].z.shape[-2:] == (8, 8)


def test_predrnnpp_preset_variants_and_errors():
    kw = {"channels": C, "frame_size": (16, 16), "in_len": 2, "out_len": 1}
    net = create_model("predrnnpp_net", layers=3, variant="openstl", **kw)
    assert all(c.variant == "openstl" and c.o_from_h for c in net.cells)
    assert [c.highway for c in net.cells] == ["output", None, None]
    with pytest.raises(ValueError, match="variant='nope'"):
        create_model("predrnnpp_net", variant="nope", **kw)
    with pytest.raises(ValueError, match="layers >= 2"):
        create_model("predrnnpp_net", layers=1, variant="msrnn", **kw)
    with pytest.raises(ValueError, match="highway='side'"):
        create_cell("predrnnpp", in_channels=C, channels=C, highway="side")


# -- MIM -----------------------------------------------------------------------------------------
def ref_mim_paper_block(cell, x, delta, state, m):
    """MIM (paper equations) with the difference δ given: returns h, c, M, N, S."""
    h, c, _, n, s = state[:5]
    wi, wf, wg, wo = in_blocks(cell.n_wx, delta, 4)
    ni, nf, ng = rec_blocks(cell.n_un, n)
    n = sig(wf + nf) * n + sig(wi + ni) * tanh(wg + ng)
    d = sig(wo + rec_blocks(cell.n_uo, n)[0]) * tanh(n)
    si, sf, so, sg = in_blocks(cell.s_wd, d, 4)
    ci, cf, co, cg = rec_blocks(cell.s_uc, c)
    s = sig(sf + cf) * s + sig(si + ci) * tanh(sg + cg)
    t = sig(so + co + rec_blocks(cell.s_uo, s)[0]) * tanh(s)
    xi, xo, xg, xi2, xf2, xg2 = in_blocks(cell.wx, x, 6)
    hi, ho, hg = rec_blocks(cell.uh, h)
    mi, mf, mg = rec_blocks(cell.um, m)
    c = t + sig(xi + hi) * tanh(xg + hg)
    m = sig(xf2 + mf) * m + sig(xi2 + mi) * tanh(xg2 + mg)
    o = sig(xo + ho + rec_blocks(cell.vc, c)[0] + rec_blocks(cell.vm, m)[0])
    return o * tanh(conv(torch.cat([c, m], 1), cell.fuse)), c, m, n, s, o


def test_mim_msrnn_differences_against_the_skip_free_input_of_the_step_before():
    cell = make("mim", variant="msrnn")
    assert cell.reads_below
    x0, x1, m = rand(2, C, *SIZE), rand(2, C, *SIZE), rand(2, C, *SIZE)
    direct0 = rand(2, C, *SIZE)                       # x0 = direct0 + a skip
    _, s0, _ = cell(x0, None, m, below=Below(direct0, None))
    zero = [torch.zeros(2, C, *SIZE)] * 5
    want0 = ref_mim_paper_block(cell, x0, x0, zero, m)  # δ_0 = x_0 - 0
    close(s0.h, want0[0])
    close(s0.n, want0[3])
    assert torch.equal(s0.prev_input, direct0)        # keeps the input WITHOUT the skip
    _, s1, _ = cell(x1, s0, m, below=Below(rand(2, C, *SIZE), None))
    want1 = ref_mim_paper_block(cell, x1, x1 - direct0, s0, m)
    for got, ref in zip((s1.h, s1.c, s1.m, s1.n, s1.s), want1):
        close(got, ref)
    # on its own (no network): below=None differences against its own previous input
    _, alone, _ = cell(x1, s0._replace(prev_input=x0), m)
    close(alone.h, ref_mim_paper_block(cell, x1, x1 - x0, s0, m)[0])


def openstl_module(cell, prefix, u, r, mem):
    """OpenSTL's MIMN/MIMS: i, f, o, g = W u + U ∘ r (+ P ⊙ mem on i, f); mem_t; σ(o + P_o ⊙ mem_t) tanh(mem_t).
    MIM-N has no bias: OpenSTL's constant forget bias (1.0 by default) instead."""
    w, ur, peep, uo = (getattr(cell, f"{prefix}_{n}") for n in ("wx" if prefix == "n" else "wd",
                                                                 "ud" if prefix == "n" else "uc", "peep", "uo"))
    wi, wf, wo, wg = in_blocks(w, u, 4)
    ri, rf, ro, rg = rec_blocks(ur, r)
    pi, pf = rec_blocks(peep, mem)
    forget = 1.0 if prefix == "n" else 0.0
    mem = sig(wf + rf + pf + forget) * mem + sig(wi + ri + pi) * tanh(wg + rg)
    return sig(wo + ro + rec_blocks(uo, mem)[0]) * tanh(mem), mem


def ref_mim_openstl(cell, x, u, state, m):
    """OpenSTL's MIMBlock + MIMN: shared i, g input terms, o from the old M, S detached."""
    h, c, _, n, s, _, d = state
    d, n = openstl_module(cell, "n", u, d, n)
    t, s = openstl_module(cell, "s", d, c, s)
    ai, af, ao, ag = in_blocks(cell.wx, x, 4)
    hi, ho, hg = rec_blocks(cell.uh, h)
    mi, mf, mo, mg = rec_blocks(cell.um, m)
    o = sig(ao + ho + mo)
    c = t + sig(ai + hi) * tanh(ag + hg)
    m = sig(af + mf) * m + sig(ai + mi) * tanh(ag + mg)
    return o * tanh(conv(torch.cat([c, m], 1), cell.fuse)), c, m, n, s, d


@pytest.mark.parametrize("recurrent,mode", VARIANTS)
def test_mim_openstl_variant(recurrent, mode):
    cell = make("mim", recurrent, mode, variant="openstl")
    assert cell.n_peep.kinds == ("hadamard",) * 2 and cell.n_uo.kinds == ("hadamard",)   # always Hadamard
    x0, x1, x2, m = (rand(2, C, *SIZE) for _ in range(4))
    assert cell.n_wx.bias is None and cell.n_forget == 1.0
    h0, s0, _ = cell(x0, None, m)
    assert s0.prev_input is x0
    init = cell.init_state(x0)
    for got, ref in zip((h0, s0.c, s0.m, s0.n, s0.s, s0.lateral), ref_mim_openstl(cell, x0, 0 * x0, init, m)):
        close(got, ref)
    # OpenSTL does not run MIM-N at the first step: N_0 = D_0 = 0 exactly, MIM-S reads D = 0
    assert s0.n.abs().max() == 0 and s0.lateral.abs().max() == 0
    idle = ref_mim_openstl(cell, x0, 0 * x0, init, m)
    t_idle = openstl_module(cell, "s", torch.zeros_like(x0), init.c, init.s)
    close(idle[4], t_idle[1])
    state = s0._replace(h=rand(2, C, *SIZE), c=rand(2, C, *SIZE), n=rand(2, C, *SIZE), s=rand(2, C, *SIZE),
                        lateral=rand(2, C, *SIZE))
    # no openstl layer below: MIM-N reads the input difference
    _, s1, _ = cell(x1, state, m, below=Below(x1, None))
    for got, ref in zip((s1.h, s1.c, s1.m, s1.n, s1.s, s1.lateral),
                        ref_mim_openstl(cell, x1, x1 - x0, state, m)):
        close(got, ref)
    # an openstl layer below: MIM-N reads ITS D_t (the cascade), not a difference
    d_below = rand(2, C, *SIZE)
    _, s2, _ = cell(x2, state, m, below=Below(x2, d_below))
    close(s2.h, ref_mim_openstl(cell, x2, d_below, state, m)[0])


def test_mim_openstl_detaches_s_between_steps():
    cell = make("mim", variant="openstl")
    x = rand(2, C, *SIZE)
    _, state, _ = cell(x)
    s_prev = state.s.detach().requires_grad_()
    c_prev = state.c.detach().requires_grad_()
    h, _, _ = cell(rand(2, C, *SIZE), state._replace(s=s_prev, c=c_prev))
    h.sum().backward()
    assert s_prev.grad is None and c_prev.grad is not None and c_prev.grad.abs().sum() > 0
    paper = make("mim")
    _, pstate, _ = paper(x)
    s_prev = pstate.s.detach().requires_grad_()
    paper(rand(2, C, *SIZE), pstate._replace(s=s_prev))[0].sum().backward()
    assert s_prev.grad is not None      # the paper's form keeps S in the graph


def test_mim_lstm_memory_is_an_st_lstm():
    cell = make("mim", memory="lstm")
    assert not hasattr(cell, "n_wx") and cell.gating_products == 5
    x, h, c, m = (rand(2, C, *SIZE) for _ in range(4))
    out, new, _ = cell(x, cell.init_state(x)._replace(h=h, c=c), m)
    xi, xo, xg, xi2, xf2, xg2, xf = in_blocks(cell.wx, x, 7)
    hi, ho, hf, hg = rec_blocks(cell.uh, h)
    mi, mf, mg = rec_blocks(cell.um, m)
    c_t = sig(xf + hf) * c + sig(xi + hi) * tanh(xg + hg)
    m_t = sig(xf2 + mf) * m + sig(xi2 + mi) * tanh(xg2 + mg)
    o = sig(xo + ho + rec_blocks(cell.vc, c_t)[0] + rec_blocks(cell.vm, m_t)[0])
    close(out, o * tanh(conv(torch.cat([c_t, m_t], 1), cell.fuse)))
    close(new.c, c_t)
    with pytest.raises(ValueError, match="OpenSTL's MIM has no such block"):
        create_cell("mim", in_channels=C, channels=C, variant="openstl", memory="lstm")


def test_mim_openstl_network_cascades_mim_n_outputs_upwards():
    """mim_net(variant='openstl'): layer 3's MIM-N reads layer 2's D_t; layer 2's reads δ of its input."""
    net = create_model("mim_net", layers=3, variant="openstl", channels=C, frame_size=(8, 8), in_len=2,
                       out_len=1, patch=2)
    randomize(net, 0.3)
    calls = []
    for cell in net.cells[1:]:
        cell.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(kwargs["below"]), with_kwargs=True)
    frames = torch.rand(2, 3, 1, 8, 8)
    _, s0 = net.step(frames[:, 0], None)
    _, s1 = net.step(frames[:, 1], s0)
    assert calls[0].lateral is None and calls[1].lateral is not None
    close(calls[3].lateral, s1.layers[1].lateral)           # step 2, layer 3 <- layer 2's new D
    assert s1.layers[1].lateral.abs().sum() > 0


# -- MotionGRU and MotionRNN -------------------------------------------------------------------
def test_uncentred_neighbourhood_warp_is_k2_plain_shifts():
    x = rand(2, 3, 6, 8)
    off = torch.zeros(2, 8, 6, 8)
    off[:, 0] = 1.0     # neighbour 0: dx = +1
    off[:, 3] = -2.0    # neighbour 1: dy = -2
    out = neighbourhood_warp(x, off, 2, centred=False)
    close(out[:, :, 0, :, :-1], x[..., 1:])
    assert out[:, :, 0, :, -1].abs().max() < 1e-6
    close(out[:, :, 1, 2:], x[:, :, :-2])
    close(out[:, :, 2], x)               # zero offsets: the map itself, not a shifted neighbour
    close(neighbourhood_warp(x, torch.zeros(2, 8, 6, 8), 2, centred=True)[:, :, 0, 1:, 1:], x[..., :-1, :-1])


def test_motiongru_msrnn_style_by_hand():
    mg = randomize(MotionGRU(8, kernel=3, style="msrnn"), 0.4)
    assert (mg.enc.kernel_size, mg.w_ur.kernel_size, mg.w_mask.kernel_size, mg.w_gate.kernel_size) == \
        ((2, 2), (1, 1), (1, 1), (1, 1)) and mg.mix.bias is not None
    x, f, d = rand(2, 8, 8, 8), rand(2, 18, 4, 4), rand(2, 18, 4, 4)
    out, f_new, d_new = mg(x, f, d)
    e = F.conv2d(x, mg.enc.weight, mg.enc.bias, stride=2)
    ur = sig(conv(torch.cat([e, f], 1), mg.w_ur))
    u, r = ur[:, :18], ur[:, 18:]
    z = tanh(conv(torch.cat([e, r * f], 1), mg.w_z))
    close(d_new, d + 0.5 * (f - d))
    close(f_new, u * z + (1 - u) * f + d_new)
    mask = sig(conv(e, mg.w_mask))                                             # (B, 9, 4, 4)
    samples = neighbourhood_warp(e, f_new, 3, centred=False) * mask.unsqueeze(1)  # (B, 2, 9, 4, 4)
    mixed = conv(samples.flatten(1, 2), mg.mix)         # channel c·9 + n: sample n of channel c
    dec = F.conv_transpose2d(mixed, mg.dec.weight, mg.dec.bias, stride=2, padding=1)
    g = sig(conv(torch.cat([dec, x], 1), mg.w_gate))
    close(out, g * dec + (1 - g) * x)


def block_o(cell, x, h, c_t, m_t):
    """The MIM block's output gate, by hand."""
    _, xo, *_ = in_blocks(cell.wx, x, cell.wx.out_channels // C)
    return sig(xo + rec_blocks(cell.uh, h)[1] + rec_blocks(cell.vc, c_t)[0] + rec_blocks(cell.vm, m_t)[0])


def test_motionrnn_msrnn_runs_block_then_motiongru_then_highway():
    cell = make("motionrnn", variant="msrnn", size=(6, 8))
    assert cell.motion.style == "msrnn" and cell.gating_products == 13
    x, m, direct = rand(2, C, *SIZE), rand(2, C, *SIZE), rand(2, C, *SIZE)
    mim = [rand(2, C, *SIZE) for _ in range(5)] + [rand(2, C, *SIZE)]
    f, d = rand(2, 18, 3, 4), rand(2, 18, 3, 4)
    state = cell.init_state(x)._replace(**dict(zip(("h", "c", "m", "n", "s", "prev_input"), mim)), f=f, d=d)
    h, new, _ = cell(x, state, m, below=Below(direct, None))
    hb, c_t, m_t, n_t, s_t, o = ref_mim_paper_block(cell, x, x - mim[5], mim, m)
    xm, f_ref, d_ref = cell.motion(hb, f, d)
    close(h, xm + (1 - o) * x)
    assert new.h is h                                   # MS-RNN feeds the post-MotionGRU h back
    for got, ref in zip((new.c, new.m, new.n, new.s, new.f, new.d), (c_t, m_t, n_t, s_t, f_ref, d_ref)):
        close(got, ref)
    assert torch.equal(new.prev_input, direct)


def test_motionrnn_thuml_feeds_back_the_post_motiongru_state_and_passes_the_highway():
    cell = make("motionrnn", variant="thuml", size=(6, 8))
    x, m, v = rand(2, C, *SIZE), rand(2, C, *SIZE), rand(2, C, *SIZE)
    mim = [rand(2, C, *SIZE) for _ in range(6)]
    f, d = rand(2, 18, 3, 4), rand(2, 18, 3, 4)
    state = cell.init_state(x)._replace(**dict(zip(("h", "c", "m", "n", "s", "prev_input"), mim)), f=f, d=d)
    h, new, _ = cell(x, state, m, below=Below(x, v))
    hb, c_t, m_t, *_, o = ref_mim_paper_block(cell, x, x - mim[5], mim, m)
    b = hb + (1 - o) * v                               # highway from the layer below's stream
    xm, f_ref, _ = cell.motion(b, f, d)
    close(h, xm)
    close(new.lateral, b)
    assert new.h is h
    # top layer: no MotionGRU, the highway-compensated block output
    top = make("motionrnn", variant="thuml", motion=False, size=(5, 8))
    assert top.motion is None and top.size_multiple == 1 and top.gating_products == 11
    x5 = rand(2, C, 5, 8)
    h5, s5, _ = top(x5, None, None, below=Below(x5, None))
    assert s5.f is None and torch.equal(s5.lateral, h5)
    # first layer: a 1x1 projection of a wider input (thuml's conv_first_v)
    first = make("motionrnn", cin=3, variant="thuml", memory="lstm")
    assert first.highway_in.weight.shape == (C, 3, 1, 1)
    x3 = rand(2, 3, *SIZE)
    out, s, _ = first(x3)
    xi, xo, xg, xi2, xf2, xg2, xf = in_blocks(first.wx, x3, 7)
    zeros = torch.zeros(2, C, *SIZE)
    c_t = sig(xi) * tanh(xg)
    m_t = sig(xi2) * tanh(xg2)
    o = sig(xo + rec_blocks(first.vc, c_t)[0] + rec_blocks(first.vm, m_t)[0])
    b = o * tanh(conv(torch.cat([c_t, m_t], 1), first.fuse)) + (1 - o) * conv(x3, first.highway_in)
    close(s.lateral, b)
    close(out, first.motion(b, zeros.new_zeros(2, 18, 3, 4), zeros.new_zeros(2, 18, 3, 4))[0])


def test_motionrnn_variant_errors():
    with pytest.raises(ValueError, match=r"in_channels \(3\) must equal channels"):
        create_cell("motionrnn", in_channels=3, channels=C, variant="msrnn")
    with pytest.raises(ValueError, match="motion=False"):
        create_cell("motionrnn", in_channels=C, channels=C, motion=False)
    with pytest.raises(ValueError, match="variant='x'"):
        create_cell("motionrnn", in_channels=C, channels=C, variant="x")
    with pytest.raises(ValueError, match="style='y'"):
        MotionGRU(C, style="y")


# -- presets: layouts, gradients, training, compile, costs --------------------------------------
TINY = {"channels": 8, "frame_size": (16, 16), "in_len": 3, "out_len": 2, "embed": "conv1x1"}
PRESETS = [("mim_net", "msrnn"), ("mim_net", "openstl"), ("motionrnn_net", "msrnn"), ("motionrnn_net", "thuml"),
           ("predrnnpp_net", "openstl"), ("predrnnpp_net", "msrnn")]


def test_preset_layouts():
    def layout(name, variant):
        net = create_model(name, layers=4, variant=variant, **TINY)
        return [(c.registry_name, getattr(c, "variant", None), getattr(c, "memory", None)) for c in net.cells]
    assert layout("mim_net", "openstl") == [("predrnn", None, None)] + [("mim", "openstl", "mim")] * 3
    assert layout("motionrnn_net", "msrnn") == [("motionrnn", "msrnn", "lstm"), ("motionrnn", "msrnn", "mim"),
                                                ("motionrnn", "msrnn", "mim"), ("mim", "msrnn", "mim")]
    assert layout("motionrnn_net", "thuml") == [("motionrnn", "thuml", "lstm")] + [("motionrnn", "thuml", "mim")] * 3
    net = create_model("motionrnn_net", layers=3, variant="thuml", **TINY)
    assert [c.motion is None for c in net.cells] == [False, False, True]
    # user layer_kw entries win over the preset's
    net = create_model("mim_net", layers=3, variant="msrnn", layer_kw=[{}, {"variant": "paper"}, {}], **TINY)
    assert [c.variant for c in net.cells[1:]] == ["paper", "msrnn"]
    with pytest.raises(ValueError, match="layer_kw has 1 entries for 3 layers"):
        create_model("mim_net", layers=3, layer_kw=[{}], **TINY)
    with pytest.raises(ValueError, match="variant='thuml'"):
        create_model("mim_net", variant="thuml", **TINY)


@pytest.mark.parametrize("name,variant", PRESETS)
@pytest.mark.parametrize("scales", [None, (1, 0.5, 0.5, 1)], ids=["flat", "ms"])
def test_reference_presets_reach_every_parameter(name, variant, scales):
    torch.manual_seed(0)
    # signed random weights (zero-initialised offset candidates would hide MotionGRU's u, r at step 0)
    model = randomize(create_model(name, layers=4, variant=variant, scales=scales, **TINY), 0.2)
    flat = create_model(name, layers=4, variant=variant, **TINY)
    if (name, variant) != ("mim_net", "openstl"):   # its per-position peepholes follow each layer's size
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in flat.parameters())
    pred = model(moving_square(steps=5), torch.ones(2, 4, dtype=torch.bool))
    F.mse_loss(pred.outputs, pred.targets).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


@pytest.mark.parametrize("name,variant,scales", [(n, v, (1, 0.5, 0.5, 1) if i % 2 == 0 else None)
                                                 for i, (n, v) in enumerate(PRESETS)])
def test_reference_presets_train(name, variant, scales):
    torch.manual_seed(0)
    model = create_model(name, layers=4, variant=variant, scales=scales, **TINY)
    losses = train_losses(model, moving_square(steps=5), torch.ones(2, 4, dtype=torch.bool), lr=3e-3, steps=30)
    # measured (seed 0, 30 steps): final/first 0.07-0.16 for every preset, flat and MS
    assert losses[-1] < 0.35 * losses[0], losses


@pytest.mark.parametrize("name,variant", PRESETS)
def test_reference_presets_trace_as_one_graph(name, variant):
    """Graph breaks only (backend 'eager'): the `below` plumbing and the variants' branches."""
    torch.manual_seed(0)
    model = create_model(name, layers=3, variant=variant, scales=(1, 0.5, 1), **{**TINY, "in_len": 2, "out_len": 1})
    frames = torch.rand(2, 2, 1, 16, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    close(compiled(frames).future, model(frames).future)


CELL_OPTIONS = [("predrnnpp", {"variant": "openstl"}), ("predrnnpp", {"highway": "input"}),
                ("mim", {"variant": "openstl"}), ("mim", {"memory": "lstm"}),
                ("motionrnn", {"variant": "msrnn"}), ("motionrnn", {"variant": "thuml", "memory": "lstm"}),
                ("motionrnn", {"variant": "thuml", "motion": False}), ("trajgru", {"candidate_bias": True})]


@pytest.mark.parametrize("variant", ["conv", "indconv", "ind"])
@pytest.mark.parametrize("name,kw", CELL_OPTIONS)
def test_reference_options_analytic_cost_equals_measured(name, kw, variant):
    cell = create_cell(name, in_channels=C, channels=C, recurrent=variant, size=(8, 8), **kw)
    got = cell_cost(cell, 8, 8, batch=2)
    assert got["mults"] == got["mults_measured"]
    assert got["params"] == sum(p.numel() for p in cell.parameters())


# -- the per-epoch reverse schedule (MS-RNN) ---------------------------------------------------
def msrnn_reverse(epoch, epochs):
    """MS-RNN's model.py, written out: epoch counted from 1, start E/3, end 2E/3, step (E/3)/5."""
    start, end, step = epochs / 3, epochs * 2 / 3, epochs / 3 / 5
    if epoch < start:
        return 0.5, 0.5
    if epoch < end:
        return 1.0 - 0.5 * math.exp(-(epoch - start) / step), 0.5 - 0.5 * (epoch - start) / (end - start)
    return 1.0, 0.0


def test_reverse_schedule_per_epoch_is_msrnns():
    s = create_schedule("reverse", step1=20 / 3, step2=40 / 3, alpha=20 / 15, unit="epoch")
    for epoch in range(20):                             # Lightning's current_epoch, 0-based
        for iteration in (0, 12_345):                   # the iteration does not matter
            got = s.probs(iteration, epoch)
            assert got == pytest.approx(msrnn_reverse(epoch + 1, 20), abs=1e-12)
    assert s.probs(0, 5) == (0.5, 0.5) and s.probs(0, 6)[0] > 0.5      # MS-RNN epoch 7 > 20/3
    per_iteration = ReverseScheduled(step1=100, step2=200, alpha=10)
    assert per_iteration.probs(150, 0) == per_iteration.probs(150, 99)   # epoch ignored
    with pytest.raises(ValueError, match="unit='week'"):
        ReverseScheduled(unit="week")
    with pytest.raises(ValueError, match="step1 < step2"):
        ReverseScheduled(step1=5, step2=5)


def test_training_passes_the_epoch_to_the_schedule(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader
    from convrnn.train import PredictionTask
    task = PredictionTask({"name": "stack", "cell": "convlstm", "layers": 1, "channels": 4, "frame_size": [16, 16],
                           "in_len": 2, "out_len": 2}, schedule={"name": "reverse", "step1": 1.5, "step2": 2.5,
                                                                 "alpha": 1.0, "unit": "epoch"})
    calls = []
    probs = task.schedule.probs
    task.schedule.probs = lambda it, ep=0: calls.append((it, ep)) or probs(it, ep)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(task, DataLoader(moving_square(batch=4, steps=4), batch_size=2))
    assert calls == [(0, 0), (1, 0), (2, 1), (3, 1)]
