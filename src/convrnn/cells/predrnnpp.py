"""PredRNN++ (Wang et al., ICML 2018): the Causal LSTM and the Gradient Highway Unit.  The network
preset (GHU after layer 1) is ``predrnnpp_net`` in :mod:`convrnn.models.presets`."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


class CausalLSTMState(NamedTuple):
    h: Tensor                # the cell's output: h_t, or the highway's z_t with ``highway=True``
    c: Tensor
    m: Tensor
    h_lstm: Tensor | None    # the Causal LSTM's own h_t when ``highway=True`` (then h is z_t), else None


@register_cell("predrnnpp")
class CausalLSTM(Cell):
    """Causal LSTM of PredRNN++ (Wang et al., ICML 2018), optionally with the Gradient Highway Unit.

    Wang, Gao, Long, Wang & Yu, "PredRNN++: Towards A Resolution of the Deep-in-Time Dilemma in
    Spatiotemporal Predictive Learning", ICML 2018.

    The temporal memory c and the zig-zag memory M (from the layer below) are updated in cascade::

        i, f, g    = σ, σ, tanh(W_{i,f,g} * x_t + U_{i,f,g} ∘ h_{t-1} + U^c_{i,f,g} ∘ c_{t-1} + b)
        c_t        = f ⊙ c_{t-1} + i ⊙ g
        i', f', g' = σ, σ, tanh(W'_{i,f,g} * x_t + V_{i,f,g} ∘ c_t + U'_{i,f,g} ∘ M + b')
        M_t        = f' ⊙ tanh(W_3 * M + b_3) + i' ⊙ g'                    (W_3: 1x1)
        o          = tanh(W_o * x_t + V_o ∘ c_t + V^m_o ∘ M_t [+ U_o ∘ h_{t-1}] + b_o)
        h_t        = o ⊙ tanh(W_5 * [c_t, M_t] + b_5)                       (W_5: 1x1)

    With ``highway=True`` (layer 1 of PredRNN++) the GHU runs on h_t and its output z_t is what the
    cell returns (the next layer's input); the Causal LSTM keeps its own h_t in the state::

        p, s = tanh, σ(W_{p,s} * h_t + U_{p,s} ∘ z_{t-1} + b)
        z_t  = s ⊙ p + (1 - s) ⊙ z_{t-1}

    Returns the output y_t = ``z_t if highway else h_t``, ``CausalLSTMState(y_t, c_t, M_t, h_t if highway
    else None)`` and M_t.

    Hadamard variants: every term whose operand is a state (h_{t-1}, c_{t-1}, c_t, M, M_t, z_{t-1}) is
    a recurrent term ``∘``.  Gates: i, f, i', f', o and the GHU's s — Hadamard under ``indconv`` and
    ``ind``; candidates g, g' and the GHU's p — convolutions under ``indconv``, Hadamard under ``ind``.
    Input terms (W * x_t, W * h_t into the GHU) and the 1x1 W_3, W_5 stay convolutions.

    Choices where implementations differ:

    - o: the paper's Eq. (3) reads o from [x_t, c_t, M_t], as does MS-RNN's reimplementation; the
      authors' TensorFlow code and OpenSTL also add U_o * h_{t-1}.  ``o_from_h=False`` (default)
      follows the paper; ``o_from_h=True`` the authors' code.
    - W_3 (the transform of M in the forget path) and W_5 are 1x1 as the paper states.  OpenSTL
      uses a k x k W_3 and drops the M term from g'; we follow the paper (g' sees [x_t, c_t, M]).
    - forget bias: the authors' code and OpenSTL add a constant 1.0 to f and f'; we initialise
      their biases to ``forget_bias`` (default 1.0; same function class), see
      :class:`~convrnn.cells.predrnn.SpatioTemporalLSTM`.  No LayerNorm (off in OpenSTL's and MS-RNN's
      Moving MNIST settings).

    Gating products per step: 5 (f⊙c, i⊙g, f'⊙tanh(W_3 M), i'⊙g', o⊙tanh(·)); +2 with the GHU
    (s⊙p, (1-s)⊙z), written as in the paper.
    """

    gating_products = 5
    zigzag = True

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0, o_from_h: bool = False,
                 highway: bool = False):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        # Input blocks: (i, f | g) of the c path, then (i', f', o | g') matching self.vc.
        self.wx = input_conv(in_channels, 7, channels, kernel)
        self.uh = self.recurrent_op(gates=2, candidates=1)    # on h_{t-1}: i, f | g
        self.uc = self.recurrent_op(gates=2, candidates=1)    # on c_{t-1}: i, f | g
        self.vc = self.recurrent_op(gates=3, candidates=1)    # on c_t:     i', f', o | g'
        self.um = self.recurrent_op(gates=2, candidates=1)    # on M:       i', f' | g'
        self.vm = self.recurrent_op(gates=1, candidates=0)    # on M_t:     o
        self.uo = self.recurrent_op(gates=1, candidates=0) if o_from_h else None  # on h_{t-1}: o
        self.w3 = nn.Conv2d(channels, channels, 1)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)      # W_5
        set_forget_bias(self.wx, channels, (1, 4), forget_bias)
        self.o_from_h = o_from_h
        self.highway = highway
        if highway:
            self.ghu_x = input_conv(channels, 2, channels, kernel)           # on h_t:     s, p
            self.ghu_z = self.recurrent_op(gates=1, candidates=1)            # on z_{t-1}: s | p
            self.gating_products = 7

    def init_state(self, x: Tensor) -> CausalLSTMState:
        h_lstm = self.zeros(x) if self.highway else None
        return CausalLSTMState(self.zeros(x), self.zeros(x), self.zeros(x), h_lstm)

    def forward(self, x: Tensor, state: CausalLSTMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, CausalLSTMState, Tensor]:
        self.check(x)
        m = self.memory_in(x, state, m)
        out, c, _, h_lstm = state if state is not None else self.init_state(x)
        h, z = (h_lstm, out) if self.highway else (out, None)
        xc, xm = self.wx(x).split([3 * self.channels, 4 * self.channels], 1)
        i, f, g = (xc + self.uh(h) + self.uc(c)).chunk(3, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        i2, f2, o, g2 = (xm + self.vc(c)).chunk(4, 1)
        mi, mf, mg = self.um(m).chunk(3, 1)
        m = torch.sigmoid(f2 + mf) * torch.tanh(self.w3(m)) + torch.sigmoid(i2 + mi) * torch.tanh(g2 + mg)
        o = o + self.vm(m)
        if self.uo is not None:
            o = o + self.uo(h)
        h = torch.tanh(o) * torch.tanh(self.fuse(torch.cat([c, m], 1)))
        if not self.highway:
            return h, CausalLSTMState(h, c, m, None), m
        z = self.gradient_highway(h, z)
        return z, CausalLSTMState(z, c, m, h), m

    def gradient_highway(self, h: Tensor, z: Tensor | None) -> Tensor:
        """GHU: z_t = s ⊙ p + (1 - s) ⊙ z_{t-1}, with p, s from the layer's output h_t and z_{t-1}."""
        if z is None:
            z = torch.zeros_like(h)
        # ghu_z orders its blocks gate first (s | p); the input conv is laid out the same way.
        s, p = (self.ghu_x(h) + self.ghu_z(z)).chunk(2, 1)
        s = torch.sigmoid(s)
        return s * torch.tanh(p) + (1 - s) * z
