"""ConvGRU (Ballas et al., ICLR 2016) and its Hadamard variants (Vazhenina & Kanemura, 2019)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..layers import input_conv
from ..registry import register_cell
from .base import Cell


class ConvGRUState(NamedTuple):
    h: Tensor


@register_cell("convgru", aliases={"convindconvgru": "indconv", "convindgru": "ind"})
class ConvGRU(Cell):
    """ConvGRU cell; ``recurrent`` selects Conv / ConvIndConv / ConvInd (Hadamard) recurrent terms.

    Equations (Ballas et al. 2016, "Delving Deeper into Convolutional Networks for Learning Video
    Representations")::

        z, r = σ(W_{z,r} * x_t + U_{z,r} ∘ h_{t-1} + b_{z,r})
        h~   = tanh(W_h * x_t + U_h ∘ (r ⊙ h_{t-1}) + b_h)
        h_t  = (1 - z) ⊙ h_{t-1} + z ⊙ h~

    ``∘`` is a convolution ``*`` or a Hadamard product ``⊙`` per block: gates z, r are Hadamard in
    ``indconv`` and ``ind``; the candidate h~ only in ``ind``.  The candidate's recurrent term acts
    on ``r ⊙ h``, so it has its own recurrent operator ``uc`` (the gates' is ``uh``).
    Gating products per step: 3 (r⊙h, (1-z)⊙h, z⊙h~), written literally.
    """

    gating_products = 3

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        self.wx = input_conv(in_channels, 3, channels, kernel)  # blocks z, r, h~
        self.uh = self.recurrent_op(gates=2, candidates=0)      # U_z, U_r on h
        self.uc = self.recurrent_op(gates=0, candidates=1)      # U_h on r ⊙ h

    def init_state(self, x: Tensor) -> ConvGRUState:
        return ConvGRUState(self.zeros(x))

    def forward(self, x: Tensor, state: ConvGRUState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, ConvGRUState, Tensor | None]:
        self.check(x)
        (h,) = state if state is not None else self.init_state(x)
        pre, c = self.wx(x), self.channels                               # blocks z, r, h~
        z, r = torch.sigmoid(self.uh.add_to(pre[:, :2 * c], h)).chunk(2, 1)   # one sigmoid for both gates
        cand = torch.tanh(self.uc.add_to(pre[:, 2 * c:], r * h))
        h = torch.addcmul((1 - z) * h, z, cand)                         # (1 - z) ⊙ h + z ⊙ h~
        return h, ConvGRUState(h), m
