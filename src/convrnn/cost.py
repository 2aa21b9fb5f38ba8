"""Exact cost accounting: parameters, multiplications, MACs and activation memory.

Two independent counts that must agree (``tests/test_cost.py`` checks them for every registered cell):

- **analytic** (:func:`analytic_cell_cost`), from the module's structure, the way the seeds count
  (docs/cost.md), for ONE step of ONE sample with an H x W state:

  * every ``nn.Conv2d``: ``MACs = H_out W_out k_h k_w (C_in / groups) C_out`` (output size from the
    convolution's stride/padding/dilation applied to its input map: the state size H x W unless the
    cell's ``map_sizes(H, W)`` names another size for that module); every ``nn.ConvTranspose2d``:
    ``MACs = H_in W_in k_h k_w C_in (C_out / groups)`` (its input size from ``map_sizes``);
  * every Hadamard-type parameter (a parameter of a non-convolution module with >= 3 dimensions:
    ``RecurrentOp.weight`` of shape (n, C, H|1, W|1), ConvLSTM's peepholes (3, C, H, W)):
    ``n C H W`` products, at the state size whether the weight is per position or per channel;
  * ``cell.gating_products * C H W`` products of two signals (f ⊙ c, i ⊙ g, o ⊙ tanh c ...);
  * ``cell.extra_macs(H, W)`` when the cell defines it: matrix products the walker cannot see (the
    local attention of PrecipLSTM);
  * ``cell.extra_mults(H, W)`` when the cell defines it: elementwise products the walker cannot see
    (bilinear sampling in TrajGRU and MotionRNN, MotionGRU's products on half-size maps);
  * ``macs`` = convolution MACs + extra MACs; ``mults = macs + Hadamard products + gating products +
    extra products``.

- **measured** (:func:`count_ops`), by a ``TorchDispatchMode`` that sees every ATen operator run:
  ``aten.convolution`` (MACs from the weight and output shapes, groups and transposition included),
  ``aten.mm``/``addmm``/``bmm``/``baddbmm``/``mv``/``addmv``/``dot`` (MACs), the fused
  ``scaled_dot_product_attention`` kernels (MACs of its two products), ``aten.mul`` between two tensors
  that both hold more than one element (a product of two signals; scaling by a constant is not),
  ``aten.addcmul`` (``a + t1 * t2``: one product per element when t1 and t2 are both signals), and bilinear
  ``aten.grid_sampler_2d`` (4 products per output element: the four corner values times their
  weights).  Every other operator is tallied by name only.

Conventions: 1 MAC = 1 multiplication + 1 addition = 2 FLOPs.  ``mults`` counts multiplications
(MACs + elementwise products); additions, divisions, activations, normalisations and softmax are
not counted.  Cell figures are per step and per sample; model figures (:func:`model_cost`) are per
sequence (all ``in_len + out_len - 1`` steps of one sample), encoder/decoder (codec) included.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .registry import create_cell

aten = torch.ops.aten

# -- measured counts ---------------------------------------------------------------------------

#: matrix products -> position of the left operand; MACs = output numel x its last dimension
_MATMULS = {aten.mm: 0, aten.addmm: 1, aten.bmm: 0, aten.baddbmm: 1, aten.mv: 0, aten.addmv: 1, aten.dot: 0}
_MULS = {aten.mul, aten.mul_}
#: fused scaled-dot-product attention (CPU flash, CUDA flash / memory-efficient / cuDNN): q (..., L, E),
#: k (..., S, E), v (..., S, Ev); MACs = L S (E + Ev) per batch and head, the two products of the math path
_ATTENTION = {getattr(aten, name) for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention") if hasattr(aten, name)}
#: fused multiply-adds ``self + value * t1 * t2``: one product of two signals per output element
_ADDCMULS = {aten.addcmul, aten.addcmul_}
#: products per output element of grid_sample by interpolation mode (0 bilinear, 1 nearest, 2 bicubic)
_GRID_PRODUCTS = {0: 4, 1: 0, 2: 16}


@dataclass
class Counts:
    """What :func:`count_ops` saw: MACs of convolutions and matrix products, elementwise products of
    two signals, and the number of calls of every ATen operator (by name, e.g. ``'aten.sigmoid'``)."""
    macs: int = 0
    products: int = 0
    ops: Counter = field(default_factory=Counter)

    @property
    def mults(self) -> int:
        """All multiplications: MACs + elementwise products."""
        return self.macs + self.products


def _conv_macs(args, out: Tensor) -> int:
    x, w, transposed = args[0], args[1], args[6]
    # one MAC per weight entry of an output channel (input channel, if transposed) per output
    # (input) element: weight (C_out, C_in/groups, k...) or, transposed, (C_in, C_out/groups, k...)
    return (x.numel() if transposed else out.numel()) * w[0].numel()


def _is_signal(a) -> bool:
    return isinstance(a, Tensor) and a.numel() > 1


class _Counter(TorchDispatchMode):
    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        c = self.counts
        c.ops[str(packet)] += 1
        if packet is aten.convolution:
            c.macs += _conv_macs(args, out)
        elif packet in _MATMULS:
            c.macs += out.numel() * args[_MATMULS[packet]].shape[-1]
        elif packet in _ATTENTION:
            q, k, v = args[:3]
            c.macs += q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        elif packet in _MULS and len(args) >= 2 and _is_signal(args[0]) and _is_signal(args[1]):
            c.products += out.numel()
        elif packet in _ADDCMULS and _is_signal(args[1]) and _is_signal(args[2]):
            c.products += out.numel()
        elif packet is aten.grid_sampler_2d:
            c.products += _GRID_PRODUCTS.get(args[2], 0) * out.numel()
        return out


def count_ops(fn, *args, **kw) -> Counts:
    """Run ``fn(*args, **kw)`` once and count its MACs, elementwise products and operators.

    Counts cover the whole call (every sample of the batch); backward is not run.
    """
    counts = Counts()
    with _Counter(counts):
        fn(*args, **kw)
    return counts


# -- analytic counts ---------------------------------------------------------------------------

_OPAQUE = (nn.Linear, nn.Bilinear, nn.MultiheadAttention, nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d,
           nn.ConvTranspose3d, nn.RNNBase, nn.RNNCellBase)


def _conv_out(size: int, i: int, conv: nn.Conv2d) -> int:
    if conv.padding == "same":
        return size
    pad = 0 if conv.padding == "valid" else conv.padding[i]
    return (size + 2 * pad - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1


def conv2d_macs(conv: nn.Conv2d, height: int, width: int) -> int:
    """MACs of one ``nn.Conv2d`` on one H x W input: H_out W_out k_h k_w (C_in / groups) C_out."""
    return _conv_out(height, 0, conv) * _conv_out(width, 1, conv) * conv.weight.numel()


def analytic_cell_cost(cell: nn.Module, height: int, width: int) -> dict:
    """Parameters, multiplications and MACs of one step of ``cell``, batch 1, H x W state, counted
    from its structure (module docstring; docs/cost.md), with the cell's hooks ``map_sizes`` and
    ``extra_macs`` / ``extra_mults`` for what the structure does not show."""
    hw = height * width
    sizes = cell.map_sizes(height, width) if hasattr(cell, "map_sizes") else {}
    macs = hadamard = 0
    for name, mod in cell.named_modules():
        if isinstance(mod, _OPAQUE):
            raise ValueError(  # noqa: TRY004 - a cell the walker cannot count, not a wrong argument type
                f"{type(cell).__name__}.{name} is a {type(mod).__name__}, which the analytic counter "
                "cannot size; count its products in the cell's extra_mults(height, width) instead")
        h_in, w_in = sizes.get(mod, (height, width))
        if isinstance(mod, nn.ConvTranspose2d):
            macs += h_in * w_in * mod.weight.numel()
            continue
        if isinstance(mod, nn.Conv2d):
            macs += conv2d_macs(mod, h_in, w_in)
            continue
        for p in mod.parameters(recurse=False):
            if p.dim() >= 3:  # Hadamard weight (..., H|1, W|1): one product per state element
                hadamard += math.prod(p.shape[:-2]) * hw
    gating = cell.gating_products * cell.channels * hw
    macs += int(cell.extra_macs(height, width)) if hasattr(cell, "extra_macs") else 0
    extra = int(cell.extra_mults(height, width)) if hasattr(cell, "extra_mults") else 0
    return {"params": sum(p.numel() for p in cell.parameters()), "mults": macs + hadamard + gating + extra,
            "macs": macs}


def _random_like(state: Any) -> Any:
    if isinstance(state, Tensor):
        return torch.randn_like(state)
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_random_like(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(_random_like(s) for s in state)
    return state


def cell_cost(cell: nn.Module, height: int, width: int, batch: int = 1) -> dict:
    """Analytic and measured cost of one step of ``cell`` on an H x W state.

    Runs one step from a random non-zero state (and a random zig-zag memory for PredRNN-family
    cells) under :func:`count_ops`.  Returns ``params``, ``mults`` (analytic), ``mults_measured``
    (measured, divided by ``batch``: per sample) and ``macs`` (analytic convolution MACs).
    """
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"batch, height and width must be positive, got {batch}, {height}, {width}")
    x = torch.randn(batch, cell.in_channels, height, width)
    state = _random_like(cell.init_state(x))
    m = torch.randn(batch, cell.channels, height, width) if getattr(cell, "zigzag", False) else None
    with torch.no_grad():
        counts = count_ops(cell, x, state, m)
    analytic = analytic_cell_cost(cell, height, width)
    return {"params": analytic["params"], "mults": analytic["mults"],
            "mults_measured": counts.mults // batch, "macs": analytic["macs"]}


# -- whole models ------------------------------------------------------------------------------

class _SavedBytes:
    """saved_tensors_hooks that add up the storages autograd keeps for backward, each storage once,
    parameters excluded."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        # storage address -> (bytes, a tensor on it, kept so that the address is not reused)
        self.seen: dict[int, tuple[int, Tensor]] = {}

    def pack(self, t: Tensor) -> Tensor:
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self.skip and s.nbytes():
            self.seen[ptr] = (s.nbytes(), t)
        return t

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.seen.values())


def model_cost(model: nn.Module, batch: int = 1) -> dict:
    """Parameters and per-sequence MACs, multiplications and activation bytes of a predictor.

    Runs ``model(frames, mask)`` once on random frames (batch, in_len + out_len, C, H, W) with
    teacher forcing (mask all True), gradients enabled, measuring MACs and multiplications with
    :func:`count_ops` and the bytes autograd saves for backward with saved-tensor hooks (each storage
    once, parameters excluded, inputs included).  The model's mode (train/eval) is kept and its
    buffers are restored afterwards.  Every figure but ``params`` is divided by
    ``batch``; tensors shared by the whole batch (coordinate grids...) make ``activation_bytes``
    exact only at batch 1.
    """
    for attr in ("in_len", "out_len", "frame_channels", "frame_size"):
        if not hasattr(model, attr):
            raise ValueError(f"model_cost needs a sequence predictor with .{attr} (see convrnn.models.base."
                             f"Predictor); {type(model).__name__} has none")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    t = model.in_len + model.out_len
    frames = torch.rand(batch, t, model.frame_channels, *model.frame_size)
    mask = torch.ones(batch, t - 1, dtype=torch.bool)
    saved = _SavedBytes(model.parameters())
    buffers = [b.clone() for b in model.buffers()]  # e.g. batch-norm statistics: left as they were
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        counts = count_ops(model, frames, mask)
    with torch.no_grad():
        for b, old in zip(model.buffers(), buffers):
            b.copy_(old)
    return {"params": sum(p.numel() for p in model.parameters()), "macs": counts.macs // batch,
            "mults": counts.mults // batch, "activation_bytes": saved.total // batch}


# -- the reference table (docs/cost.md) --------------------------------------------------------

REFERENCE_CELLS = (("LSTM", "convlstm"), ("GRU", "convgru"), ("JANET", "convjanet"), ("GEM", "gem"))
VARIANT_NAMES = (("Conv", "conv"), ("ConvIndConv", "indconv"), ("ConvInd", "ind"))


def reference_table(channels: int = 64, kernel: int = 3, size: int = 16) -> list[dict]:
    """Rows of the seeds' counting table: C_x = C = ``channels``, k = ``kernel``, ``size`` x ``size``
    state, per-position Hadamard weights, no peepholes, recurrent cell only, one step, batch 1.

    Each row: ``cell``, ``variant``, ``params``, ``mults``, ``macs`` and their reductions
    ``dparams``, ``dmults``, ``dmacs`` in percent of the cell's Conv variant (None on that row).
    """
    rows = []
    for label, name in REFERENCE_CELLS:
        base = None
        for vlabel, variant in VARIANT_NAMES:
            cell = create_cell(name, in_channels=channels, channels=channels, kernel=kernel,
                               recurrent=variant, hadamard="position", size=(size, size))
            cost = analytic_cell_cost(cell, size, size)
            base = base or cost
            row = {"cell": label, "variant": vlabel, **cost}
            for key in ("params", "mults", "macs"):
                row["d" + key] = None if cost is base else 100.0 * (1 - cost[key] / base[key])
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`reference_table` as a markdown table (K params, M mults/MACs, Δ = reduction)."""
    def pct(v):
        return "–" if v is None else f"{v:.1f}%"
    lines = ["| cell | variant | params (K) | mults (M) | MACs (M) | Δparams | Δmults | ΔMACs |",
             "|------|---------|-----------:|----------:|---------:|--------:|-------:|------:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['variant']} | {r['params'] / 1e3:.1f} | {r['mults'] / 1e6:.2f} | "
                     f"{r['macs'] / 1e6:.2f} | {pct(r['dparams'])} | {pct(r['dmults'])} | {pct(r['dmacs'])} |")
    return "\n".join(lines)
