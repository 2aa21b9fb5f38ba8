"""PrecipLSTM (Ma, Zhang & Liu, IEEE TGRS 2022) with a pure-PyTorch local attention."""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


TILE = 16   # side of the query tiles of local_attention; each tile gathers its keys once


def _axis_tiling(n: int, r: int) -> tuple[int, int, int]:
    """Along one axis of length n: tile side t, number of tiles, and the span of keys a tile
    gathers (its t positions plus r on each side, clipped to the map)."""
    t = min(TILE, n)
    return t, -(-n // t), min(t + 2 * r, n)


def _axis_windows(n: int, r: int, device) -> tuple[Tensor, Tensor]:
    """Query positions (tiles, t) of each tile (the last tile may run past the map) and the key
    positions (tiles, span) it gathers: the span starts r before the tile, shifted to stay on the map,
    so it holds every on-map neighbour of every query of the tile."""
    t, tiles, span = _axis_tiling(n, r)
    first = torch.arange(tiles, device=device) * t
    queries = first[:, None] + torch.arange(t, device=device)
    keys = (first - r).clamp(0, n - span)[:, None] + torch.arange(span, device=device)
    return queries, keys


def _window_tables(height: int, width: int, size: int, device, dtype) -> tuple[Tensor, Tensor]:
    """Key index (tiles, S) into the flattened map (``height * width`` = the zero key) and the
    attention bias (1, tiles, Q, S) of :func:`local_attention`: 0 for a key in the query's window,
    -inf for one outside it, and log(number of the window's neighbours off the map) for the zero key
    (-inf when none); S is rounded up to a multiple of 16 with masked zero keys (aligned rows)."""
    r = size // 2
    (qy, ky), (qx, kx) = _axis_windows(height, r, device), _axis_windows(width, r, device)
    near_y = (ky[:, None, :] - qy[:, :, None]).abs() <= r          # (tiles_y, t_y, span_y)
    near_x = (kx[:, None, :] - qx[:, :, None]).abs() <= r
    (ny, ty, ly), (nx, tx, lx) = near_y.shape, near_x.shape
    inside = (near_y[:, None, :, None, :, None] & near_x[None, :, None, :, None, :]).reshape(ny * nx, ty * tx, ly * lx)
    index = (ky[:, None, :, None] * width + kx[None, :, None, :]).reshape(ny * nx, ly * lx)
    extra = 1 + (-(ly * lx + 1) % 16)                              # the zero key + alignment
    index = torch.cat([index, index.new_full((ny * nx, extra), height * width)], 1)
    off_map = (size * size - inside.sum(-1, keepdim=True)).to(dtype)
    blocked = torch.full((), -math.inf, dtype=dtype, device=device)
    bias = torch.cat([torch.where(inside, torch.zeros((), dtype=dtype, device=device), blocked), off_map.log(),
                      blocked.expand(ny * nx, ty * tx, extra - 1)], -1)
    return index, bias[None]


@functools.lru_cache(maxsize=16)
def _cached_window_tables(height: int, width: int, size: int, device, dtype) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False):   # usable in training after a first call under inference_mode
        return _window_tables(height, width, size, device, dtype)


def local_attention_mults(height: int, width: int, channels: int, size: int) -> int:
    """Multiply-accumulates of one :func:`local_attention` call, batch 1: q·k and the weighting of v
    for every (query, key) pair of every tile, padded queries and masked keys included (what is
    computed; two matrix products, so MACs as well as multiplications)."""
    r = size // 2
    (ty, ny, ly), (tx, nx, lx) = _axis_tiling(height, r), _axis_tiling(width, r)
    keys = ly * lx + 1 + (-(ly * lx + 1) % 16)
    return 2 * channels * ny * nx * ty * tx * keys


def local_attention(q: Tensor, k: Tensor, v: Tensor, size: int) -> Tensor:
    """Dot-product attention of every pixel over its size x size neighbourhood (zero padded).

    ``out[:, :, i, j] = Σ_n softmax_n(q_ij · k_n) v_n`` over the neighbours n = (i + dy, j + dx),
    |dy|, |dx| <= size // 2.  Neighbours outside the map have k = v = 0: they take part in the
    softmax with logit 0 and add nothing (the zero padding of the CUDA kernel used by PrecipLSTM's
    reference code, zzd1992/Image-Local-Attention).  No 1/sqrt(C) scaling, as there.

    q, k, v: (B, C, H, W).  No Python loop: the queries are cut into ``TILE`` x ``TILE`` tiles
    (the attention "heads"), each tile gathers the keys and values of the span around it that holds
    all its queries' on-map neighbours (one indexed read for the whole map), and one
    :func:`torch.nn.functional.scaled_dot_product_attention` call with an additive bias does the
    rest: -inf outside each query's window, and one extra zero key whose bias log(n_off) stands for
    the query's n_off neighbours off the map (each adds exp(0) to the softmax and nothing to the
    sum).  So SDPA's fused kernels (flash on CPU, memory-efficient on CUDA) apply and no
    attention matrix is kept for backward.  The index and bias depend only on (H, W, size, device,
    dtype) and are cached.  Multiplications: :func:`local_attention_mults` (a 64 x 64 map with
    size 31 computes 2.2 times the window's 2 · size² · C · H · W; a 16 x 16 map a quarter of it).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the attention neighbourhood must be a positive odd size, got {size}")
    if not q.shape == k.shape == v.shape or q.dim() != 4:
        raise ValueError(f"q, k, v must share one (B, C, H, W) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, c, h, w = q.shape
    tables = _window_tables if torch.compiler.is_compiling() else _cached_window_tables
    index, bias = tables(h, w, size, q.device, q.dtype)
    r = size // 2
    (ty, ny, _), (tx, nx, _) = _axis_tiling(h, r), _axis_tiling(w, r)
    padded = (ny * ty, nx * tx) != (h, w)
    tiles = F.pad(q, (0, nx * tx - w, 0, ny * ty - h)) if padded else q
    tiles = tiles.view(b, c, ny, ty, nx, tx).permute(0, 2, 4, 3, 5, 1).reshape(b, ny * nx, ty * tx, c)  # (B, tiles, Q, C)
    keys, values = F.pad(torch.stack([k, v]).flatten(3), (0, 1)).transpose(2, 3)[:, :, index]  # 2 x (B, tiles, S, C)
    out = F.scaled_dot_product_attention(tiles, keys, values, attn_mask=bias, scale=1.0)
    out = out.view(b, ny, nx, ty, tx, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, ny * ty, nx * tx)
    return out[:, :, :h, :w] if padded else out


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
    Multiplications per step: ``gating_products = 9`` C·H·W products (2 per memory, o ⊙ tanh); the
    attention's matrix products (:func:`local_attention_mults`) are counted by :meth:`extra_macs`.
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

    def extra_macs(self, height: int, width: int) -> int:
        """Matrix products the cost walker cannot see: the local attention's q·k and weighting of v over
        each query tile's key span (:func:`local_attention_mults`, what is computed).  The walker counts
        the convolutions, the Hadamard recurrent products and the 9 C·H·W gating products; softmax and
        additions are not multiplications."""
        return local_attention_mults(height, width, self.in_channels, self.neighbourhood)
