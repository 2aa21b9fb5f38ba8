"""PredRNN++ (Wang et al., ICML 2018): the Causal LSTM and the Gradient Highway Unit.  The network
preset (GHU after layer 1) is ``predrnnpp_net`` in :mod:`convrnn.models.presets`."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell

VARIANTS = ("paper", "openstl")
HIGHWAYS = ("output", "input")


class CausalLSTMState(NamedTuple):
    h: Tensor                # the cell's output: h_t, or the highway's z_t with ``highway="output"``
    c: Tensor
    m: Tensor
    h_lstm: Tensor | None    # ``highway="output"``: the Causal LSTM's own h_t (h is z_t), else None
    z: Tensor | None = None  # ``highway="input"``: the GHU's z_t (h is the Causal LSTM's h_t), else None


@register_cell("predrnnpp")
class CausalLSTM(Cell):
    """Causal LSTM of PredRNN++ (Wang et al., ICML 2018), optionally with the Gradient Highway Unit.

    Wang, Gao, Long, Wang & Yu, "PredRNN++: Towards A Resolution of the Deep-in-Time Dilemma in
    Spatiotemporal Predictive Learning", ICML 2018.

    The temporal memory c and the zig-zag memory M (from the layer below) are updated in cascade
    (``variant="paper"``, the default: the paper's Eq. 1-3, as MS-RNN's code computes them)::

        i, f, g    = σ, σ, tanh(W_{i,f,g} * x_t + U_{i,f,g} ∘ h_{t-1} + U^c_{i,f,g} ∘ c_{t-1} + b)
        c_t        = f ⊙ c_{t-1} + i ⊙ g
        i', f', g' = σ, σ, tanh(W'_{i,f,g} * x_t + V_{i,f,g} ∘ c_t + U'_{i,f,g} ∘ M + b')
        M_t        = f' ⊙ tanh(W_3 * M + b_3) + i' ⊙ g'                    (W_3: 1x1)
        o          = tanh(W_o * x_t + V_o ∘ c_t + V^m_o ∘ M_t [+ U_o ∘ h_{t-1}] + b_o)
        h_t        = o ⊙ tanh(W_5 * [c_t, M_t] + b_5)                       (W_5: 1x1)

    ``variant="openstl"`` is OpenSTL's ``CausalLSTMCell`` (and the authors' TensorFlow code): W_3 is
    a k x k convolution, g' has no M term, and o reads h_{t-1}::

        g'  = tanh(W'_g * x_t + V_g ∘ c_t + b'_g)
        M_t = f' ⊙ tanh(W_3 * M + b_3) + i' ⊙ g'                            (W_3: k x k)
        o   = tanh(W_o * x_t + U_o ∘ h_{t-1} + V_o ∘ c_t + V^m_o ∘ M_t + b_o)

    ``o_from_h`` (default: False for ``paper``, True for ``openstl``) adds or drops the
    ``U_o ∘ h_{t-1}`` term on its own (the paper's Eq. 3 reads o from [x_t, c_t, M_t] only).

    The Gradient Highway Unit (GHU)::

        p, s = tanh, σ(W_{p,s} * u_t + U_{p,s} ∘ z_{t-1} + b)
        z_t  = s ⊙ p + (1 - s) ⊙ z_{t-1}

    - ``highway="output"`` (or ``True``; layer 1 of PredRNN++): u_t = h_t, the cell returns z_t (the
      next layer's input) and keeps its own h_t in ``state.h_lstm``.  The paper, OpenSTL and, in a
      flat stack, MS-RNN's code.
    - ``highway="input"``: u_t = x_t, and the Causal LSTM runs on z_t instead of x_t; the cell
      returns its h_t and keeps z_t in ``state.z``.  MS-RNN's code puts the GHU there, at layer 2: in
      a flat stack this is the same function as ``"output"`` on layer 1; in its MS-PredRNN++ pyramid
      the GHU runs at layer 2's 1/2 scale and the skip into layer 6 carries layer 1's h, not z.

    Returns the output (``z_t`` with ``highway="output"``, else ``h_t``), the state and M_t.

    Hadamard variants: every term whose operand is a state (h_{t-1}, c_{t-1}, c_t, M, M_t, z_{t-1}) is
    a recurrent term ``∘``.  Gates: i, f, i', f', o and the GHU's s — Hadamard under ``indconv`` and
    ``ind``; candidates g, g' and the GHU's p — convolutions under ``indconv``, Hadamard under ``ind``.
    Input terms (W * x_t, W * u_t into the GHU) and W_3, W_5 stay convolutions.

    Biases and forget bias: one bias per block on the input convolutions (and on W_3, W_5), none on
    recurrent terms.  The authors' code and OpenSTL have no biases and add a constant 1.0 to f and
    f'; here their biases start at ``forget_bias`` (default 1.0; the same function class, the
    constant folded into a trainable bias: :mod:`convrnn.convert` does exactly that on import).
    No LayerNorm (off in OpenSTL's and MS-RNN's Moving MNIST settings).

    Gating products per step: 5 (f⊙c, i⊙g, f'⊙tanh(W_3 M), i'⊙g', o⊙tanh(·)); +2 with a GHU
    (s⊙p, (1-s)⊙z), written as in the paper.
    """

    gating_products = 5
    zigzag = True

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0, o_from_h: bool | None = None,
                 highway: bool | str | None = False, variant: str = "paper"):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; choose one of {VARIANTS}")
        highway = "output" if highway is True else (highway or None)
        if highway is not None and highway not in HIGHWAYS:
            raise ValueError(f"highway={highway!r}; choose False, True (= 'output') or one of {HIGHWAYS}")
        self.variant = variant
        self.highway = highway
        self.o_from_h = (variant == "openstl") if o_from_h is None else bool(o_from_h)
        lstm_in = channels if highway == "input" else in_channels   # the GHU's z_t replaces x_t
        # Input blocks: (i, f | g) of the c path, then (i', f', o | g') matching self.vc.
        self.wx = input_conv(lstm_in, 7, channels, kernel)
        self.uh = self.recurrent_op(gates=2, candidates=1)    # on h_{t-1}: i, f | g
        self.uc = self.recurrent_op(gates=2, candidates=1)    # on c_{t-1}: i, f | g
        self.vc = self.recurrent_op(gates=3, candidates=1)    # on c_t:     i', f', o | g'
        self.um = self.recurrent_op(gates=2, candidates=int(variant == "paper"))  # on M: i', f' [| g']
        self.vm = self.recurrent_op(gates=1, candidates=0)    # on M_t:     o
        self.uo = self.recurrent_op(gates=1, candidates=0) if self.o_from_h else None  # on h_{t-1}: o
        w3 = 1 if variant == "paper" else kernel
        self.w3 = nn.Conv2d(channels, channels, w3, padding=w3 // 2)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)      # W_5
        set_forget_bias(self.wx, channels, (1, 4), forget_bias)
        if highway is not None:
            self.ghu_x = input_conv(in_channels if highway == "input" else channels, 2, channels, kernel)  # s, p
            self.ghu_z = self.recurrent_op(gates=1, candidates=1)            # on z_{t-1}: s | p
            self.gating_products = 7

    def init_state(self, x: Tensor) -> CausalLSTMState:
        return CausalLSTMState(self.zeros(x), self.zeros(x), self.zeros(x),
                               self.zeros(x) if self.highway == "output" else None,
                               self.zeros(x) if self.highway == "input" else None)

    def forward(self, x: Tensor, state: CausalLSTMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, CausalLSTMState, Tensor]:
        self.check(x)
        m = self.memory_in(x, state, m)
        state = state if state is not None else self.init_state(x)
        z = None
        if self.highway == "input":
            x = z = self.gradient_highway(x, state.z)
        h = state.h_lstm if self.highway == "output" else state.h
        c = state.c
        xc, xm = self.wx(x).split([3 * self.channels, 4 * self.channels], 1)
        i, f, g = (xc + self.uh(h) + self.uc(c)).chunk(3, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        i2, f2, o, g2 = (xm + self.vc(c)).chunk(4, 1)
        if self.variant == "paper":
            mi, mf, mg = self.um(m).chunk(3, 1)
            g2 = g2 + mg
        else:
            mi, mf = self.um(m).chunk(2, 1)
        m = torch.sigmoid(f2 + mf) * torch.tanh(self.w3(m)) + torch.sigmoid(i2 + mi) * torch.tanh(g2)
        o = o + self.vm(m)
        if self.uo is not None:
            o = o + self.uo(h)
        h = torch.tanh(o) * torch.tanh(self.fuse(torch.cat([c, m], 1)))
        if self.highway == "output":
            z = self.gradient_highway(h, state.h)
            return z, CausalLSTMState(z, c, m, h), m
        return h, CausalLSTMState(h, c, m, None, z), m

    def gradient_highway(self, u: Tensor, z: Tensor) -> Tensor:
        """GHU: z_t = s ⊙ p + (1 - s) ⊙ z_{t-1}, with p, s from u_t (h_t or x_t) and z_{t-1}."""
        # ghu_z orders its blocks gate first (s | p); the input conv is laid out the same way.
        s, p = (self.ghu_x(u) + self.ghu_z(z)).chunk(2, 1)
        s = torch.sigmoid(s)
        return s * torch.tanh(p) + (1 - s) * z

    def extra_repr(self) -> str:
        return super().extra_repr() + f", variant={self.variant!r}, highway={self.highway!r}, o_from_h={self.o_from_h}"
