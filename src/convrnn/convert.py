"""Import OpenSTL and MS-RNN checkpoints into convrnn networks.

    convrnn convert --from openstl|msrnn CHECKPOINT --config CONFIG.yaml --output OUT.ckpt

reads a reference checkpoint (OpenSTL's model-zoo ``checkpoint.pth``, its ``latest.pth`` or Lightning
``.ckpt``; MS-RNN's saved ``epoch_N.pth``), maps its tensors onto the network of CONFIG (the reference
configs in ``configs/openstl`` and ``configs/msrnn`` select the reference forms: docs/references.md)
and writes a Lightning checkpoint of :class:`~convrnn.train.PredictionTask` that ``convrnn test
--config CONFIG.yaml --ckpt_path OUT.ckpt`` evaluates.

The mapping is exact: gates reordered (each reference fuses its gates in its own order), fused and
split convolutions concatenated or cut along their channels, biases of convolutions that add up merged
into one (MS-RNN biases every convolution; convrnn keeps one bias per block), constant forget biases
folded into trainable ones (OpenSTL adds 1.0 to f and f'), OpenSTL's patch channel order permuted
(``reshape_patch`` orders a patch's channels pixel-major, ``pixel_unshuffle`` channel-major),
TrajGRU's flow negated (both codes warp by -flow) and MotionGRU's gate negated (MS-RNN mixes
g H + (1 - g) Dec, convrnn g Dec + (1 - g) H).  Tensors the reference builds but never uses are
reported and dropped; any other missing or extra key, or a shape that differs, is an error naming it.

Where the reference code has a plain bug it is not reproduced, so the converted network computes the
intended function: MS-RNN's TrajGRU and MotionGRU warps (a sub-pixel shift from a (W - 1)
normalisation), MotionGRU's offsets reshaped across the batch and its warped samples flattened across
pixel positions.  Those conversions are reported as such.

Checkpoint files come from the internet: they are read with ``torch.load(weights_only=True)``, which
never runs code from the file; a file that holds more than tensors and plain containers is refused
with the steps to extract its weights.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

SOURCES = ("openstl", "msrnn")
PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


class ConversionError(ValueError):
    """The checkpoint cannot be mapped onto the configured network (the message says why and what to do)."""


# -- reading the reference file --------------------------------------------------------------------
def load_reference(path: str | Path) -> dict[str, Tensor]:
    """The reference state dict of a checkpoint file, read with ``weights_only=True`` (no code from
    the file runs).  Accepts a bare state dict or a dict holding one under ``state_dict`` (OpenSTL's
    ``latest.pth``, Lightning ``.ckpt``); strips the ``module.`` (DistributedDataParallel), ``model.``
    (Lightning) and ``_orig_mod.`` (torch.compile) prefixes."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint file {str(path)!r} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path} holds more than tensors (Python objects that torch.load(weights_only=True) refuses to "
            f"unpickle: {str(e).splitlines()[0][:200]}).  Loading it would run code from the file.  If you trust "
            "its source, extract the weights in a separate environment:\n"
            f"  python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save(c.get('state_dict', c), '{path.stem}.weights.pt')\"\n"
            "and convert the .weights.pt file.") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path} holds no state dict (a mapping of names to tensors, or a dict with one "
                              f"under 'state_dict'); top-level keys: {sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__}")
    return strip_prefixes(state)


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes shared by every key (``module.``, ``model.``, ...), repeatedly."""
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


class Reader:
    """The reference tensors, handed out by key; remembers which were used and which were dropped
    as unused by the reference itself (with the reason)."""

    def __init__(self, state: dict[str, Tensor]):
        self.state = {k: v.detach().float() for k, v in strip_prefixes(state).items() if v.is_floating_point()}
        self.used: set[str] = set()
        self.dropped: dict[str, str] = {}
        self.missing: list[str] = []

    def __call__(self, key: str) -> Tensor:
        if key not in self.state:
            self.missing.append(key)
            return torch.zeros(0)
        self.used.add(key)
        return self.state[key]

    def has(self, key: str) -> bool:
        return key in self.state

    def opt(self, key: str) -> Tensor | None:
        """An optional tensor (a bias some reference convolutions have and others not)."""
        return self(key) if key in self.state else None

    def drop(self, prefix: str, reason: str) -> None:
        """Mark every tensor under ``prefix`` as built by the reference but unused by its forward."""
        for k in self.state:
            if (k == prefix or k.startswith(prefix + ".")) and k not in self.used:
                self.dropped[k] = reason

    def leftover(self) -> list[str]:
        return sorted(set(self.state) - self.used - set(self.dropped))


# -- block algebra -----------------------------------------------------------------------------------
def blocks(t: Tensor, have: str, want: str, dim: int = 0) -> Tensor:
    """The equal blocks of ``t`` along ``dim``, named one letter each in ``have`` (the reference's gate
    order), rearranged to ``want`` (blocks not in ``want`` are left out)."""
    if t.numel() == 0:
        return t
    if t.shape[dim] % len(have):
        raise ConversionError(f"cannot cut a tensor of shape {tuple(t.shape)} into the {len(have)} blocks {have!r}")
    parts = dict(zip(have, t.chunk(len(have), dim)))
    return torch.cat([parts[b] for b in want], dim)


def total(*biases: Tensor | None) -> Tensor | None:
    """Sum of the biases that exist (convolutions whose outputs are added share one bias)."""
    given = [b for b in biases if b is not None and b.numel()]
    return sum(given[1:], given[0]) if given else None


def fill(like: Tensor, value: float, forget: dict[int, float] | None = None, channels: int | None = None) -> Tensor:
    """A constant bias, with some C-channel blocks set to other constants (folded forget biases)."""
    out = torch.full_like(like, value)
    for block, v in (forget or {}).items():
        out[block * channels:(block + 1) * channels] = v
    return out


# -- the target ---------------------------------------------------------------------------------------
class Writer:
    """The convrnn state dict being built; checks every key and shape against the network."""

    def __init__(self, net: nn.Module):
        self.expected = {k: v for k, v in net.state_dict().items()}
        self.out: dict[str, Tensor] = {}
        self.errors: list[str] = []

    def __setitem__(self, key: str, value: Tensor | None) -> None:
        if value is None or value.numel() == 0:
            return                                      # a missing reference key: reported by the Reader
        if key not in self.expected:
            self.errors.append(f"the network has no tensor {key!r} (check the config's cell options)")
            return
        want = self.expected[key]
        if tuple(value.shape) != tuple(want.shape):
            self.errors.append(f"{key}: the reference gives shape {tuple(value.shape)}, the network needs "
                               f"{tuple(want.shape)} (check channels, kernel, patch, links in the config)")
            return
        self.out[key] = value.to(want.dtype).contiguous()

    def bias(self, key: str, value: Tensor | None) -> None:
        """A bias the reference may lack: zeros then (its function has none)."""
        if key in self.expected:
            self[key] = value if value is not None else torch.zeros_like(self.expected[key])


def families(net: nn.Module) -> list[str]:
    return [getattr(c, "registry_name", type(c).__name__) for c in getattr(net, "cells", [])]


def check_network(net: nn.Module) -> None:
    if not hasattr(net, "cells") or not hasattr(net, "codec"):
        raise ConversionError(f"convrnn convert maps onto a stacked network (stack, msrnn or a preset); the config "
                              f"builds a {type(net).__name__}")
    for l, cell in enumerate(net.cells):
        if getattr(cell, "recurrent", "conv") != "conv":
            raise ConversionError(f"layer {l} uses recurrent={cell.recurrent!r}: reference checkpoints hold "
                                  "convolutions, so the config must use recurrent: conv")


def conv_w(prefix: str) -> str:
    return f"{prefix}.conv.weight"


# -- OpenSTL --------------------------------------------------------------------------------------
def _openstl_stlstm(r: Reader, w: Writer, src: str, dst: str, c: int) -> None:
    """SpatioTemporalLSTMCell(v2): conv_x (i f g I F G o), conv_h (i f g o), conv_m (I F G), conv_o on
    [c_t, M_t], conv_last; no biases, +1 on f and f'."""
    x = r(f"{src}.conv_x.0.weight")
    w[f"{dst}.wx.weight"] = blocks(x, "ifgIFGo", "ifogIFG")
    w.bias(f"{dst}.wx.bias", fill(torch.zeros(7 * c), 0.0, {1: 1.0, 5: 1.0}, c))
    w[conv_w(f"{dst}.uh")] = blocks(r(f"{src}.conv_h.0.weight"), "ifgo", "ifog")
    w[conv_w(f"{dst}.um")] = r(f"{src}.conv_m.0.weight")
    o = r(f"{src}.conv_o.0.weight")
    w[conv_w(f"{dst}.vc")], w[conv_w(f"{dst}.vm")] = o[:, :c], o[:, c:]
    w[f"{dst}.fuse.weight"] = r(f"{src}.conv_last.weight")
    w.bias(f"{dst}.fuse.bias", None)


def _openstl_convlstm(r: Reader, w: Writer, src: str, dst: str, c: int) -> None:
    w[f"{dst}.wx.weight"] = blocks(r(f"{src}.conv_x.0.weight"), "ifgo", "ifog")
    w.bias(f"{dst}.wx.bias", None)                    # OpenSTL's ConvLSTMCell adds no forget bias
    w[conv_w(f"{dst}.uh")] = blocks(r(f"{src}.conv_h.0.weight"), "ifgo", "ifog")
    r.drop(f"{src}.conv_o", "ConvLSTMCell builds conv_o but its forward never calls it")
    r.drop(f"{src}.conv_last", "ConvLSTMCell builds conv_last but its forward never calls it")


def _openstl_causal(r: Reader, w: Writer, src: str, dst: str, c: int) -> None:
    """CausalLSTMCell: conv_x (i f g I F G o), conv_h (i f g o), conv_c (i f g), conv_m (I F W3),
    conv_c2m (I G F o) on c_t, conv_om on M_t, conv_last; no biases, +1 on f and f'."""
    w[f"{dst}.wx.weight"] = blocks(r(f"{src}.conv_x.0.weight"), "ifgIFGo", "ifgIFoG")
    w.bias(f"{dst}.wx.bias", fill(torch.zeros(7 * c), 0.0, {1: 1.0, 4: 1.0}, c))
    h = r(f"{src}.conv_h.0.weight")
    w[conv_w(f"{dst}.uh")] = blocks(h, "ifgo", "ifg")
    w[conv_w(f"{dst}.uo")] = blocks(h, "ifgo", "o")
    w[conv_w(f"{dst}.uc")] = r(f"{src}.conv_c.0.weight")
    m = r(f"{src}.conv_m.0.weight")
    w[conv_w(f"{dst}.um")] = blocks(m, "IFW", "IF")
    w[f"{dst}.w3.weight"] = blocks(m, "IFW", "W")
    w.bias(f"{dst}.w3.bias", None)
    w[conv_w(f"{dst}.vc")] = blocks(r(f"{src}.conv_c2m.0.weight"), "IGFo", "IFoG")
    w[conv_w(f"{dst}.vm")] = r(f"{src}.conv_om.0.weight")
    w[f"{dst}.fuse.weight"] = r(f"{src}.conv_last.weight")
    w.bias(f"{dst}.fuse.bias", None)
    r.drop(f"{src}.conv_o", "CausalLSTMCell builds conv_o but its forward never calls it")


def _openstl_mim_block(r: Reader, w: Writer, src: str, diff: str, dst: str, c: int) -> None:
    """MIMBlock (with its MIMS) and the MIMN feeding it: every conv gate order (i g f o); peepholes
    ct_weight (i f), output weights oc_weight; no biases, +1 on the forget gates."""
    four = lambda key: blocks(r(key), "igfo", "ifog")           # noqa: E731
    w[f"{dst}.wx.weight"] = four(f"{src}.conv_x_cc.0.weight")
    w.bias(f"{dst}.wx.bias", fill(torch.zeros(4 * c), 0.0, {1: 1.0}, c))
    w[conv_w(f"{dst}.uh")] = blocks(r(f"{src}.conv_t_cc.0.weight"), "igo", "iog")
    w[conv_w(f"{dst}.um")] = four(f"{src}.conv_s_cc.0.weight")
    w[conv_w(f"{dst}.s_uc")] = four(f"{src}.conv_h_concat.0.weight")
    w[f"{dst}.s_wd.weight"] = four(f"{src}.conv_x_concat.0.weight")
    w.bias(f"{dst}.s_wd.bias", fill(torch.zeros(4 * c), 0.0, {1: 1.0}, c))
    w[f"{dst}.fuse.weight"] = r(f"{src}.conv_last.weight")
    w.bias(f"{dst}.fuse.bias", None)
    w[conv_w(f"{dst}.n_ud")] = four(f"{diff}.conv_h_concat.0.weight")
    w[f"{dst}.n_wx.weight"] = four(f"{diff}.conv_x_concat.0.weight")
    for mod, prefix in (("s", src), ("n", diff)):
        ct, oc = r(f"{prefix}.ct_weight"), r(f"{prefix}.oc_weight")
        w[f"{dst}.{mod}_peep.weight"] = ct.reshape(2, c, *ct.shape[-2:]) if ct.numel() else ct
        w[f"{dst}.{mod}_uo.weight"] = oc.unsqueeze(0) if oc.numel() else oc
    r.drop(f"{diff}.conv_last", "MIMN builds conv_last but its forward never calls it")


def _openstl_ghu(r: Reader, w: Writer, dst: str) -> None:
    """GHU: z_concat on z, x_concat on the layer's h, gate order (p u); no biases."""
    w[f"{dst}.ghu_x.weight"] = blocks(r("gradient_highway.x_concat.0.weight"), "ps", "sp")
    w.bias(f"{dst}.ghu_x.bias", None)
    w[conv_w(f"{dst}.ghu_z")] = blocks(r("gradient_highway.z_concat.0.weight"), "ps", "sp")


def from_openstl(r: Reader, w: Writer, net: nn.Module) -> list[str]:
    cells, c = families(net), net.cells[0].channels
    notes: list[str] = []
    if any(k.endswith(".1.weight") and ".conv_" in k for k in r.state):
        raise ConversionError("the checkpoint was trained with layer_norm=True (LayerNorm after each convolution); "
                              "convrnn has no LayerNorm option: only layer_norm=False checkpoints (OpenSTL's "
                              "Moving MNIST configs) convert")
    if all(f in ("predrnn", "predrnnv2") for f in cells):
        for l in range(len(cells)):
            _openstl_stlstm(r, w, f"cell_list.{l}", f"cells.{l}", c)
        if "predrnnv2" in cells:
            w["adapter.weight"] = r("adapter.weight")
    elif all(f == "convlstm" for f in cells):
        for l in range(len(cells)):
            _openstl_convlstm(r, w, f"cell_list.{l}", f"cells.{l}", c)
    elif all(f == "predrnnpp" for f in cells):
        bad = [l for l, cell in enumerate(net.cells) if cell.variant != "openstl" or not cell.o_from_h]
        if bad or net.cells[0].highway != "output" or any(cell.highway for cell in net.cells[1:]):
            raise ConversionError("OpenSTL's PredRNN++ needs the openstl Causal LSTM and the GHU on layer 1's output: "
                                  "use name: predrnnpp_net with variant: openstl (configs/openstl/predrnnpp.yaml)")
        for l in range(len(cells)):
            _openstl_causal(r, w, f"cell_list.{l}", f"cells.{l}", c)
        _openstl_ghu(r, w, "cells.0")
    elif cells[0] == "predrnn" and all(f == "mim" for f in cells[1:]):
        if any(cell.variant != "openstl" for cell in net.cells[1:]):
            raise ConversionError("OpenSTL's MIM needs the openstl MIM block: use name: mim_net with variant: openstl "
                                  "(configs/openstl/mim.yaml)")
        if any(cell.n_forget != 1.0 for cell in net.cells[1:]):
            raise ConversionError("OpenSTL's MIM-N adds the constant 1.0 to its forget gate: leave forget_bias at 1.0")
        _openstl_stlstm(r, w, "stlstm_layer.0", "cells.0", c)
        for l in range(1, len(cells)):
            _openstl_mim_block(r, w, f"stlstm_layer.{l}", f"stlstm_layer_diff.{l - 1}", f"cells.{l}", c)
        notes.append("OpenSTL keeps MIM-S's memory S on the module across sequences (even batches); the converted "
                     "network starts it at zero for every sequence")
    else:
        raise ConversionError(f"no OpenSTL model has the layers {cells}: OpenSTL's ConvLSTM, PredRNN, PredRNN++, MIM "
                              "and PredRNN-V2 convert (configs/openstl/)")
    codec = net.codec
    if not isinstance(codec.embed, nn.Identity):
        raise ConversionError("OpenSTL reads patches directly: the config needs embed: patch")
    w["codec.readout.weight"] = r("conv_last.weight")
    w.bias("codec.readout.bias", None)
    if codec.patch > 1 and net.frame_channels > 1:
        _permute_patch_channels(w, codec.patch, net.frame_channels)
        notes.append("patch channels permuted from OpenSTL's reshape_patch order to pixel_unshuffle's")
    return notes


def _permute_patch_channels(w: Writer, p: int, channels: int) -> None:
    """convrnn channel j = c·p² + s (pixel_unshuffle) is OpenSTL's channel s·C + c (reshape_patch)."""
    perm = torch.tensor([(j % (p * p)) * channels + j // (p * p) for j in range(p * p * channels)])
    if "cells.0.wx.weight" in w.out:
        w.out["cells.0.wx.weight"] = w.out["cells.0.wx.weight"][:, perm]
    w.out["codec.readout.weight"] = w.out["codec.readout.weight"][perm]


# -- MS-RNN --------------------------------------------------------------------------------------
def _msrnn_block(r: Reader, w: Writer, src: str, dst: str, order: str) -> None:
    """The ST-LSTM part of MS-RNN's PredRNN, PredRNN-V2, MIM and MotionRNN cells (conv_x2h and conv_h2h
    with gates i f g o, conv_x2h_m and conv_m2h_m with I F G, conv_c2o, conv_m2o, conv_c_m; all biased)
    into convrnn's layout.  ``order`` names the blocks of ``wx`` (lower case from conv_x2h, upper case
    from conv_x2h_m); ``uh`` takes the gates of ``order`` from conv_h2h, then g.  The convolutions whose
    outputs add up share one bias: conv_x2h + conv_h2h, conv_x2h_m + conv_m2h_m, and the o gate's
    conv_c2o + conv_m2o join the input bias."""
    g = lambda name: r(f"{src}.{name}.weight")                 # noqa: E731
    b = lambda name: r.opt(f"{src}.{name}.bias")               # noqa: E731
    x, xm, h = g("_conv_x2h"), g("_conv_x2h_m"), g("_conv_h2h")
    if x.numel() and xm.numel():
        parts = {**dict(zip("ifgo", x.chunk(4))), **dict(zip("IFG", xm.chunk(3)))}
        w[f"{dst}.wx.weight"] = torch.cat([parts[k] for k in order])
    bx, bm, bo = total(b("_conv_x2h"), b("_conv_h2h")), total(b("_conv_x2h_m"), b("_conv_m2h_m")), \
        total(b("_conv_c2o"), b("_conv_m2o"))
    if bx is not None and bm is not None:
        parts = {**dict(zip("ifgo", bx.chunk(4))), **dict(zip("IFG", bm.chunk(3)))}
        parts["o"] = parts["o"] + (bo if bo is not None else 0)
        w[f"{dst}.wx.bias"] = torch.cat([parts[k] for k in order])
    w[conv_w(f"{dst}.uh")] = blocks(h, "ifgo", "".join(k for k in order if k in "ifo") + "g")
    if "f" not in order:
        for name in ("_conv_x2h", "_conv_h2h"):
            r.dropped[f"{src}.{name} (block f)"] = "the MIM block replaces f * c by T: its forget gate is never used"
    w[conv_w(f"{dst}.um")] = g("_conv_m2h_m")
    w[conv_w(f"{dst}.vc")] = g("_conv_c2o")
    w[conv_w(f"{dst}.vm")] = g("_conv_m2o")
    w[f"{dst}.fuse.weight"] = g("_conv_c_m")
    w.bias(f"{dst}.fuse.bias", b("_conv_c_m"))


def _msrnn_mim_modules(r: Reader, w: Writer, src: str, dst: str) -> None:
    """MIM-N (conv_x2h_n (i f g), conv_n2h_n (i f g), conv_diff2o, conv_n2o) and MIM-S (conv_x2h_s and
    conv_c2h_s (i f g o), conv_s2o)."""
    g = lambda name: r(f"{src}.{name}.weight")                 # noqa: E731
    b = lambda name: r.opt(f"{src}.{name}.bias")               # noqa: E731
    w[f"{dst}.n_wx.weight"] = torch.cat([g("_conv_x2h_n"), g("_conv_diff2o")])
    bn = total(b("_conv_x2h_n"), b("_conv_n2h_n"))
    bo = total(b("_conv_diff2o"), b("_conv_n2o"))
    w.bias(f"{dst}.n_wx.bias", torch.cat([bn, bo]) if bn is not None and bo is not None else None)
    w[conv_w(f"{dst}.n_un")] = g("_conv_n2h_n")
    w[conv_w(f"{dst}.n_uo")] = g("_conv_n2o")
    w[f"{dst}.s_wd.weight"] = blocks(g("_conv_x2h_s"), "ifgo", "ifog")
    bs = total(b("_conv_x2h_s"), b("_conv_c2h_s"))
    if bs is not None:
        bs = blocks(bs, "ifgo", "ifog").clone()
        bs[2 * (len(bs) // 4):3 * (len(bs) // 4)] += b("_conv_s2o") if r.has(f"{src}._conv_s2o.bias") else 0
    w.bias(f"{dst}.s_wd.bias", bs)
    w[conv_w(f"{dst}.s_uc")] = blocks(g("_conv_c2h_s"), "ifgo", "ifog")
    w[conv_w(f"{dst}.s_uo")] = g("_conv_s2o")


def _drop_mim_modules(r: Reader, src: str, why: str) -> None:
    for name in ("_conv_x2h_n", "_conv_n2h_n", "_conv_diff2o", "_conv_n2o", "_conv_x2h_s", "_conv_c2h_s", "_conv_s2o"):
        r.drop(f"{src}.{name}", why)


def _msrnn_motiongru(r: Reader, w: Writer, src: str, dst: str) -> None:
    """MS-RNN's MotionGRU: conv_enc, conv_u, conv_r, conv_z, conv_hm, conv_dec, deconv_dec, conv_g."""
    wb = lambda name: (r(f"{src}.{name}.weight"), r.opt(f"{src}.{name}.bias"))     # noqa: E731
    for ours, theirs in (("enc", "_conv_enc"), ("w_z", "_conv_z"), ("w_mask", "_conv_hm"), ("mix", "_conv_dec"),
                         ("dec", "_deconv_dec")):
        w[f"{dst}.motion.{ours}.weight"], bias = wb(theirs)
        w.bias(f"{dst}.motion.{ours}.bias", bias)
    (uw, ub), (rw, rb) = wb("_conv_u"), wb("_conv_r")
    w[f"{dst}.motion.w_ur.weight"] = torch.cat([uw, rw])
    w.bias(f"{dst}.motion.w_ur.bias", torch.cat([ub, rb]) if ub is not None and rb is not None else None)
    gw, gb = wb("_conv_g")                 # MS-RNN: X = g H + (1 - g) Dec; here X = g' Dec + (1 - g') H, g' = 1 - g
    w[f"{dst}.motion.w_gate.weight"] = -gw
    w.bias(f"{dst}.motion.w_gate.bias", -gb if gb is not None else None)


def _drop_motiongru(r: Reader, src: str, why: str) -> None:
    for name in ("_conv_enc", "_conv_u", "_conv_r", "_conv_z", "_conv_hm", "_conv_dec", "_deconv_dec", "_conv_g"):
        r.drop(f"{src}.{name}", why)


def _msrnn_trajgru(r: Reader, w: Writer, src: str, dst: str, cell: nn.Module) -> None:
    c, links = cell.channels, cell.links
    wb = lambda name: (r(f"{src}.{name}.weight"), r.opt(f"{src}.{name}.bias"))     # noqa: E731
    xw, xb = wb("_conv_x2h")
    pw, pb = wb("project")
    if cell.b_hh is None:
        raise ConversionError("MS-RNN's TrajGRU biases its projection inside r * (.) of the candidate: set "
                              "cell_kw: {candidate_bias: true} (configs/msrnn/trajgru.yaml)")
    w[f"{dst}.wx.weight"] = xw
    if xb is not None:   # the projection's z and r biases add to the input's; its candidate bias stays inside r * (.)
        w[f"{dst}.wx.bias"] = xb + torch.cat([pb[:2 * c], torch.zeros(c)]) if pb is not None else xb
    w[f"{dst}.b_hh"] = pb[2 * c:] if pb is not None else torch.zeros(c)
    if pw.numel():   # input channel l·C + c (links concatenated) -> c·L + l (RecurrentOp's links)
        perm = torch.tensor([(j % links) * c + j // links for j in range(c * links)])
        w[conv_w(f"{dst}.uh")] = pw[:, perm]
    fxw, fxb = wb("_conv_x2f")
    fhw, fhb = wb("_conv_h2f")
    w[f"{dst}.flow_x.weight"] = fxw
    w.bias(f"{dst}.flow_x.bias", total(fxb, fhb))
    w[f"{dst}.flow_h.weight"] = fhw
    fw, fb = wb("_conv_flow")              # MS-RNN warps h by -flow: negate to warp by +flow
    w[f"{dst}.flow_out.weight"] = -fw
    w.bias(f"{dst}.flow_out.bias", -fb if fb is not None else None)


def _msrnn_causal(r: Reader, w: Writer, src: str, dst: str, c: int, cell: nn.Module) -> None:
    """PredRNN_Plus2_Cell: conv_x_h_c on [x, h, c] (i f g), conv_x_c_m on [x, c_t, M] (I F G), conv_m
    (W3), conv_o on [x, c_t, M_t], conv_c_m; GHU conv_x, conv_z (p s); all biased."""
    g = lambda name: r(f"{src}.{name}.weight")                 # noqa: E731
    b = lambda name: r.opt(f"{src}.{name}.bias")               # noqa: E731
    xhc, xcm, o = g("_conv_x_h_c"), g("_conv_x_c_m"), g("_conv_o")
    if xhc.numel() and xcm.numel() and o.numel():
        cin = xhc.shape[1] - 2 * c
        w[f"{dst}.wx.weight"] = torch.cat([xhc[:, :cin], xcm[:2 * c, :cin], o[:, :cin], xcm[2 * c:, :cin]])
        bias = [b("_conv_x_h_c"), b("_conv_x_c_m"), b("_conv_o")]
        if all(t is not None for t in bias):
            w[f"{dst}.wx.bias"] = torch.cat([bias[0], bias[1][:2 * c], bias[2], bias[1][2 * c:]])
        w[conv_w(f"{dst}.uh")] = xhc[:, cin:cin + c]
        w[conv_w(f"{dst}.uc")] = xhc[:, cin + c:]
        w[conv_w(f"{dst}.vc")] = torch.cat([xcm[:2 * c, cin:cin + c], o[:, cin:cin + c], xcm[2 * c:, cin:cin + c]])
        w[conv_w(f"{dst}.um")] = xcm[:, cin + c:]
        w[conv_w(f"{dst}.vm")] = o[:, cin + c:]
    w[f"{dst}.w3.weight"] = g("_conv_m")
    w.bias(f"{dst}.w3.bias", b("_conv_m"))
    w[f"{dst}.fuse.weight"] = g("_conv_c_m")
    w.bias(f"{dst}.fuse.bias", b("_conv_c_m"))
    if cell.highway == "input":
        w[f"{dst}.ghu_x.weight"] = blocks(g("_conv_x"), "ps", "sp")
        bx, bz = b("_conv_x"), b("_conv_z")
        w.bias(f"{dst}.ghu_x.bias", blocks(total(bx, bz), "ps", "sp") if total(bx, bz) is not None else None)
        w[conv_w(f"{dst}.ghu_z")] = blocks(g("_conv_z"), "ps", "sp")
    else:
        for name in ("_conv_x", "_conv_z"):
            r.drop(f"{src}.{name}", "every PredRNN_Plus2_Cell builds a GHU; only layer 2's runs")


def from_msrnn(r: Reader, w: Writer, net: nn.Module) -> list[str]:
    cells, c = families(net), net.cells[0].channels
    notes: list[str] = []
    L = len(cells)
    lstm = lambda l: f"rnns.lstm.{l}"                         # noqa: E731
    if all(f == "convlstm" for f in cells):
        for l in range(L):
            x, h = r(f"{lstm(l)}._conv_x2h.weight"), r(f"{lstm(l)}._conv_h2h.weight")
            w[f"cells.{l}.wx.weight"] = blocks(x, "ifgo", "ifog")
            bias = total(r.opt(f"{lstm(l)}._conv_x2h.bias"), r.opt(f"{lstm(l)}._conv_h2h.bias"))
            w.bias(f"cells.{l}.wx.bias", blocks(bias, "ifgo", "ifog") if bias is not None else None)
            w[conv_w(f"cells.{l}.uh")] = blocks(h, "ifgo", "ifog")
    elif all(f == "trajgru" for f in cells):
        for l in range(L):
            _msrnn_trajgru(r, w, lstm(l), f"cells.{l}", net.cells[l])
        notes.append("MS-RNN's TrajGRU warp normalises sampling positions by (W - 1) under align_corners=False, a "
                     "sub-pixel shift (a bug); the converted network warps exactly, so its outputs differ slightly")
    elif all(f in ("predrnn", "predrnnv2") for f in cells):
        for l in range(L):
            _msrnn_block(r, w, lstm(l), f"cells.{l}", "ifogIFG")
        if "predrnnv2" in cells:
            w["adapter.weight"] = r("rnns.adapter.weight")
            r.drop("rnns.adapter.bias", "convrnn's adapter has no bias (it only enters the decoupling loss)")
    elif all(f == "predrnnpp" for f in cells):
        if L < 2 or net.cells[1].highway != "input" or any(cl.highway for i, cl in enumerate(net.cells) if i != 1) \
                or any(cl.variant != "paper" or cl.o_from_h for cl in net.cells):
            raise ConversionError("MS-RNN's PredRNN++ has the paper's Causal LSTM and the GHU on layer 2's input: use "
                                  "name: predrnnpp_net with variant: msrnn (configs/msrnn/predrnnpp.yaml)")
        for l in range(L):
            _msrnn_causal(r, w, lstm(l), f"cells.{l}", c, net.cells[l])
    elif cells[0] == "predrnn" and all(f == "mim" for f in cells[1:]):
        if any(cell.variant != "msrnn" for cell in net.cells[1:]):
            raise ConversionError("MS-RNN's MIM differences its input as its code does: use name: mim_net with "
                                  "variant: msrnn (configs/msrnn/mim.yaml)")
        _msrnn_block(r, w, lstm(0), "cells.0", "ifogIFG")
        _drop_mim_modules(r, lstm(0), "layer 1 of MS-RNN's MIM computes MIM-N/MIM-S but never uses them")
        for l in range(1, L):
            _msrnn_mim_layer(r, w, lstm(l), f"cells.{l}")
    elif cells[:-1] == ["motionrnn"] * (L - 1) and cells[-1] == "mim":
        net_cells = net.cells
        if net_cells[0].memory != "lstm" or any(cl.variant != "msrnn" for cl in net_cells):
            raise ConversionError("MS-RNN's MotionRNN: use name: motionrnn_net with variant: msrnn "
                                  "(configs/msrnn/motionrnn.yaml)")
        _msrnn_block(r, w, lstm(0), "cells.0", "iogIFGf")
        _drop_mim_modules(r, lstm(0), "layer 1 of MS-RNN's MotionRNN computes MIM-N/MIM-S but never uses them")
        _msrnn_motiongru(r, w, lstm(0), "cells.0")
        for l in range(1, L):
            _msrnn_mim_layer(r, w, lstm(l), f"cells.{l}")
            if l < L - 1:
                _msrnn_motiongru(r, w, lstm(l), f"cells.{l}")
        _drop_motiongru(r, lstm(L - 1), "the top layer of MS-RNN's MotionRNN computes a MotionGRU it never uses")
        notes.append("MS-RNN's MotionGRU reshapes its offsets across the batch, warps with a (W - 1) normalisation "
                     "and flattens its warped samples without moving the neighbour axis first, which mixes pixel "
                     "positions (bugs); the converted network computes the intended MotionGRU, so outputs differ")
    elif all(f == "preciplstm" for f in cells):
        raise ConversionError("PrecipLSTM does not convert: the reference's local attention is a CUDA kernel over an "
                              "even 30 x 30 window (offsets -15 .. +14), which a centred odd window cannot reproduce")
    else:
        raise ConversionError(f"no MS-RNN model has the layers {cells}: MS-RNN's ConvLSTM, TrajGRU, PredRNN, PredRNN++, "
                              "MIM, MotionRNN and PredRNN-V2 convert, flat or multi-scale (configs/msrnn/)")
    codec = net.codec
    if codec.patch != 1 or isinstance(codec.embed, nn.Identity):
        raise ConversionError("MS-RNN embeds frames with a 1x1 convolution at full resolution: the config needs "
                              "embed: conv1x1 and patch: 1")
    for ours, theirs in (("embed", "embed.conv_embed"), ("readout", "fc.conv_fc")):
        w[f"codec.{ours}.weight"] = r(f"{theirs}.weight")
        w.bias(f"codec.{ours}.bias", r.opt(f"{theirs}.bias"))
    return notes


def _msrnn_mim_layer(r: Reader, w: Writer, src: str, dst: str) -> None:
    """A MIM layer (l >= 2) of MS-RNN's MIM or MotionRNN cell: block i o g I F G (its forget gate is unused)."""
    _msrnn_block(r, w, src, dst, "iogIFG")
    _msrnn_mim_modules(r, w, src, dst)


# -- the command ----------------------------------------------------------------------------------
CONVERTERS: dict[str, Callable[[Reader, Writer, nn.Module], list[str]]] = {"openstl": from_openstl,
                                                                           "msrnn": from_msrnn}


def convert_state_dict(source: str, reference: dict[str, Tensor], net: nn.Module) -> tuple[dict[str, Tensor], dict]:
    """Map a reference state dict onto ``net``.  Returns the convrnn state dict and a report
    ``{'dropped': {key: reason}, 'notes': [...]}``; raises :class:`ConversionError` on any missing or
    unexpected key or shape mismatch."""
    if source not in CONVERTERS:
        raise ConversionError(f"--from {source!r}: choose one of {SOURCES}")
    check_network(net)
    r, w = Reader(reference), Writer(net)
    notes = CONVERTERS[source](r, w, net)
    problems = []
    if r.missing:
        problems.append(f"the checkpoint lacks {len(r.missing)} tensor(s) the network needs: "
                        + ", ".join(sorted(set(r.missing))[:12]))
    if r.leftover():
        problems.append(f"the checkpoint has {len(r.leftover())} tensor(s) this network has no place for: "
                        + ", ".join(r.leftover()[:12]))
    problems += w.errors
    unfilled = sorted(set(w.expected) - set(w.out))
    if not problems and unfilled:
        problems.append(f"nothing in the checkpoint fills {', '.join(unfilled[:12])}")
    if problems:
        raise ConversionError(f"the {source} checkpoint does not match the configured network ({', '.join(families(net))}):\n  - "
                              + "\n  - ".join(problems))
    return w.out, {"dropped": dict(sorted(r.dropped.items())), "notes": notes}


def load_task_config(path: str | Path) -> dict:
    """The ``model:`` section (PredictionTask's arguments) of a training config."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"config file {str(path)!r} not found")
    cfg = yaml.safe_load(path.read_text())
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("net"), dict):
        raise ConversionError(f"{path}: expected a training config with a 'model:' section holding 'net: {{...}}' "
                              "(configs/openstl/*.yaml, configs/msrnn/*.yaml)")
    return model


def convert(source: str, checkpoint: str | Path, config: str | Path, output: str | Path,
            overwrite: bool = False) -> dict:
    """Convert ``checkpoint`` for the network of ``config`` and write a PredictionTask checkpoint
    (Lightning's format: ``state_dict`` with ``net.`` keys, ``hyper_parameters``...) to ``output``,
    atomically.  Returns the report of :func:`convert_state_dict` plus ``params``."""
    import lightning as L

    from .checkpoints import AtomicCheckpointIO
    from .train import PredictionTask

    output = Path(output)
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} exists; choose another --output or pass --overwrite to replace it")
    task = PredictionTask(**load_task_config(config))
    state, report = convert_state_dict(source, load_reference(checkpoint), task.net)
    task.net.load_state_dict(state, strict=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    trainer.strategy.connect(task)
    trainer.save_checkpoint(output, weights_only=True)
    report["params"] = sum(p.numel() for p in task.net.parameters())
    return report


def main(argv: list[str]) -> int:
    """``convrnn convert --from openstl|msrnn CHECKPOINT --config CONFIG.yaml --output OUT.ckpt``."""
    p = argparse.ArgumentParser(prog="convrnn convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="the code that wrote CHECKPOINT")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="OpenSTL .pth/.ckpt or MS-RNN epoch_N.pth")
    p.add_argument("--config", required=True, metavar="CONFIG.yaml",
                   help="the convrnn training config of the same model (configs/openstl/, configs/msrnn/)")
    p.add_argument("--output", required=True, metavar="OUT.ckpt", help="the checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.ckpt if it exists")
    a = p.parse_args(argv)
    try:
        report = convert(a.source, a.checkpoint, a.config, a.output, a.overwrite)
    except ConversionError as e:
        print(f"convrnn convert: {e}", file=sys.stderr)
        return 2
    print(f"convrnn convert: wrote {a.output} ({report['params']:,} parameters)")
    if report["dropped"]:
        print(f"dropped {len(report['dropped'])} tensor(s) the reference builds but never uses:")
        for key, why in report["dropped"].items():
            print(f"  {key}: {why}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"evaluate it with: convrnn test --config {a.config} --ckpt_path {a.output}")
    return 0
