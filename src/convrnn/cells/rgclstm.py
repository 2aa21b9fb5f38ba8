"""Reduced-gate ConvLSTM (rgcLSTM, Elsayed et al., 2018) and its Hadamard variants."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..layers import input_conv
from ..registry import register_cell
from .base import Cell, hard_sigmoid


class RGCLSTMState(NamedTuple):
    h: Tensor
    c: Tensor


@register_cell("rgclstm")
class RGCLSTM(Cell):
    """Reduced-gate ConvLSTM: one gate f serves as forget, input and output gate.

    Equations (Elsayed, Maida & Bayoumi 2018, "Reduced-Gate Convolutional LSTM Using Predictive
    Coding for Spatiotemporal Prediction")::

        f   = hard_sigmoid(W_f * x_t + U_fh ∘ h_{t-1} + U_fc ∘ c_{t-1} + b_f)
        g   = tanh(W_g * x_t + U_g ∘ h_{t-1} + b_g)
        c_t = f ⊙ c_{t-1} + f ⊙ g
        h_t = f ⊙ tanh(c_t)

    With convolutions, ``U_fh * h + U_fc * c`` is exactly the paper's ``W_f * [h; c]`` (one
    convolution over the concatenation, its kernel split along input channels), computed as two
    convolutions with the same parameters and multiplications.  ``∘`` is a convolution ``*`` or a
    Hadamard product ``⊙`` per block: the gate's two recurrent terms (from h, operator ``uh``'s first
    block, and from c, operator ``uc``) are Hadamard in ``indconv`` and ``ind``, each with its own
    weight, so the gate costs two Hadamard weights and 2·C·H·W products there; the candidate g is
    Hadamard only in ``ind``.  Gating products per step: 3 (f⊙c, f⊙g, f⊙tanh c), written literally.
    """

    gating_products = 3

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        self.wx = input_conv(in_channels, 2, channels, kernel)  # blocks f, g
        self.uh = self.recurrent_op(gates=1, candidates=1)      # U_fh, U_g on h
        self.uc = self.recurrent_op(gates=1, candidates=0)      # U_fc on c

    def init_state(self, x: Tensor) -> RGCLSTMState:
        return RGCLSTMState(self.zeros(x), self.zeros(x))

    def forward(self, x: Tensor, state: RGCLSTMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, RGCLSTMState, Tensor | None]:
        self.check(x)
        h, c = state if state is not None else self.init_state(x)
        xf, xg = self.wx(x).chunk(2, 1)
        uf, ug = self.uh(h).chunk(2, 1)
        f = hard_sigmoid(xf + uf + self.uc(c))
        c = f * c + f * torch.tanh(xg + ug)
        h = f * torch.tanh(c)
        return h, RGCLSTMState(h, c), m
