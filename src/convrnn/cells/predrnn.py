"""PredRNN's spatiotemporal LSTM (ST-LSTM, Wang et al., NeurIPS 2017) and its Hadamard variants.

Also holds :func:`zigzag_memory`, the memory-input rule shared by every cell of the PredRNN family
(PredRNN++, PredRNN-V2, MIM's first layer).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import input_conv
from ..registry import register_cell
from .base import Cell


class STLSTMState(NamedTuple):
    h: Tensor
    c: Tensor
    m: Tensor


def zigzag_memory(cell: Cell, x: Tensor, state, memory: Tensor | None) -> Tensor:
    """The memory M a PredRNN-family cell reads at this step.

    ``memory`` (passed by the network: M from the layer below, or from the top layer at the previous
    step) wins; without it a cell used on its own feeds back its own ``state.m`` (the zig-zag of a
    one-layer stack); at the first step M is zeros.  The shape must be (B, C, H, W) of the state.
    """
    if memory is None:
        return state.m if state is not None else cell.zeros(x)
    want = (x.shape[0], cell.channels, *x.shape[-2:])
    if tuple(memory.shape) != want:
        raise ValueError(f"{type(cell).__name__} expects the zig-zag memory M of shape {want} (batch, channels, "
                         f"and the spatial size of x), got {tuple(memory.shape)}; resample M to the layer's "
                         "scale and give every zig-zag layer the same channel count")
    return memory


def add_forget_bias(conv: nn.Conv2d, channels: int, blocks: tuple[int, ...], value: float) -> None:
    """Add ``value`` to the bias of the given output blocks of a fused convolution (forget gates)."""
    if value:
        with torch.no_grad():
            for b in blocks:
                conv.bias[b * channels:(b + 1) * channels].add_(value)


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

    Returns ``h_t`` and ``STLSTMState(h_t, c_t, M_t)``; the network passes ``M_t`` on.

    Hadamard variants (new for this family; reference/cells.md §1): every term whose operand is a
    state (h_{t-1}, M, c_t, M_t) is a recurrent term ``∘``.  The gates are i, f, o, i', f' — under
    ``indconv`` their state terms are Hadamard products (o's terms on c_t and M_t become per-position
    weights, i.e. ConvLSTM peepholes); the candidates g, g' keep convolutions under ``indconv`` and
    become Hadamard under ``ind``.  Input terms W * x_t and the 1x1 fusion stay convolutions.

    Choices where implementations differ from the paper:

    - forget bias: the authors' code adds a constant 1.0 to the pre-activations of f and f'.  We add
      ``forget_bias`` (default 1.0) to the initial biases of f and f' instead: the same function at
      initialisation and the same function class (the bias is trainable), one addition fewer.
    - no LayerNorm: the authors' code has a ``layer_norm`` switch; OpenSTL's and MS-RNN's Moving MNIST
      settings turn it off, and a LayerNorm over (C, H, W) would fix the state resolution.
    - biases: one bias per block on the input convolution; the recurrent convolutions have none (the
      authors' PredRNN code biases every convolution: redundant parameters, same function class).
    - the last convolution is 1x1 with bias, as in the paper and the authors' code.

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
        add_forget_bias(self.wx, channels, (1, 5), forget_bias)

    def init_state(self, x: Tensor) -> STLSTMState:
        return STLSTMState(self.zeros(x), self.zeros(x), self.zeros(x))

    def forward(self, x: Tensor, state: STLSTMState | None = None, memory: Tensor | None = None
                ) -> tuple[Tensor, STLSTMState]:
        h, c, m, _, _ = self.step(x, state, memory)
        return h, STLSTMState(h, c, m)

    def step(self, x: Tensor, state=None, memory: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One step; returns h_t, c_t, M_t and the increments ΔC = i ⊙ g, ΔM = i' ⊙ g'."""
        self.check(x)
        m = zigzag_memory(self, x, state, memory)
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
