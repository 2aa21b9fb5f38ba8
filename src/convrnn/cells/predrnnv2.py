"""PredRNN-V2 (Wang et al., TPAMI 2022): the ST-LSTM exposing its memory increments, and the
memory-decoupling loss.  The network that adds the loss is ``predrnnv2_net`` in
:mod:`convrnn.models.presets`."""
from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_cell
from .predrnn import SpatioTemporalLSTM


class PredRNNv2State(NamedTuple):
    h: Tensor
    c: Tensor
    m: Tensor
    delta_c: Tensor   # ΔC = i ⊙ g     (outputs for the decoupling loss, not read back by the cell)
    delta_m: Tensor   # ΔM = i' ⊙ g'


@register_cell("predrnnv2")
class PredRNNv2Cell(SpatioTemporalLSTM):
    """ST-LSTM of PredRNN-V2 exposing the memory increments ΔC, ΔM (Wang et al., TPAMI 2022).

    Wang, Wu, Long, Zhang, Wang, Gao & Yu, "PredRNN: A Recurrent Neural Network for Spatiotemporal
    Predictive Learning", TPAMI 2022.

    The equations are those of :class:`~convrnn.cells.predrnn.SpatioTemporalLSTM` (same parameters,
    same variants, same 5 gating products); the state also carries the memory increments::

        ΔC_t = i ⊙ g,    c_t = f ⊙ c_{t-1} + ΔC_t
        ΔM_t = i' ⊙ g',  M_t = f' ⊙ M + ΔM_t

    which :class:`convrnn.models.presets.PredRNNv2` decorrelates with :func:`decoupling_loss`.  (Action-conditioned inputs of the
    paper are not implemented.)
    """

    def forward(self, x: Tensor, state: PredRNNv2State | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, PredRNNv2State, Tensor]:
        h, c, m, dc, dm = self.step(x, state, m)
        return h, PredRNNv2State(h, c, m, dc, dm), m


def decoupling_loss(adapter: nn.Module, delta_c: Tensor, delta_m: Tensor) -> Tensor:
    """mean over batch and channels of |cos(adapter ΔC, adapter ΔM)|, the cosine taken over the
    spatial positions of each channel (PredRNN-V2, Eq. 8)."""
    a = adapter(delta_c).flatten(2)
    b = adapter(delta_m).flatten(2)
    return F.cosine_similarity(a, b, dim=2).abs().mean()
