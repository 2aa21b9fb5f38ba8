"""PredRNN-V2 (Wang et al., TPAMI 2022): the ST-LSTM exposing its memory increments, and the
network that adds the memory-decoupling loss."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..models.stack import RecurrentStack
from ..registry import register_cell, register_model
from .predrnn import SpatioTemporalLSTM


class PredRNNv2State(NamedTuple):
    h: Tensor
    c: Tensor
    m: Tensor
    delta_c: Tensor   # ΔC = i ⊙ g
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

    which :class:`PredRNNv2` decorrelates with its decoupling loss.  (Action-conditioned inputs of the
    paper are not implemented.)
    """

    def forward(self, x: Tensor, state: PredRNNv2State | None = None, memory: Tensor | None = None
                ) -> tuple[Tensor, PredRNNv2State]:
        h, c, m, dc, dm = self.step(x, state, memory)
        return h, PredRNNv2State(h, c, m, dc, dm)


def decoupling_loss(adapter: nn.Module, delta_c: Tensor, delta_m: Tensor) -> Tensor:
    """mean over batch and channels of |cos(adapter ΔC, adapter ΔM)|, the cosine taken over the
    spatial positions of each channel (PredRNN-V2, Eq. 8)."""
    a = adapter(delta_c).flatten(2)
    b = adapter(delta_m).flatten(2)
    return F.cosine_similarity(a, b, dim=2).abs().mean()


@register_model("predrnnv2")
class PredRNNv2(RecurrentStack):
    """PredRNN-V2 (Wang et al., TPAMI 2022): predrnnv2 cells plus the memory-decoupling loss.

    A :class:`~convrnn.models.stack.RecurrentStack` (flat, or MS-RNN with ``scales``) whose auxiliary
    loss is::

        L_decouple = mean over layers l, steps t, batch, channels c of
                     | <W_a * ΔC^l_t, W_a * ΔM^l_t>_c | / (‖W_a * ΔC^l_t‖_c ‖W_a * ΔM^l_t‖_c)

    where ``W_a`` is ONE 1x1 convolution (no bias) shared by all layers and ``<·,·>_c`` runs over the
    spatial positions of channel c.  The paper sums over layers, steps and channels; the authors' code
    (and OpenSTL) average, which only rescales β: we average.  ``Prediction.aux['decouple']`` is
    ``decouple_beta * L_decouple``; β = 0.1 (default) in the authors' Moving MNIST script and OpenSTL's
    config, next to an MSE averaged per pixel.  β is relative to the frame loss: with a loss summed over
    the C·H·W pixels of a frame (this library's trainer) the same balance is β = 0.1·C·H·W (409.6 at
    64x64x1); MS-RNN's code weighs 0.01 but sums over layers and channels (β = 0.01·L·C here).
    Train it with reverse scheduled sampling (:class:`convrnn.schedules.ReverseScheduled`).

    Args: every :class:`~convrnn.models.stack.RecurrentStack` argument (``cell`` defaults to
    ``predrnnv2``, its variants or a per-layer list with at least one PredRNN-V2 cell), plus
    ``decouple_beta``.
    """

    def __init__(self, cell: Any = "predrnnv2", layers: int = 4, decouple_beta: float = 0.1, **kw: Any):
        super().__init__(cell=cell, layers=layers, **kw)
        self.decoupled = sum(isinstance(c, PredRNNv2Cell) for c in self.cells)
        if not self.decoupled:
            raise ValueError(f"PredRNNv2 needs at least one 'predrnnv2' cell for its decoupling loss, got cell={cell!r}; "
                             "use the 'stack' model for other cells")
        if decouple_beta < 0:
            raise ValueError(f"decouple_beta must be >= 0, got {decouple_beta}")
        self.decouple_beta = decouple_beta
        self.adapter = nn.Conv2d(self.memory_channels, self.memory_channels, 1, bias=False)

    def layer_aux(self, layer: int, cell: nn.Module, state: Any) -> Tensor | None:
        if not isinstance(state, PredRNNv2State):
            return None
        return decoupling_loss(self.adapter, state.delta_c, state.delta_m)

    def aux_losses(self, total: Tensor | None, steps: int) -> dict:
        if total is None:
            return {}
        return {"decouple": self.decouple_beta * total / (steps * self.decoupled)}
