"""ConvJANET (van der Westhuizen & Lasenby, 2018, convolutional) and its Hadamard variants
(Vazhenina & Kanemura, 2019)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..layers import input_conv, set_forget_bias
from ..registry import register_cell
from .base import Cell


class ConvJANETState(NamedTuple):
    h: Tensor  # JANET's output is its cell state: h_t = c_t, so one tensor is the whole state


@register_cell("convjanet", aliases={"convindconvjanet": "indconv", "convindjanet": "ind"})
class ConvJANET(Cell):
    """ConvJANET cell (forget gate only); ``recurrent`` selects Conv / ConvIndConv / ConvInd terms.

    Equations (van der Westhuizen & Lasenby 2018, "The unreasonable effectiveness of the forget
    gate", with convolutions)::

        s   = W_f * x_t + U_f ∘ h_{t-1} + b_f
        c~  = tanh(W_c * x_t + U_c ∘ h_{t-1} + b_c)
        c_t = σ(s) ⊙ c_{t-1} + (1 - σ(s - β)) ⊙ c~,   β = 1
        h_t = c_t

    ``∘`` is a convolution ``*`` or a Hadamard product ``⊙`` per block: the gate is Hadamard in
    ``indconv`` and ``ind``; the candidate only in ``ind``.  Since ``h_t = c_t`` the state holds only
    ``h``.  Forget bias: chrono initialisation ``b_f = log U[1, T_max - 1]`` (Tallec & Ollivier 2018)
    when ``chrono_tmax`` is given, else ``b_f = 1``.  Gating products per step: 2.
    """

    gating_products = 2
    beta = 1.0

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, chrono_tmax: int | None = None):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        if chrono_tmax is not None and chrono_tmax < 2:
            raise ValueError(f"chrono_tmax is the longest expected dependency in steps (>= 2), got {chrono_tmax}; "
                             "pass None for the default forget bias of 1")
        self.chrono_tmax = chrono_tmax
        self.wx = input_conv(in_channels, 2, channels, kernel)  # blocks f, c
        self.uh = self.recurrent_op(gates=1, candidates=1)
        chrono = None if chrono_tmax is None else torch.empty(channels).uniform_(1.0, chrono_tmax - 1.0).log_()
        set_forget_bias(self.wx, channels, (0,), 1.0 if chrono is None else chrono)

    def init_state(self, x: Tensor) -> ConvJANETState:
        return ConvJANETState(self.zeros(x))

    def forward(self, x: Tensor, state: ConvJANETState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, ConvJANETState, Tensor | None]:
        self.check(x)
        (c,) = state if state is not None else self.init_state(x)
        s, g = self.uh.add_to(self.wx(x), c).chunk(2, 1)   # W * x + b + U ∘ h, blocks f, c~
        c = torch.addcmul(torch.sigmoid(s) * c, 1 - torch.sigmoid(s - self.beta), torch.tanh(g))
        return c, ConvJANETState(c), m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", chrono_tmax={self.chrono_tmax}"
