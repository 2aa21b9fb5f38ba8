"""ConvLSTM (Shi et al., NeurIPS 2015) and its Hadamard variants (Vazhenina & Kanemura, 2019)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


class ConvLSTMState(NamedTuple):
    h: Tensor
    c: Tensor


@register_cell("convlstm", aliases={"convindconvlstm": "indconv", "convindlstm": "ind"})
class ConvLSTM(Cell):
    """ConvLSTM cell; ``recurrent`` selects Conv / ConvIndConv / ConvInd (Hadamard) recurrent terms.

    Equations (Shi et al. 2015, "Convolutional LSTM Network", without peepholes as in seed 003)::

        i, f, o = σ(W_{i,f,o} * x_t + U_{i,f,o} ∘ h_{t-1} + b_{i,f,o})
        g       = tanh(W_g * x_t + U_g ∘ h_{t-1} + b_g)
        c_t     = f ⊙ c_{t-1} + i ⊙ g
        h_t     = o ⊙ tanh(c_t)

    ``∘`` is a convolution ``*`` or a Hadamard product ``⊙`` per block: gates i, f, o are Hadamard
    in ``indconv`` and ``ind``; the candidate g only in ``ind``.  Seed 003 prints
    ``h_t = tanh(c_t ⊙ o_t)``; we use the standard ``o ⊙ tanh(c_t)``.

    With ``peephole=True`` the gates also see the cell state through per-position weights
    (Shi et al.): ``i, f += W_{ci,cf} ⊙ c_{t-1}``, ``o += W_{co} ⊙ c_t`` (needs ``size``).
    Gating products per step: 3 (f⊙c, i⊙g, o⊙tanh c).
    """

    gating_products = 3

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, peephole: bool = False, forget_bias: float = 0.0):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        self.wx = input_conv(in_channels, 4, channels, kernel)  # blocks i, f, o, g
        self.uh = self.recurrent_op(gates=3, candidates=1)
        self.peephole = peephole
        if peephole:
            if self.size is None:
                raise ValueError("peephole weights are per position (C x H x W): pass size=(H, W)")
            self.w_peep = nn.Parameter(torch.zeros(3, channels, *self.size))
        set_forget_bias(self.wx, channels, (1,), forget_bias)

    def check_peephole(self, c: Tensor) -> None:
        if tuple(c.shape[-2:]) != self.size:
            raise ValueError(
                f"state of spatial size {tuple(c.shape[-2:])} does not match the per-position peephole weights "
                f"of size {self.size}: build the cell with size={tuple(c.shape[-2:])}")

    def init_state(self, x: Tensor) -> ConvLSTMState:
        return ConvLSTMState(self.zeros(x), self.zeros(x))

    def forward(self, x: Tensor, state: ConvLSTMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, ConvLSTMState, Tensor | None]:
        self.check(x)
        h, c = state if state is not None else self.init_state(x)
        pre = self.uh.add_to(self.wx(x), h)              # W * x + b + U ∘ h, blocks i, f, o, g
        if self.peephole:
            self.check_peephole(c)
            i, f, o, g = pre.chunk(4, 1)
            i = i + self.w_peep[0] * c
            f = f + self.w_peep[1] * c
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            o = o + self.w_peep[2] * c
            h = torch.sigmoid(o) * torch.tanh(c)
            return h, ConvLSTMState(h, c), m
        gates, g = pre.split((3 * self.channels, self.channels), 1)
        i, f, o = torch.sigmoid(gates).chunk(3, 1)       # one sigmoid for the three gates
        c = torch.addcmul(f * c, i, torch.tanh(g))       # f ⊙ c + i ⊙ g
        h = o * torch.tanh(c)
        return h, ConvLSTMState(h, c), m
