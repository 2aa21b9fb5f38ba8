"""PredRNN's spatiotemporal LSTM (ST-LSTM, Wang et al., NeurIPS 2017) and its Hadamard variants."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


class SpatioTemporalLSTMState(NamedTuple):
    h: Tensor
    c: Tensor
    m: Tensor


@register_cell("predrnn")
class SpatioTemporalLSTM(Cell):
    """ST-LSTM, the spatiotemporal LSTM of PredRNN (Wang et al., NeurIPS 2017).

    Wang, Long, Wang, Gao & Yu, "PredRNN: Recurrent Neural Networks for Predictive Learning using
    Spatiotemporal LSTMs", NeurIPS 2017.

    Two memories: the temporal c (per layer, through time, updated as in ConvLSTM) and the
    spatiotemporal M, which zig-zags through the stack (layer l reads M from layer l-1 at the same
    step; layer 1 reads it from the top layer at the previous step)::

        i, f, g    = σ, σ, tanh(W_{i,f,g} * x_t + U_{i,f,g} ∘ h_{t-1} + b)
        c_t        = f ⊙ c_{t-1} + i ⊙ g
        i', f', g' = σ, σ, tanh(W'_{i,f,g} * x_t + U'_{i,f,g} ∘ M + b')        (M: from below)
        M_t        = f' ⊙ M + i' ⊙ g'
        o          = σ(W_o * x_t + U_o ∘ h_{t-1} + V_c ∘ c_t + V_m ∘ M_t + b_o)
        h_t        = o ⊙ tanh(W_{1x1} * [c_t, M_t] + b_{1x1})

    Returns ``h_t``, ``SpatioTemporalLSTMState(h_t, c_t, M_t)`` and ``M_t``, which the network passes on.

    Hadamard variants (new for this family; docs/models.md §1): every term whose operand is a
    state (h_{t-1}, M, c_t, M_t) is a recurrent term ``∘``.  The gates are i, f, o, i', f' — under
    ``indconv`` their state terms are Hadamard products (o's terms on c_t and M_t become per-position
    weights, i.e. ConvLSTM peepholes); the candidates g, g' keep convolutions under ``indconv`` and
    become Hadamard under ``ind``.  Input terms W * x_t and the 1x1 fusion stay convolutions.

    Choices where implementations differ from the paper:

    - forget bias: the authors' code (thuml/predrnn-pytorch) and OpenSTL add a constant 1.0 to the
      pre-activations of f and f'.  We initialise the biases of f and f' to ``forget_bias`` (default
      1.0) instead: the same function class (the bias is trainable), one addition fewer;
      :mod:`convrnn.convert` folds the constant into these biases on import.  MS-RNN's code adds no
      constant (its configs here use ``forget_bias: 0``, PyTorch's default bias initialisation).
    - no LayerNorm: the authors' code has a ``layer_norm`` switch; OpenSTL's and MS-RNN's Moving MNIST
      settings turn it off, and a LayerNorm over (C, H, W) would fix the state resolution.
    - biases: one bias per block on the input convolution; the recurrent convolutions have none.
      The authors' code and OpenSTL have no bias anywhere (``bias=False``, the constant forget bias
      aside); MS-RNN's code biases every convolution (redundant on the recurrent ones: the same
      function class, 576 more parameters per layer at C = 64).
    - the last convolution is 1x1 with bias, as in the paper (the authors' code and OpenSTL: no bias).
    - o's terms on c_t and M_t: OpenSTL (and the authors' code) compute them as one k x k
      convolution of [c_t, M_t]; that is V_c * c_t + V_m * M_t, the same function.

    Gating products per step: 5 (f⊙c, i⊙g, f'⊙M, i'⊙g', o⊙tanh(·)).
    """

    gating_products = 5
    zigzag = True

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        # Input blocks in the order of the recurrent ops below: (i, f, o | g) then (i', f' | g').
        self.wx = input_conv(in_channels, 7, channels, kernel)
        self.uh = self.recurrent_op(gates=3, candidates=1)   # on h_{t-1}: i, f, o | g
        self.um = self.recurrent_op(gates=2, candidates=1)   # on M:       i', f' | g'
        self.vc = self.recurrent_op(gates=1, candidates=0)   # on c_t:     o
        self.vm = self.recurrent_op(gates=1, candidates=0)   # on M_t:     o
        self.fuse = nn.Conv2d(2 * channels, channels, 1)     # W_{1x1} * [c_t, M_t]
        set_forget_bias(self.wx, channels, (1, 5), forget_bias)

    def init_state(self, x: Tensor) -> SpatioTemporalLSTMState:
        return SpatioTemporalLSTMState(self.zeros(x), self.zeros(x), self.zeros(x))

    def forward(self, x: Tensor, state: SpatioTemporalLSTMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, SpatioTemporalLSTMState, Tensor]:
        h, c, m, _, _ = self.step(x, state, m)
        return h, SpatioTemporalLSTMState(h, c, m), m

    def step(self, x: Tensor, state=None, m: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One step; returns h_t, c_t, M_t and the increments ΔC = i ⊙ g, ΔM = i' ⊙ g'."""
        self.check(x)
        m = self.memory_in(x, state, m)
        h, c = (state.h, state.c) if state is not None else (self.zeros(x), self.zeros(x))
        xc, xm = self.wx(x).split([4 * self.channels, 3 * self.channels], 1)
        i, f, o, g = (xc + self.uh(h)).chunk(4, 1)
        i2, f2, g2 = (xm + self.um(m)).chunk(3, 1)
        delta_c = torch.sigmoid(i) * torch.tanh(g)
        c = torch.sigmoid(f) * c + delta_c
        delta_m = torch.sigmoid(i2) * torch.tanh(g2)
        m = torch.sigmoid(f2) * m + delta_m
        o = torch.sigmoid(o + self.vc(c) + self.vm(m))
        h = o * torch.tanh(self.fuse(torch.cat([c, m], 1)))
        return h, c, m, delta_c, delta_m
