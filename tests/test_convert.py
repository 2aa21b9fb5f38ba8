"""convrnn convert: OpenSTL and MS-RNN checkpoints onto convrnn networks (issue 15).

Each test builds a reference state dict with the reference code's key names and shapes (its published
architecture: OpenSTL's openstl/modules and openstl/models, MS-RNN's models/*.py and net_params.py),
small channels, random weights; converts it; and checks that the converted network computes what a
reference forward written here computes: each reference's equations, gate orders and layer loop
written out with F.conv2d on the reference keys (never calling convrnn).  Where the reference code
has a plain bug (MS-RNN's warps) the forward here computes the intended function, which is what the
conversion promises.  Then the files: OpenSTL's three checkpoint layouts, MS-RNN's DDP prefix, the
refusal of pickled objects, errors naming the problem, and ``convrnn test`` on a converted checkpoint."""
import argparse
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from convrnn.cli import main as cli
from convrnn.convert import ConversionError, convert_state_dict, load_reference
from convrnn.lightning_cli import cli_main
from convrnn.registry import model_from_config
from helpers import one_thread  # noqa: F401  (autouse fixture)

sig, tanh = torch.sigmoid, torch.tanh
C, K = 4, 3


def conv(x, p, key, stride=1, padding=None):
    w = p[f"{key}.weight"]
    pad = w.shape[-1] // 2 if padding is None else padding
    return F.conv2d(x, w, p.get(f"{key}.bias"), stride=stride, padding=pad)


def split(t, n):
    return t.chunk(n, 1)


def randn(*shape, g):
    return torch.randn(*shape, generator=g) * 0.3


def run_convrnn(net_cfg, state, frames, **extra):
    net = model_from_config({**net_cfg, **extra})
    net.load_state_dict(state, strict=True)
    net = net.double().eval()
    with torch.no_grad():
        return net(frames, torch.ones(frames.shape[0], frames.shape[1] - 1, dtype=torch.bool)).outputs


# == OpenSTL ==========================================================================================
def openstl_conv_keys(p, prefix, blocks_in, g, kernel=K, cin=C, cout=C):
    p[f"{prefix}.0.weight"] = randn(blocks_in * cout, cin, kernel, kernel, g=g)


def openstl_state(family, layers, patch_ch, g):
    """OpenSTL's model state dict (layer_norm=False: every conv is Sequential(Conv2d) -> '<name>.0.weight',
    no biases), built from openstl/modules/*_modules.py and openstl/models/*_model.py."""
    p = {}
    for l in range(layers):
        cin = patch_ch if l == 0 else C
        if family == "convlstm" or (family in ("predrnn", "predrnnv2")):
            pre = f"cell_list.{l}"
            if family == "convlstm":
                openstl_conv_keys(p, f"{pre}.conv_x", 4, g, cin=cin)
                openstl_conv_keys(p, f"{pre}.conv_h", 4, g)
                openstl_conv_keys(p, f"{pre}.conv_o", 1, g, cin=2 * C)        # built, never used
                p[f"{pre}.conv_last.weight"] = randn(C, 2 * C, 1, 1, g=g)      # built, never used
            else:
                openstl_conv_keys(p, f"{pre}.conv_x", 7, g, cin=cin)
                openstl_conv_keys(p, f"{pre}.conv_h", 4, g)
                openstl_conv_keys(p, f"{pre}.conv_m", 3, g)
                openstl_conv_keys(p, f"{pre}.conv_o", 1, g, cin=2 * C)
                p[f"{pre}.conv_last.weight"] = randn(C, 2 * C, 1, 1, g=g)
        elif family == "predrnnpp":
            pre = f"cell_list.{l}"
            openstl_conv_keys(p, f"{pre}.conv_x", 7, g, cin=cin)
            openstl_conv_keys(p, f"{pre}.conv_h", 4, g)
            openstl_conv_keys(p, f"{pre}.conv_c", 3, g)
            openstl_conv_keys(p, f"{pre}.conv_m", 3, g)
            openstl_conv_keys(p, f"{pre}.conv_o", 1, g, cin=2 * C)            # built, never used
            openstl_conv_keys(p, f"{pre}.conv_c2m", 4, g)
            openstl_conv_keys(p, f"{pre}.conv_om", 1, g)
            p[f"{pre}.conv_last.weight"] = randn(C, 2 * C, 1, 1, g=g)
        elif family == "mim":
            if l == 0:
                pre = "stlstm_layer.0"
                openstl_conv_keys(p, f"{pre}.conv_x", 7, g, cin=cin)
                openstl_conv_keys(p, f"{pre}.conv_h", 4, g)
                openstl_conv_keys(p, f"{pre}.conv_m", 3, g)
                openstl_conv_keys(p, f"{pre}.conv_o", 1, g, cin=2 * C)
                p[f"{pre}.conv_last.weight"] = randn(C, 2 * C, 1, 1, g=g)
            else:
                pre, diff = f"stlstm_layer.{l}", f"stlstm_layer_diff.{l - 1}"
                for key, n in (("conv_t_cc", 3), ("conv_s_cc", 4), ("conv_x_cc", 4), ("conv_h_concat", 4),
                               ("conv_x_concat", 4)):
                    openstl_conv_keys(p, f"{pre}.{key}", n, g)
                p[f"{pre}.conv_last.weight"] = randn(C, 2 * C, 1, 1, g=g)
                for key in ("conv_h_concat", "conv_x_concat"):
                    openstl_conv_keys(p, f"{diff}.{key}", 4, g)
                p[f"{diff}.conv_last.weight"] = randn(C, 2 * C, 1, 1, g=g)    # built, never used
                for m in (pre, diff):
                    p[f"{m}.ct_weight"] = randn(2 * C, 8, 8, g=g)
                    p[f"{m}.oc_weight"] = randn(C, 8, 8, g=g)
    if family == "predrnnpp":
        p["gradient_highway.z_concat.0.weight"] = randn(2 * C, C, K, K, g=g)
        p["gradient_highway.x_concat.0.weight"] = randn(2 * C, C, K, K, g=g)
    if family == "predrnnv2":
        p["adapter.weight"] = randn(C, C, 1, 1, g=g)
    p["conv_last.weight"] = randn(patch_ch, C, 1, 1, g=g)
    return p


def reshape_patch(frames, p):
    """OpenSTL's reshape_patch on (B, T, C, H, W): a patch's channel (py * p + px) * C + c."""
    b, t, c, h, w = frames.shape
    x = frames.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, t, p * p * c, h // p, w // p)


def reshape_patch_back(x, p, c):
    b, t, _, hp, wp = x.shape
    return x.reshape(b, t, p, p, c, hp, wp).permute(0, 1, 4, 5, 2, 6, 3).reshape(b, t, c, hp * p, wp * p)


def openstl_stlstm(p, pre, x, h, c, m):
    i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = split(conv(x, p, f"{pre}.conv_x.0"), 7)
    i_h, f_h, g_h, o_h = split(conv(h, p, f"{pre}.conv_h.0"), 4)
    i_m, f_m, g_m = split(conv(m, p, f"{pre}.conv_m.0"), 3)
    c = sig(f_x + f_h + 1.0) * c + sig(i_x + i_h) * tanh(g_x + g_h)
    m = sig(f_xp + f_m + 1.0) * m + sig(i_xp + i_m) * tanh(g_xp + g_m)
    mem = torch.cat([c, m], 1)
    o = sig(o_x + o_h + conv(mem, p, f"{pre}.conv_o.0"))
    return o * tanh(conv(mem, p, f"{pre}.conv_last", padding=0)), c, m


def openstl_convlstm(p, pre, x, h, c):
    i_x, f_x, g_x, o_x = split(conv(x, p, f"{pre}.conv_x.0"), 4)
    i_h, f_h, g_h, o_h = split(conv(h, p, f"{pre}.conv_h.0"), 4)
    c = sig(f_x + f_h) * c + sig(i_x + i_h) * tanh(g_x + g_h)
    return sig(o_x + o_h) * tanh(c), c


def openstl_causal(p, pre, x, h, c, m):
    i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = split(conv(x, p, f"{pre}.conv_x.0"), 7)
    i_h, f_h, g_h, o_h = split(conv(h, p, f"{pre}.conv_h.0"), 4)
    i_m, f_m, m_m = split(conv(m, p, f"{pre}.conv_m.0"), 3)
    i_c, f_c, g_c = split(conv(c, p, f"{pre}.conv_c.0"), 3)
    c = sig(f_x + f_h + f_c + 1.0) * c + sig(i_x + i_h + i_c) * tanh(g_x + g_h + g_c)
    i_c, g_c, f_c, o_c = split(conv(c, p, f"{pre}.conv_c2m.0"), 4)
    m = sig(f_xp + f_m + f_c + 1.0) * tanh(m_m) + sig(i_xp + i_m + i_c) * tanh(g_xp + g_c)
    o = tanh(o_x + o_h + o_c + conv(m, p, f"{pre}.conv_om.0"))
    return o * tanh(conv(torch.cat([c, m], 1), p, f"{pre}.conv_last", padding=0)), c, m


def openstl_ghu(p, x, z):
    pp, u = split(conv(x, p, "gradient_highway.x_concat.0") + conv(z, p, "gradient_highway.z_concat.0"), 2)
    u = sig(u)
    return u * tanh(pp) + (1 - u) * z


def openstl_lstm_module(p, pre, x, h, c):
    """MIMN / MIMS: i g f o from conv_h_concat(h) and conv_x_concat(x), peepholes ct_weight on c."""
    i_h, g_h, f_h, o_h = split(conv(h, p, f"{pre}.conv_h_concat.0"), 4)
    i_c, f_c = split(c.repeat(1, 2, 1, 1) * p[f"{pre}.ct_weight"], 2)
    i_x, g_x, f_x, o_x = split(conv(x, p, f"{pre}.conv_x_concat.0"), 4)
    c = sig(f_h + f_c + f_x + 1.0) * c + sig(i_h + i_c + i_x) * tanh(g_h + g_x)
    return sig(o_h + o_x + c * p[f"{pre}.oc_weight"]) * tanh(c), c


def openstl_mim_block(p, pre, x, diff_h, h, c, m, s):
    i_t, g_t, o_t = split(conv(h, p, f"{pre}.conv_t_cc.0"), 3)
    i_s, g_s, f_s, o_s = split(conv(m, p, f"{pre}.conv_s_cc.0"), 4)
    i_x, g_x, f_x, o_x = split(conv(x, p, f"{pre}.conv_x_cc.0"), 4)
    i, i_, g, g_ = sig(i_x + i_t), sig(i_x + i_s), tanh(g_x + g_t), tanh(g_x + g_s)
    o = sig(o_x + o_t + o_s)
    m = sig(f_x + f_s + 1.0) * m + i_ * g_
    t, s = openstl_lstm_module(p, pre, diff_h, c, s)     # MIMS(x=D, h_t=C, c_t=S)
    c = t + i * g
    return o * tanh(conv(torch.cat([c, m], 1), p, f"{pre}.conv_last", padding=0)), c, m, s


def openstl_forward(family, p, frames, layers, patch):
    """OpenSTL's *_Model.forward with mask_true all ones (teacher forcing) on reshape_patch'ed frames."""
    x_all = reshape_patch(frames, patch)
    b, t, _, hp, wp = x_all.shape
    z = lambda: x_all.new_zeros(b, C, hp, wp)        # noqa: E731
    h, c = [z() for _ in range(layers)], [z() for _ in range(layers)]
    m, zt = z(), z()
    diff_h, diff_c, s = [None] * layers, [None] * layers, [z() for _ in range(layers)]
    outs = []
    for step in range(t - 1):
        net = x_all[:, step]
        if family == "convlstm":
            for l in range(layers):
                h[l], c[l] = openstl_convlstm(p, f"cell_list.{l}", net if l == 0 else h[l - 1], h[l], c[l])
        elif family in ("predrnn", "predrnnv2"):
            for l in range(layers):
                h[l], c[l], m = openstl_stlstm(p, f"cell_list.{l}", net if l == 0 else h[l - 1], h[l], c[l], m)
        elif family == "predrnnpp":
            h[0], c[0], m = openstl_causal(p, "cell_list.0", net, h[0], c[0], m)
            zt = openstl_ghu(p, h[0], zt)
            h[1], c[1], m = openstl_causal(p, "cell_list.1", zt, h[1], c[1], m)
            for l in range(2, layers):
                h[l], c[l], m = openstl_causal(p, f"cell_list.{l}", h[l - 1], h[l], c[l], m)
        else:   # MIM
            preh = h[0]
            h[0], c[0], m = openstl_stlstm(p, "stlstm_layer.0", net, h[0], c[0], m)
            for l in range(1, layers):
                if step > 0:
                    u = h[l - 1] - preh if l == 1 else diff_h[l - 2]
                    dh = diff_h[l - 1] if diff_h[l - 1] is not None else z()
                    dc = diff_c[l - 1] if diff_c[l - 1] is not None else z()
                    diff_h[l - 1], diff_c[l - 1] = openstl_lstm_module(p, f"stlstm_layer_diff.{l - 1}", u, dh, dc)
                d = diff_h[l - 1] if diff_h[l - 1] is not None else z()
                h[l], c[l], m, s[l] = openstl_mim_block(p, f"stlstm_layer.{l}", h[l - 1], d, h[l], c[l], m, s[l])
        outs.append(F.conv2d(h[-1], p["conv_last.weight"]))
    return reshape_patch_back(torch.stack(outs, 1), patch, frames.shape[2])


OPENSTL_NETS = {
    "convlstm": {"name": "stack", "cell": "convlstm"},
    "predrnn": {"name": "stack", "cell": "predrnn"},
    "predrnnv2": {"name": "predrnnv2_net"},
    "predrnnpp": {"name": "predrnnpp_net", "variant": "openstl"},
    "mim": {"name": "mim_net", "variant": "openstl"},
}


@pytest.mark.parametrize("frame_channels", [1, 2], ids=["C1", "C2"])
@pytest.mark.parametrize("family", sorted(OPENSTL_NETS))
def test_openstl_checkpoints_compute_openstls_function(family, frame_channels):
    g = torch.Generator().manual_seed(1)
    layers, patch = 3, 2
    ref = openstl_state(family, layers, patch * patch * frame_channels, g)
    net = {**OPENSTL_NETS[family], "layers": layers, "channels": C, "kernel": K, "patch": patch, "embed": "patch",
           "frame_channels": frame_channels, "frame_size": [16, 16], "in_len": 3, "out_len": 2}
    state, report = convert_state_dict("openstl", ref, model_from_config(net))
    frames = torch.rand(2, 5, frame_channels, 16, 16, generator=g, dtype=torch.float64)
    got = run_convrnn(net, state, frames)
    want = openstl_forward(family, {k: v.double() for k, v in ref.items()}, frames, layers, patch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)   # float32 weights, biases summed in float32
    dropped = {"convlstm": 2 * layers, "predrnnpp": layers, "mim": layers - 1}.get(family, 0)
    assert len(report["dropped"]) == dropped, report["dropped"]


# == MS-RNN ===========================================================================================
def msrnn_conv(p, key, cin, cout, kernel, g, bias=True, transposed=False):
    p[f"{key}.weight"] = randn(*((cin, cout) if transposed else (cout, cin)), kernel, kernel, g=g)
    if bias:
        p[f"{key}.bias"] = randn(cout, g=g)


MIM_CONVS = [("_conv_x2h_n", 3), ("_conv_n2h_n", 3), ("_conv_diff2o", 1), ("_conv_n2o", 1), ("_conv_x2h_s", 4),
             ("_conv_c2h_s", 4), ("_conv_s2o", 1), ("_conv_x2h", 4), ("_conv_h2h", 4), ("_conv_c2o", 1),
             ("_conv_x2h_m", 3), ("_conv_m2h_m", 3), ("_conv_m2o", 1)]


def msrnn_state(family, layers, g, links=3, C=C):
    """MS-RNN's Model state dict (main.py wraps it in DistributedDataParallel: 'module.' prefix): embed
    'conv_embed' and fc 'conv_fc' (1x1, bias), the rnn's cells under 'rnns.lstm.{l}', every Conv2d biased
    (cfg.LSTM_conv = nn.Conv2d), from models/*.py and net_params.py."""
    p = {}
    for l in range(layers):
        pre = f"rnns.lstm.{l}"
        if family == "convlstm":
            msrnn_conv(p, f"{pre}._conv_x2h", C, 4 * C, K, g)
            msrnn_conv(p, f"{pre}._conv_h2h", C, 4 * C, K, g)
        elif family == "trajgru":
            msrnn_conv(p, f"{pre}._conv_x2h", C, 3 * C, K, g)
            msrnn_conv(p, f"{pre}._conv_x2f", C, C, K, g)
            msrnn_conv(p, f"{pre}._conv_h2f", C, C, K, g)
            msrnn_conv(p, f"{pre}._conv_flow", C, 2 * links, K, g)
            msrnn_conv(p, f"{pre}.project", C * links, 3 * C, 1, g)
        elif family in ("predrnn", "predrnnv2"):
            for key, n in (("_conv_x2h", 4), ("_conv_h2h", 4), ("_conv_c2o", 1), ("_conv_x2h_m", 3),
                           ("_conv_m2h_m", 3), ("_conv_m2o", 1)):
                msrnn_conv(p, f"{pre}.{key}", C, n * C, K, g)
            msrnn_conv(p, f"{pre}._conv_c_m", 2 * C, C, 1, g)
        elif family == "predrnnpp":
            msrnn_conv(p, f"{pre}._conv_x_h_c", 3 * C, 3 * C, K, g)
            msrnn_conv(p, f"{pre}._conv_x_c_m", 3 * C, 3 * C, K, g)
            msrnn_conv(p, f"{pre}._conv_m", C, C, 1, g)
            msrnn_conv(p, f"{pre}._conv_o", 3 * C, C, K, g)
            msrnn_conv(p, f"{pre}._conv_c_m", 2 * C, C, 1, g)
            msrnn_conv(p, f"{pre}._conv_x", C, 2 * C, K, g)     # every cell builds a GHU
            msrnn_conv(p, f"{pre}._conv_z", C, 2 * C, K, g)
        elif family in ("mim", "motionrnn"):
            for key, n in MIM_CONVS:
                msrnn_conv(p, f"{pre}.{key}", C, n * C, K, g)
            msrnn_conv(p, f"{pre}._conv_c_m", 2 * C, C, 1, g)
            if family == "motionrnn":
                e, o, n = C // 4, 18, 9
                msrnn_conv(p, f"{pre}._conv_enc", C, e, 2, g)
                for key in ("_conv_u", "_conv_r", "_conv_z"):
                    msrnn_conv(p, f"{pre}.{key}", e + o, o, 1, g)
                msrnn_conv(p, f"{pre}._conv_hm", e, n, 1, g)
                msrnn_conv(p, f"{pre}._conv_dec", e * n, e, 1, g)
                msrnn_conv(p, f"{pre}._deconv_dec", e, C, 4, g, transposed=True)
                msrnn_conv(p, f"{pre}._conv_g", 2 * C, C, 1, g)
    if family == "predrnnv2":
        msrnn_conv(p, "rnns.adapter", C, C, 1, g)
    msrnn_conv(p, "embed.conv_embed", 1, C, 1, g)
    msrnn_conv(p, "fc.conv_fc", C, 1, 1, g)
    return {f"module.{k}": v for k, v in p.items()}


def exact_warp(x, flow):
    """What MS-RNN's warp(input, flow) means: sample x at (j + flow_x, i + flow_y), bilinear, zeros outside
    (grid_sample with align_corners=True, where -1 .. 1 spans pixel centres 0 .. W-1: exact; MS-RNN
    normalises the same way but passes align_corners=False, a sub-pixel shift)."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / (w - 1) - 1
    gy = 2 * (ys + flow[:, 1]) / (h - 1) - 1
    return F.grid_sample(x, torch.stack([gx, gy], -1), align_corners=True)


def msrnn_cell(family, p, pre, x, m, hid, l, xt_1=None, links=3, top=False):
    """One MS-RNN cell step (its models/<family>.py), returning (output, m, hiddens)."""
    z = torch.zeros_like(x)
    if family == "convlstm":
        h, c = hid if hid is not None else (z, z)
        i, f, gg, o = split(conv(x, p, f"{pre}._conv_x2h") + conv(h, p, f"{pre}._conv_h2h"), 4)
        c = sig(f) * c + sig(i) * tanh(gg)
        h = sig(o) * tanh(c)
        return h, m, (h, c)
    if family == "trajgru":
        h = hid if hid is not None else z
        flows = conv(F.leaky_relu(conv(x, p, f"{pre}._conv_x2f") + conv(h, p, f"{pre}._conv_h2f"), 0.2), p,
                     f"{pre}._conv_flow").chunk(links, 1)
        warped = torch.cat([exact_warp(h, -f) for f in flows], 1)
        zx, rx, hx = split(conv(x, p, f"{pre}._conv_x2h"), 3)
        zh, rh, hh = split(conv(warped, p, f"{pre}.project", padding=0), 3)
        zg, rg = sig(zx + zh), sig(rx + rh)
        h = (1 - zg) * F.leaky_relu(hx + rg * hh, 0.2) + zg * h
        return h, m, h
    m = z if m is None else m
    if family in ("predrnn", "predrnnv2"):
        h, c = hid if hid is not None else (z, z)
        i, f, gg, o = split(conv(x, p, f"{pre}._conv_x2h") + conv(h, p, f"{pre}._conv_h2h"), 4)
        c = sig(f) * c + sig(i) * tanh(gg)
        im, fm, gm = split(conv(x, p, f"{pre}._conv_x2h_m") + conv(m, p, f"{pre}._conv_m2h_m"), 3)
        m = sig(fm) * m + sig(im) * tanh(gm)
        o = sig(o + conv(c, p, f"{pre}._conv_c2o") + conv(m, p, f"{pre}._conv_m2o"))
        h = o * tanh(conv(torch.cat([c, m], 1), p, f"{pre}._conv_c_m", padding=0))
        return h, m, (h, c)
    if family == "predrnnpp":
        h, c, zz = hid if hid is not None else (z, z, z)
        if l == 1:
            pp, s = split(conv(x, p, f"{pre}._conv_x") + conv(zz, p, f"{pre}._conv_z"), 2)
            s = sig(s)
            zz = x = s * tanh(pp) + (1 - s) * zz
        i, f, gg = split(conv(torch.cat([x, h, c], 1), p, f"{pre}._conv_x_h_c"), 3)
        c = sig(f) * c + sig(i) * tanh(gg)
        im, fm, gm = split(conv(torch.cat([x, c, m], 1), p, f"{pre}._conv_x_c_m"), 3)
        m = sig(fm) * tanh(conv(m, p, f"{pre}._conv_m", padding=0)) + sig(im) * tanh(gm)
        o = tanh(conv(torch.cat([x, c, m], 1), p, f"{pre}._conv_o"))
        h = o * tanh(conv(torch.cat([c, m], 1), p, f"{pre}._conv_c_m", padding=0))
        return h, m, (h, c, zz)
    # MIM and MotionRNN cells
    if hid is None:
        h = c = n = s = z
        fo = do = x.new_zeros(x.shape[0], 18, x.shape[2] // 2, x.shape[3] // 2)
    else:
        h, c, n, s, *fd = hid
        fo, do = fd if fd else (None, None)
    xt_1 = z if xt_1 is None else xt_1
    delta = x - xt_1
    i_n, f_n, g_n = split(conv(delta, p, f"{pre}._conv_x2h_n") + conv(n, p, f"{pre}._conv_n2h_n"), 3)
    n = sig(f_n) * n + sig(i_n) * tanh(g_n)
    dd = sig(conv(delta, p, f"{pre}._conv_diff2o") + conv(n, p, f"{pre}._conv_n2o")) * tanh(n)
    i_s, f_s, g_s, o_s = split(conv(dd, p, f"{pre}._conv_x2h_s") + conv(c, p, f"{pre}._conv_c2h_s"), 4)
    s = sig(f_s) * s + sig(i_s) * tanh(g_s)
    tt = sig(o_s + conv(s, p, f"{pre}._conv_s2o")) * tanh(s)
    i, f, gg, o = split(conv(x, p, f"{pre}._conv_x2h") + conv(h, p, f"{pre}._conv_h2h"), 4)
    c = sig(f) * c + sig(i) * tanh(gg) if l == 0 else tt + sig(i) * tanh(gg)
    im, fm, gm = split(conv(x, p, f"{pre}._conv_x2h_m") + conv(m, p, f"{pre}._conv_m2h_m"), 3)
    m = sig(fm) * m + sig(im) * tanh(gm)
    o = sig(o + conv(c, p, f"{pre}._conv_c2o") + conv(m, p, f"{pre}._conv_m2o"))
    h = o * tanh(conv(torch.cat([c, m], 1), p, f"{pre}._conv_c_m", padding=0))
    if family == "mim":
        return h, m, (h, c, n, s)
    xg, fo, do = msrnn_motiongru(p, pre, h, fo, do)
    if not top:
        h = xg + (1 - o) * x
    return h, m, (h, c, n, s, fo, do)


def msrnn_motiongru(p, pre, hh, ff, dd, k=3):
    e = conv(hh, p, f"{pre}._conv_enc", stride=2, padding=0)
    u = sig(conv(torch.cat([e, ff], 1), p, f"{pre}._conv_u"))
    r = sig(conv(torch.cat([e, ff], 1), p, f"{pre}._conv_r"))
    zc = tanh(conv(torch.cat([e, r * ff], 1), p, f"{pre}._conv_z"))
    d_new = dd + 0.5 * (ff - dd)
    f_new = u * zc + (1 - u) * ff + d_new
    mask = sig(conv(e, p, f"{pre}._conv_hm")).permute(0, 2, 3, 1).unsqueeze(1)          # b 1 h w k²
    b, _, hh2, ww2 = f_new.shape
    flows = f_new.view(b, k * k, 2, hh2, ww2)      # per sample (MS-RNN's reshape mixes batch and neighbours)
    warped = torch.stack([exact_warp(e, flows[:, i]) for i in range(k * k)], -1)      # b c h w k²
    # channel c·k² + n, as MS-RNN's comment says; its reshape of (b, c, h, w, k²) to (b, -1, h, w) without
    # moving k² first mixes pixel positions with neighbour samples (a bug)
    hw = (mask * warped).permute(0, 1, 4, 2, 3).reshape(b, -1, hh2, ww2)
    dec = F.conv_transpose2d(conv(hw, p, f"{pre}._conv_dec"), p[f"{pre}._deconv_dec.weight"],
                             p[f"{pre}._deconv_dec.bias"], stride=2, padding=1)
    gg = sig(conv(torch.cat([dec, hh], 1), p, f"{pre}._conv_g"))
    return gg * hh + (1 - gg) * dec, f_new, d_new


def msrnn_forward(family, p, frames, layers, ms, links=3):
    """MS-RNN's Model.forward (teacher forcing: every input a true frame) over its rnn's forward: the flat
    models (models/<family>.py) or the MS pyramid (models/ms_<family>.py: MaxPool2d(2) after layers
    1, 2; bilinear x2 before layers 5, 6 with the skips out[1], out[0]; M the same without skips; the
    MIM/MotionRNN difference term xt_1 = the layer below's output at t-1, resampled the same way)."""
    p = {k[len("module."):]: v for k, v in p.items()}
    down = lambda t: F.max_pool2d(t, 2)                                        # noqa: E731
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    hiddens, m, outs = None, None, []
    for t in range(frames.shape[1] - 1):
        x = conv(frames[:, t], p, "embed.conv_embed")
        new, out = [], []
        for l in range(layers):
            xt_1 = None
            if hiddens is not None and l > 0 and family in ("mim", "motionrnn"):
                xt_1 = hiddens[l - 1][0]
                if ms:
                    xt_1 = down(xt_1) if l in (1, 2) else up(xt_1) if l in (4, 5) else xt_1
            x, m, hid = msrnn_cell(family, p, f"rnns.lstm.{l}", x, m, hiddens[l] if hiddens else None, l, xt_1,
                                   links, top=l == layers - 1)
            out.append(x)
            new.append(hid)
            if ms and l in (0, 1):
                x, m = down(x), (down(m) if m is not None else None)
            elif ms and l in (3, 4):
                x, m = up(x) + out[4 - l], (up(m) if m is not None else None)
        hiddens = new
        outs.append(conv(x, p, "fc.conv_fc"))
    return torch.stack(outs, 1)


MSRNN_NETS = {
    "convlstm": {"name": "stack", "cell": "convlstm"},
    "trajgru": {"name": "stack", "cell": "trajgru", "cell_kw": {"links": 3, "flow_channels": C, "flow_kernel": K,
                                                                 "candidate_bias": True}},
    "predrnn": {"name": "stack", "cell": "predrnn", "cell_kw": {"forget_bias": 0}},
    "predrnnv2": {"name": "predrnnv2_net", "cell_kw": {"forget_bias": 0}},
    "predrnnpp": {"name": "predrnnpp_net", "variant": "msrnn", "cell_kw": {"forget_bias": 0}},
    "mim": {"name": "mim_net", "variant": "msrnn", "cell_kw": {"forget_bias": 0}},
    "motionrnn": {"name": "motionrnn_net", "variant": "msrnn", "cell_kw": {"forget_bias": 0}},
}
UNUSED = {"predrnnpp": lambda L: 2 * 2 * (L - 1),                  # the GHU weight + bias of every layer but 2
          "mim": lambda L: 14 + 2 * (L - 1),                      # layer 1's MIM-N/S; forget blocks above
          "motionrnn": lambda L: 14 + 2 * (L - 1) + 16,            # ... and the top layer's MotionGRU
          "predrnnv2": lambda L: 1}                                # the adapter's bias


@pytest.mark.parametrize("ms", [False, True], ids=["flat", "ms"])
@pytest.mark.parametrize("family", sorted(MSRNN_NETS))
def test_msrnn_checkpoints_compute_msrnns_function(family, ms):
    g = torch.Generator().manual_seed(2)
    layers = 6 if ms else 3
    ref = msrnn_state(family, layers, g)
    net = {**MSRNN_NETS[family], "layers": layers, "channels": C, "kernel": K, "patch": 1, "embed": "conv1x1",
           "frame_size": [16, 16], "in_len": 3, "out_len": 2}
    if ms:
        net["scales"] = [1, 0.5, 0.25, 0.25, 0.5, 1]
    state, report = convert_state_dict("msrnn", ref, model_from_config(net))
    frames = torch.rand(2, 5, 1, 16, 16, generator=g, dtype=torch.float64)
    got = run_convrnn(net, state, frames)
    want = msrnn_forward(family, {k: v.double() for k, v in ref.items()}, frames, layers, ms)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)   # float32 weights, biases summed in float32
    assert len(report["dropped"]) == UNUSED.get(family, lambda L: 0)(layers), report["dropped"]
    assert bool(report["notes"]) == (family in ("trajgru", "motionrnn"))   # the warp bugs are not reproduced


# == files, errors and the command ======================================================================
def small_msrnn_convlstm(g):
    return msrnn_state("convlstm", 2, g)


NET = {"name": "stack", "cell": "convlstm", "layers": 2, "channels": C, "kernel": K, "patch": 1,
       "embed": "conv1x1", "frame_size": [16, 16], "in_len": 3, "out_len": 2}


def write_config(tmp_path, net=NET):
    import yaml
    cfg = {"seed_everything": 1,
           "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                       "enable_model_summary": False},
           "model": {"net": net, "loss": "l1+l2"},
           "data": {"class_path": "test_convert.Frames", "init_args": {"batch_size": 2}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Frames(L.LightningDataModule):
    """4 fixed test sequences of 5 random 16x16 frames."""

    def __init__(self, batch_size: int = 2):
        super().__init__()
        self.batch_size = batch_size

    def test_dataloader(self):
        return DataLoader(test_frames(), batch_size=self.batch_size)


def test_frames():
    return torch.rand(4, 5, 1, 16, 16, generator=torch.Generator().manual_seed(7))


def test_convert_command_writes_a_checkpoint_that_convrnn_test_evaluates(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    ref = small_msrnn_convlstm(g)
    src = tmp_path / "epoch_20.pth"
    torch.save(ref, src)                               # MS-RNN: torch.save(model.state_dict()) of the DDP model
    cfg, out = write_config(tmp_path), tmp_path / "converted.ckpt"
    assert cli(["convert", "--from", "msrnn", str(src), "--config", str(cfg), "--output", str(out)]) == 0
    assert "convrnn test --config" in capsys.readouterr().out
    ckpt = torch.load(out, weights_only=True)
    assert all(k.startswith("net.") for k in ckpt["state_dict"]) and ckpt["hyper_parameters"]["net"] == NET
    runs = tmp_path / "runs"
    assert cli_main(["test", "--config", str(cfg), "--ckpt_path", str(out), "--run_dir", str(runs)]) == 0
    metrics = json.loads(next(runs.glob("*/*/metrics.json")).read_text())
    # the reference forward, free running on the same 4 sequences: MSE summed per frame, mean over frames
    frames = test_frames().double()
    p = {k: v.double() for k, v in ref.items()}
    seq = frames[:, :3]
    for _ in range(2):
        pred = msrnn_forward("convlstm", p, torch.cat([seq, seq[:, -1:]], 1), 2, False)[:, -1:]
        seq = torch.cat([seq, pred], 1)
    mse = (seq[:, 3:] - frames[:, 3:]).square().sum((2, 3, 4)).mean()
    assert metrics["mse"] == pytest.approx(mse.item(), rel=1e-5) and metrics["checkpoint"] == str(out)
    # an existing output is never replaced silently
    assert cli(["convert", "--from", "msrnn", str(src), "--config", str(cfg), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_openstl_file_layouts_load_the_same_weights(tmp_path):
    g = torch.Generator().manual_seed(4)
    ref = openstl_state("predrnn", 2, 4, g)
    layouts = {"checkpoint.pth": ref,                                            # model zoo: the bare state dict
               "latest.pth": {"epoch": 3, "state_dict": ref, "optimizer": {"state": {}, "param_groups": []},
                              "scheduler": {"last_epoch": 3}},                   # OpenSTL's _save()
               "last.ckpt": {"state_dict": {f"model.{k}": v for k, v in ref.items()}, "epoch": 3,
                             "hyper_parameters": {"method": "predrnn", "lr": 1e-3}}}   # Lightning: self.model
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        loaded = load_reference(tmp_path / name)
        assert loaded.keys() == ref.keys() and all(torch.equal(loaded[k], ref[k]) for k in ref)


def test_a_file_with_pickled_objects_is_refused_with_instructions(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(ConversionError, match="holds more than tensors") as err:
        load_reference(path)
    assert "weights_only=False" in str(err.value) and "trust" in str(err.value)
    torch.save({"epoch": 1}, tmp_path / "no_weights.pth")
    with pytest.raises(ConversionError, match="holds no state dict"):
        load_reference(tmp_path / "no_weights.pth")
    with pytest.raises(ConversionError, match="not found"):
        load_reference(tmp_path / "missing.pth")


def test_mismatches_are_errors_that_name_the_keys():
    g = torch.Generator().manual_seed(5)
    net = model_from_config(NET)
    ref = small_msrnn_convlstm(g)
    missing = {k: v for k, v in ref.items() if "lstm.1._conv_h2h.weight" not in k}
    with pytest.raises(ConversionError, match=r"lacks 1 tensor.*rnns\.lstm\.1\._conv_h2h\.weight"):
        convert_state_dict("msrnn", missing, net)
    extra = {**ref, "module.rnns.lstm.2._conv_x2h.weight": torch.zeros(16, 4, 3, 3)}
    with pytest.raises(ConversionError, match=r"no place for: rnns\.lstm\.2\._conv_x2h\.weight"):
        convert_state_dict("msrnn", extra, net)
    wide = model_from_config({**NET, "kernel": 5})
    with pytest.raises(ConversionError, match=r"cells\.0\.wx\.weight: the reference gives shape \(16, 4, 3, 3\)"):
        convert_state_dict("msrnn", ref, wide)
    with pytest.raises(ConversionError, match="recurrent: conv"):
        convert_state_dict("msrnn", ref, model_from_config({**NET, "cell_kw": {"recurrent": "indconv"},
                                                            "frame_size": [16, 16]}))
    with pytest.raises(ConversionError, match="embed: conv1x1 and patch: 1"):
        convert_state_dict("msrnn", ref, model_from_config({**NET, "embed": "patch", "patch": 2}))


def test_configs_that_miss_the_reference_form_are_told_which_to_use():
    g = torch.Generator().manual_seed(6)
    base = {"channels": C, "kernel": K, "patch": 1, "embed": "conv1x1", "frame_size": [16, 16], "in_len": 3,
            "out_len": 2, "layers": 3}
    cases = [("trajgru", {"name": "stack", "cell": "trajgru", "cell_kw": {"links": 3, "flow_channels": C,
                                                                             "flow_kernel": K}}, "candidate_bias"),
             ("predrnnpp", {"name": "predrnnpp_net"}, "variant: msrnn"),
             ("mim", {"name": "mim_net"}, "variant: msrnn")]
    for family, net, hint in cases:
        with pytest.raises(ConversionError, match=hint):
            convert_state_dict("msrnn", msrnn_state(family, 3, g), model_from_config({**base, **net}))
    with pytest.raises(ConversionError, match="variant: openstl"):
        convert_state_dict("openstl", openstl_state("mim", 3, 4, g),
                           model_from_config({**base, "name": "mim_net", "embed": "patch", "patch": 2}))
    ln = openstl_state("predrnn", 2, 4, g)
    ln["cell_list.0.conv_x.1.weight"] = torch.ones(7 * C, 8, 8)
    with pytest.raises(ConversionError, match="layer_norm=True"):
        convert_state_dict("openstl", ln, model_from_config({**base, "name": "stack", "cell": "predrnn",
                                                             "layers": 2, "embed": "patch", "patch": 2}))
    with pytest.raises(ConversionError, match="PrecipLSTM does not convert"):
        convert_state_dict("msrnn", {"module.x": torch.zeros(1)}, model_from_config({**base, "name": "stack",
                                                                                      "cell": "preciplstm",
                                                                                      "cell_kw": {"neighbourhood": 3}}))


def test_the_reference_configs_build_the_networks_the_converter_expects(tmp_path):
    """Every configs/openstl and configs/msrnn config that has a converter passes the network checks
    (a shape-only run: the 64x64 6 x 64 networks, weights of the reference's shapes)."""
    from helpers import load_config
    g = torch.Generator().manual_seed(8)
    for stem, family in (("predrnnpp", "predrnnpp"), ("mim", "mim"), ("ms_motionrnn", "motionrnn"),
                         ("trajgru", "trajgru"), ("ms_predrnnv2", "predrnnv2")):
        net = model_from_config(load_config("msrnn", stem)["model"]["net"])
        # MS-RNN's 6 x 64 model (cfg.lstm_hidden_state = 64, cfg.TrajGRU_link_num = 10)
        state, _ = convert_state_dict("msrnn", msrnn_state(family, 6, g, links=10, C=64), net)
        net.load_state_dict(state)
