"""PrecipLSTM (Ma, Zhang & Liu, IEEE TGRS 2022) with a pure-PyTorch local attention."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


def local_attention(q: Tensor, k: Tensor, v: Tensor, size: int) -> Tensor:
    """Dot-product attention of every pixel over its size x size neighbourhood (zero padded).

    ``out[:, :, i, j] = Σ_n softmax_n(q_ij · k_n) v_n`` over the neighbours n = (i + dy, j + dx),
    |dy|, |dx| <= size // 2.  Neighbours outside the map have k = v = 0: they take part in the
    softmax with logit 0 and add nothing (the zero padding of the CUDA kernel used by PrecipLSTM's
    reference code, zzd1992/Image-Local-Attention).  No 1/sqrt(C) scaling, as there.

    q, k, v: (B, C, H, W).  Pure PyTorch: ``Tensor.unfold`` views of the padded k and v, one row of
    neighbours at a time, so nothing of size C x size² x H x W is kept for backward.  Multiplies
    2 · size² · C · H · W (q·k and the weighting), all as elementwise products.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the attention neighbourhood must be a positive odd size, got {size}")
    if not q.shape == k.shape == v.shape or q.dim() != 4:
        raise ValueError(f"q, k, v must share one (B, C, H, W) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    r, height = size // 2, q.shape[-2]
    kp, vp = F.pad(k, (r, r, r, r)), F.pad(v, (r, r, r, r))
    # row dy of neighbours of every pixel: (B, C, H, W, size) view, entry dx <-> (i + dy - r, j + dx - r)
    logits = [(q.unsqueeze(-1) * _neighbours(kp, dy, height, size)).sum(1) for dy in range(size)]
    weights = torch.softmax(torch.cat(logits, -1), -1).unsqueeze(1)  # (B, 1, H, W, size²)
    out = 0
    for dy in range(size):
        rows = _neighbours(vp, dy, height, size)
        out = out + (weights[..., dy * size:(dy + 1) * size] * rows).sum(-1)
    return out


def _neighbours(padded: Tensor, dy: int, height: int, size: int) -> Tensor:
    """Row ``dy`` of the neighbourhoods of a padded map: (B, C, H, W, size), a ``Tensor.unfold`` view.
    During ONNX export the same values are stacked from ``size`` slices instead (a copy): the
    TorchScript exporter cannot convert ``unfold`` once the batch axis is dynamic."""
    row = padded[:, :, dy:dy + height]
    if torch.onnx.is_in_onnx_export():
        width = row.shape[-1] - size + 1
        return torch.stack([row[..., dx:dx + width] for dx in range(size)], -1)
    return row.unfold(3, size, 1)


class PrecipLSTMState(NamedTuple):
    h: Tensor       # H_t, the layer output
    c: Tensor       # C_t, the temporal (ConvLSTM) memory
    m: Tensor       # M_t, the zig-zag spatiotemporal memory leaving this layer
    ms: Tensor      # spatial local-attention memory (SLAM)
    mt: Tensor      # temporal-difference memory (TDM)
    prev_input: Tensor  # not a recurrent state: this layer's input at the step before (TDM's δ)


@register_cell("preciplstm")
class PrecipLSTM(Cell):
    """PrecipLSTM (Ma, Zhang & Liu, "PrecipLSTM: A Meteorological Spatiotemporal LSTM for
    Precipitation Nowcasting", IEEE TGRS 60, 2022): a PredRNN ST-LSTM with a local-attention input,
    a spatial local-attention memory (SLAM) and a temporal-difference memory (TDM).

    With x_t the layer input (C_x channels), M the zig-zag memory from the layer below (``m``)::

        q, k, v = W_q * x_t, W_k * x_t, W_v * x_t                          (1x1, no bias)
        x^      = x_t + W_a * LA(q, k, v) + b_a          (local attention, see :func:`local_attention`)
        i, f, o, g   = σ, σ, σ, tanh(W * x^ + U ∘ h_{t-1} + b);   c_t  = f ⊙ c + i ⊙ g
        i', f', g'   = σ, σ, tanh(W * x^ + U ∘ M + b);             M_t  = f' ⊙ M + i' ⊙ g'
        i_s, f_s, g_s = σ, σ, tanh(W * x^ + U ∘ ms + b);           ms_t = f_s ⊙ ms + i_s ⊙ g_s  (SLAM)
        δ_t          = x_t - x_{t-1}
        i_t, f_t, g_t = σ, σ, tanh(W * δ_t + U ∘ mt + b);          mt_t = f_t ⊙ mt + i_t ⊙ g_t  (TDM)
        o'  = σ(o + V_c ∘ c_t + V_s ∘ ms_t + V_t ∘ mt_t + V_m ∘ M_t)
        h_t = o' ⊙ tanh(W_{1x1} * [c_t, ms_t, mt_t, M_t] + b)

    The paper's text gives the modules (SLAM: local attention + memory; TDM: differencing + memory)
    but its full equations were not available to us; the wiring above follows the authors' code
    (mazhf/MS-RNN, ``models/preciplstm.py``), and so does every choice below:

    - the attention-enhanced input x^ drives c, M and ms; TDM differences the raw layer input;
      x_{t-1} is the layer's own input at the previous step (skip sums included in an MS-RNN
      pyramid), kept in this cell's state; at the first step x_{t-1} = 0, so δ_0 = x_0.
    - local attention: softmax of plain dot products over a neighbourhood, zero padding (see
      :func:`local_attention`); q, k, v keep C_x channels, so the residual x + W_a * LA works for any
      input width.  The reference uses a custom CUDA kernel with a 30 x 30 window (even: offsets
      -15 .. +14); this pure-PyTorch version needs an odd, centred window: default 31.
    - o sees the four new memories through k x k terms; the fusion is a 1x1 convolution over
      [c, ms, mt, M] in that order.
    - no forget bias (``forget_bias=0.0``; PredRNN's code adds 1.0, pass it to get that).
    - biases: one per block on the input convolutions, none on recurrent and V terms; the
      reference biases every convolution (redundant: 1,088 more parameters per layer at C = 64).

    Hadamard variants (new for this cell; docs/models.md §1): every term on a state (h, M, ms,
    mt and the new c, ms, mt, M seen by o) is a recurrent term ``∘``; gates (i, f, o of each
    memory) are Hadamard under ``indconv`` and ``ind``, the candidates g only under ``ind``.  The
    attention, its projections and W_a, the input convolutions and the fusion stay as they are.

    Multiplications per step: ``gating_products = 9`` C·H·W products (2 per memory, o ⊙ tanh); the
    attention's 2 · size² · C_x · H · W products are counted in :meth:`extra_mults`.
    """

    gating_products = 9
    zigzag = True

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, neighbourhood: int = 31, forget_bias: float = 0.0):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be a positive odd window size, got {neighbourhood}")
        self.neighbourhood = neighbourhood
        cx, c = in_channels, channels
        self.qkv = nn.Conv2d(cx, 3 * cx, 1, bias=False)                 # W_q, W_k, W_v
        self.att_out = nn.Conv2d(cx, cx, kernel, padding=kernel // 2)     # W_a
        self.wx = input_conv(cx, 10, c, kernel)      # on x^: (i, f, o, g) for c, (i', f', g') for M, ms
        self.wd = input_conv(cx, 3, c, kernel)       # on δ:  i, f, g for mt
        self.uh = self.recurrent_op(gates=3, candidates=1)   # on h:  i, f, o | g
        self.um = self.recurrent_op(gates=2, candidates=1)   # on M:  i', f' | g'
        self.us = self.recurrent_op(gates=2, candidates=1)   # on ms: i, f | g
        self.ut = self.recurrent_op(gates=2, candidates=1)   # on mt: i, f | g
        self.vc, self.vs, self.vt, self.vm = (self.recurrent_op(gates=1, candidates=0) for _ in range(4))
        self.fuse = nn.Conv2d(4 * c, c, 1)                    # W_1x1 * [c, ms, mt, M]
        set_forget_bias(self.wx, c, (1, 5, 8), forget_bias)
        set_forget_bias(self.wd, c, (1,), forget_bias)

    def init_state(self, x: Tensor) -> PrecipLSTMState:
        z = self.zeros(x)
        return PrecipLSTMState(z, z, z, z, z, torch.zeros_like(x))

    def attend(self, x: Tensor) -> Tensor:
        """x^ = x + W_a * LA(W_q x, W_k x, W_v x) + b_a: the local-attention input."""
        q, k, v = self.qkv(x).chunk(3, 1)
        return x + self.att_out(local_attention(q, k, v, self.neighbourhood))

    @staticmethod
    def memory(gates: Tensor, mem: Tensor) -> Tensor:
        """LSTM memory update f ⊙ mem + i ⊙ g from pre-activations [i, f, g]."""
        i, f, g = gates.chunk(3, 1)
        return torch.sigmoid(f) * mem + torch.sigmoid(i) * torch.tanh(g)

    def forward(self, x: Tensor, state: PrecipLSTMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, PrecipLSTMState, Tensor]:
        self.check(x)
        m = self.memory_in(x, state, m)
        h, c, _, ms, mt, prev_input = state if state is not None else self.init_state(x)
        if prev_input.shape != x.shape:
            raise ValueError(f"state.prev_input has shape {tuple(prev_input.shape)} but the input x has "
                             f"{tuple(x.shape)}; prev_input must be this layer's input at the previous step")
        xi, xf, xo, xg, xm, xs = self.wx(self.attend(x)).split([self.channels] * 4 + [3 * self.channels] * 2, 1)
        hi, hf, ho, hg = self.uh(h).chunk(4, 1)
        c = torch.sigmoid(xf + hf) * c + torch.sigmoid(xi + hi) * torch.tanh(xg + hg)
        m = self.memory(xm + self.um(m), m)
        ms = self.memory(xs + self.us(ms), ms)
        mt = self.memory(self.wd(x - prev_input) + self.ut(mt), mt)
        o = torch.sigmoid(xo + ho + self.vc(c) + self.vs(ms) + self.vt(mt) + self.vm(m))
        h = o * torch.tanh(self.fuse(torch.cat([c, ms, mt, m], 1)))
        return h, PrecipLSTMState(h, c, m, ms, mt, x), m

    def extra_mults(self, height: int, width: int) -> int:
        """Products the cost walker cannot see: the local attention's 2 · size² · C_x · H · W (q·k over
        the window and the weighting of v, padded neighbours included: what is computed).  The walker
        counts the convolutions, the Hadamard recurrent products and the 9 C·H·W gating products;
        softmax and additions are not multiplications."""
        return 2 * self.neighbourhood ** 2 * self.in_channels * height * width
