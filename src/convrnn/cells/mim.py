"""MIM, Memory In Memory (Wang et al., CVPR 2019): the MIM block for layers >= 2.

A MIM network (``mim_net`` in :mod:`convrnn.models.presets`) is a PredRNN stack whose first layer is
an ST-LSTM (cell ``predrnn``) and whose upper layers are MIM blocks (cell ``mim``): the ST-LSTM
forget path ``f ⊙ c_{t-1}`` is replaced by two cascaded recurrent modules that model
non-stationarity through differencing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


class MIMState(NamedTuple):
    h: Tensor       # H^l_t, the layer output
    c: Tensor       # C^l_t, the temporal memory
    m: Tensor       # M^l_t, the zig-zag spatiotemporal memory leaving this layer
    n: Tensor       # N^l_t, MIM-N's non-stationary memory
    s: Tensor       # S^l_t, MIM-S's stationary memory
    prev_input: Tensor  # not a recurrent state: this layer's input at the step before (for δ)


@register_cell("mim")
class MIM(Cell):
    """MIM block (Wang et al., "Memory In Memory: A Predictive Neural Network for Learning
    Higher-Order Non-Stationarity from Spatiotemporal Dynamics", CVPR 2019) for layers l >= 2.

    With x_t the layer input (H^{l-1}_t in a flat stack), h, c the layer's own states, M the
    zig-zag memory arriving from the layer below (``m``)::

        δ_t = x_t - x_{t-1}                                         (input difference)
        MIM-N (non-stationary module, memory N):
            i, f, g = σ, σ, tanh(W_{i,f,g} * δ_t + U_{i,f,g} ∘ N_{t-1} + b)
            N_t = f ⊙ N_{t-1} + i ⊙ g
            D_t = σ(W_o * δ_t + U_o ∘ N_t + b_o) ⊙ tanh(N_t)
        MIM-S (stationary module, memory S), driven by D_t and the old temporal memory C_{t-1}:
            i, f, g = σ, σ, tanh(W_{i,f,g} * D_t + U_{i,f,g} ∘ C_{t-1} + b)
            S_t = f ⊙ S_{t-1} + i ⊙ g
            T_t = σ(W_o * D_t + U_o ∘ C_{t-1} + V_o ∘ S_t + b_o) ⊙ tanh(S_t)
        block (ST-LSTM with the forget path replaced by T_t):
            i, g   = σ, tanh(W_{i,g} * x_t + U_{i,g} ∘ h_{t-1} + b)
            C_t    = T_t + i ⊙ g
            i', f', g' = σ, σ, tanh(W' * x_t + U' ∘ M + b')
            M_t    = f' ⊙ M + i' ⊙ g'
            o      = σ(W_o * x_t + U_o ∘ h_{t-1} + V_c ∘ C_t + V_m ∘ M_t + b_o)
            h_t    = o ⊙ tanh(W_{1x1} * [C_t; M_t] + b_{1x1})

    ``∘`` is a convolution or a Hadamard product as ``recurrent`` says (docs/models.md §1):
    every term on a state (N, C, S, h, M) of a gate is Hadamard in ``indconv`` and ``ind``, the
    candidates' (g) terms only in ``ind``.  Terms on the module inputs δ, D and x stay convolutions.
    Gating products per step: 10 (MIM-N 3, MIM-S 3, i⊙g, f'⊙M, i'⊙g', o⊙tanh).

    First step: ``x_{t-1}`` starts as the first input itself, so δ_0 = 0 (no change has been seen
    yet), as in the thuml/OpenSTL code, which feeds MIM-N a zero difference at t = 0.  (The
    MS-RNN code differences against 0 instead, i.e. δ_0 = x_0.)

    Differences from the reference implementations; we follow the paper's equations:

    - thuml/OpenSTL: MIM-N of layer l > 2 is fed the output D of the MIM-N below instead of its
      own input difference (a cascade); here every MIM-N differences its own input, so in an
      MS-RNN pyramid δ is taken at this layer's scale, on exactly what the layer is fed (skip
      sums included).  The MS-RNN code differences h^{l-1} resampled to this scale (no skip).
    - thuml/OpenSTL: MIM-N keeps its own hidden output as an extra recurrent input and both
      modules use per-position peephole weights on N and S; there are no biases (a constant
      forget bias of 1 instead); S is detached from the graph between steps; the input
      convolution is shared between the C and M paths; o sees M_{t-1}, not C_t and M_t.
    - MS-RNN: every layer is a full MIM cell (layer 1 computes unused MIM-N/S outputs, layers >= 2
      an unused forget gate), separate convolutions with biases: 7.361 M parameters at 6 x 64.

    Conventions shared with ``predrnn`` (:class:`~convrnn.cells.predrnn.SpatioTemporalLSTM`):
    ``forget_bias`` (default 1.0) initialises the biases of f (MIM-N, MIM-S) and f'
    (trainable; the thuml code adds a constant 1); one bias per block on the input convolutions,
    none on recurrent terms; ``m=None`` feeds back this layer's own previous M.
    """

    gating_products = 10
    zigzag = True

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        # MIM-N
        self.n_wx = input_conv(in_channels, 4, channels, kernel)   # i, f, g, o on δ
        self.n_un = self.recurrent_op(gates=2, candidates=1)       # i, f, g on N_{t-1}
        self.n_uo = self.recurrent_op(gates=1, candidates=0)       # o on N_t
        # MIM-S
        self.s_wd = input_conv(channels, 4, channels, kernel)      # i, f, o, g on D_t
        self.s_uc = self.recurrent_op(gates=3, candidates=1)       # i, f, o, g on C_{t-1}
        self.s_uo = self.recurrent_op(gates=1, candidates=0)       # o on S_t
        # block
        self.wx = input_conv(in_channels, 6, channels, kernel)     # i, o, g, i', f', g' on x_t
        self.uh = self.recurrent_op(gates=2, candidates=1)         # i, o, g on h_{t-1}
        self.um = self.recurrent_op(gates=2, candidates=1)         # i', f', g' on M
        self.vc = self.recurrent_op(gates=1, candidates=0)       # o on C_t
        self.vm = self.recurrent_op(gates=1, candidates=0)       # o on M_t
        self.fuse = nn.Conv2d(2 * channels, channels, 1)           # W_1x1 * [C_t; M_t] + b
        set_forget_bias(self.n_wx, channels, (1,), forget_bias)
        set_forget_bias(self.s_wd, channels, (1,), forget_bias)
        set_forget_bias(self.wx, channels, (4,), forget_bias)

    def init_state(self, x: Tensor) -> MIMState:
        z = self.zeros(x)
        return MIMState(z, z, z, z, z, x)

    def nonstationary(self, delta: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """MIM-N: (D_t, N_t) from the input difference δ_t and N_{t-1}."""
        i, f, g, o = self.n_wx(delta).chunk(4, 1)
        ui, uf, ug = self.n_un(n).chunk(3, 1)
        n = torch.sigmoid(f + uf) * n + torch.sigmoid(i + ui) * torch.tanh(g + ug)
        d = torch.sigmoid(o + self.n_uo(n)) * torch.tanh(n)
        return d, n

    def stationary(self, d: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """MIM-S: (T_t, S_t) from MIM-N's output D_t, the old temporal memory C_{t-1} and S_{t-1}."""
        i, f, o, g = (self.s_wd(d) + self.s_uc(c)).chunk(4, 1)
        s = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(g)
        t = torch.sigmoid(o + self.s_uo(s)) * torch.tanh(s)
        return t, s

    def block(self, x: Tensor, state: MIMState, m: Tensor | None, diff_input: Tensor | None = None
              ) -> tuple[Tensor, Tensor, MIMState]:
        """Everything but the output product: returns (o, tanh(W_1x1 * [C_t; M_t]), new state with
        the old h).  MIM-N differences ``diff_input`` (default: x).  Shared with MotionRNN, which
        feeds the block MotionGRU's output, differences the raw input and adds its highway."""
        m = self.memory_in(x, state, m)
        h, c, _, n, s, prev_input = state
        seen = x if diff_input is None else diff_input
        d, n = self.nonstationary(seen - prev_input, n)
        t, s = self.stationary(d, c, s)
        xi, xo, xg, xi2, xf2, xg2 = self.wx(x).chunk(6, 1)
        ui, uo, ug = self.uh(h).chunk(3, 1)
        vi, vf, vg = self.um(m).chunk(3, 1)
        c = t + torch.sigmoid(xi + ui) * torch.tanh(xg + ug)
        m = torch.sigmoid(xf2 + vf) * m + torch.sigmoid(xi2 + vi) * torch.tanh(xg2 + vg)
        o = torch.sigmoid(xo + uo + self.vc(c) + self.vm(m))
        y = torch.tanh(self.fuse(torch.cat([c, m], 1)))
        return o, y, MIMState(h, c, m, n, s, seen)

    def forward(self, x: Tensor, state: MIMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, MIMState, Tensor]:
        self.check(x)
        o, y, new = self.block(x, state if state is not None else self.init_state(x), m)
        h = o * y
        return h, new._replace(h=h), new.m
