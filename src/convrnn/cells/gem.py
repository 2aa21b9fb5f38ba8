"""GEM, the Gated Extra Memory unit (Vazhenina & Kanemura, JSAI 2020), as RECONSTRUCTED here from
its abstract: the published equations are not available (docs/models.md §2)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..layers import input_conv
from ..registry import register_cell
from .base import Cell


class GEMState(NamedTuple):
    h: Tensor
    e: Tensor  # the extra temporal memory e_t (not the zig-zag M of the PredRNN family)


@register_cell("gem", aliases={"gem_hadamard": "indconv"})
class GEM(Cell):
    """Gated Extra Memory unit: a RECONSTRUCTION from the abstract's constraints, not the paper's equations.

    Paper: Vazhenina & Kanemura, "Gated Extra Memory Recurrent Unit for Learning Video
    Representations", JSAI 2020 (AISC 1357, 2021).  Only its abstract is available: "a new gated
    architecture of the recurrent unit with temporal memory", with as many parameters and
    multiplications as ConvLSTM, and a Hadamard version with -14% parameters and -25%
    multiplications.  The equations below (docs/models.md §2) meet those counts — 4 blocks
    (8 convolutions) like ConvLSTM; Hadamard products in the 2 gates turn 2 of the 8 convolutions
    into Hadamard products — but how e_t enters h_t is a guess::

        g   = σ(W_g * x_t + U_g ∘ h_{t-1} + b_g)                            (memory gate)
        z   = σ(W_z * x_t + U_z ∘ h_{t-1} + b_z)                            (output mix gate)
        e_t = g ⊙ e_{t-1} + (1 - g) ⊙ tanh(W_e * x_t + U_e ∘ h_{t-1} + b_e)  (extra memory)
        h~  = tanh(W_h * x_t + U_h ∘ h_{t-1} + b_h)
        h_t = z ⊙ tanh(e_t) + (1 - z) ⊙ h~

    ``∘`` is a convolution ``*`` or a Hadamard product ``⊙`` per block: gates g, z are Hadamard in
    ``indconv`` (the abstract's Hadamard version, also named ``gem_hadamard``) and ``ind``; the
    candidates only in ``ind``.  Gating products per step: 4 (g⊙e, (1-g)⊙e~, z⊙tanh e, (1-z)⊙h~),
    one more C·H·W than ConvLSTM's 3.
    """

    gating_products = 4

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        self.wx = input_conv(in_channels, 4, channels, kernel)  # blocks g, z, e, h~
        self.uh = self.recurrent_op(gates=2, candidates=2)

    def init_state(self, x: Tensor) -> GEMState:
        return GEMState(self.zeros(x), self.zeros(x))

    def forward(self, x: Tensor, state: GEMState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, GEMState, Tensor | None]:
        self.check(x)
        h, e = state if state is not None else self.init_state(x)
        gates, cands = self.uh.add_to(self.wx(x), h).chunk(2, 1)   # W * x + b + U ∘ h: g, z | e~, h~
        g, z = torch.sigmoid(gates).chunk(2, 1)                     # one sigmoid, one tanh for two blocks each
        ec, hc = torch.tanh(cands).chunk(2, 1)
        e = torch.addcmul(g * e, 1 - g, ec)                         # g ⊙ e + (1 - g) ⊙ e~
        h = torch.addcmul(z * torch.tanh(e), 1 - z, hc)            # z ⊙ tanh(e) + (1 - z) ⊙ h~
        return h, GEMState(h, e), m
