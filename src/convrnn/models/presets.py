"""Network presets: the published arrangements of a cell family, each a
:class:`~convrnn.models.stack.RecurrentStack` (flat, or MS-RNN with ``scales=``).

- ``predrnnpp_net`` (PredRNN++, Wang et al. 2018): Causal LSTM layers, the Gradient Highway Unit on layer 1.

Each preset's ``variant`` selects a reference form (``paper``, ``openstl``, ``msrnn``, ``thuml``;
docs/references.md says where the references differ).
- ``predrnnv2_net`` (PredRNN-V2, Wang et al. 2022): PredRNN-V2 cells plus the memory-decoupling loss.
- ``mim_net`` (MIM, Wang et al. 2019): an ST-LSTM first layer, MIM blocks above.
- ``motionrnn_net`` (MotionRNN-MIM, Wu et al. 2021): an ST-LSTM first layer, MotionRNN layers above.

The cells themselves live in ``cells/``; a cell never knows its arrangement.  The older model names
(``predrnnpp``, ``predrnnv2``, ``mim``, ``motionrnn``, which are also cell names) still work as aliases.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..cells.predrnnv2 import PredRNNv2Cell, PredRNNv2State, decoupling_loss
from ..registry import register_model
from .base import positive_int
from .stack import RecurrentStack


PREDRNNPP_VARIANTS = ("paper", "openstl", "msrnn")


@register_model("predrnnpp_net", aliases=("predrnnpp",))
def predrnnpp_net(cell: str | Sequence[str] = "predrnnpp", layers: int = 4, layer_kw: Sequence[dict] | None = None,
                  variant: str = "paper", **kw: Any) -> RecurrentStack:
    """PredRNN++: Causal LSTM stack with the Gradient Highway Unit (Wang et al. 2018).

    ``variant``: ``"paper"`` (default) the paper's Causal LSTM, GHU on layer 1's output;
    ``"openstl"`` OpenSTL's Causal LSTM (cell ``variant="openstl"``), GHU on layer 1's output;
    ``"msrnn"`` MS-RNN's code: the paper's cell, GHU on layer 2's input (``highway="input"``; the same
    function in a flat stack, at layer 2's scale in an MS-RNN pyramid).  See
    :class:`~convrnn.cells.predrnnpp.CausalLSTM`.  Every
    :class:`~convrnn.models.stack.RecurrentStack` argument works (``scales`` for MS-RNN,
    ``cell_kw={'recurrent': 'indconv'}`` ...); ``layer_kw`` entries win over the variant's."""
    if variant not in PREDRNNPP_VARIANTS:
        raise ValueError(f"variant={variant!r}; choose one of {PREDRNNPP_VARIANTS}")
    layers = positive_int("layers", layers)
    if variant == "msrnn" and layers < 2:
        raise ValueError("variant='msrnn' puts the gradient highway on layer 2's input: it needs layers >= 2")
    per_layer = [{"variant": "openstl"} if variant == "openstl" else {} for _ in range(layers)]
    per_layer[1 if variant == "msrnn" else 0]["highway"] = "input" if variant == "msrnn" else "output"
    return RecurrentStack(cell=cell, layers=layers, layer_kw=merge_layer_kw(per_layer, layer_kw), **kw)


def merge_layer_kw(preset: list[dict], given: Sequence[dict] | None) -> list[dict]:
    """A preset's per-layer keyword arguments with the user's ``layer_kw`` entries over them."""
    if given is None:
        return preset
    if len(given) != len(preset):
        raise ValueError(f"layer_kw has {len(given)} entries for {len(preset)} layers")
    return [{**p, **dict(g or {})} for p, g in zip(preset, given)]


@register_model("predrnnv2_net", aliases=("predrnnv2",))
class PredRNNv2(RecurrentStack):
    """PredRNN-V2 (Wang et al., TPAMI 2022): predrnnv2 cells plus the memory-decoupling loss.

    A :class:`~convrnn.models.stack.RecurrentStack` (flat, or MS-RNN with ``scales``) whose auxiliary
    loss is::

        L_decouple = mean over layers l, steps t, batch, channels c of
                     | <W_a * ΔC^l_t, W_a * ΔM^l_t>_c | / (‖W_a * ΔC^l_t‖_c ‖W_a * ΔM^l_t‖_c)

    where ``W_a`` is ONE 1x1 convolution (no bias) shared by all layers and ``<·,·>_c`` runs over the
    spatial positions of channel c (:func:`convrnn.cells.predrnnv2.decoupling_loss`).  The paper sums
    over layers, steps and channels; the authors' code (and OpenSTL) average, which only rescales β:
    we average.  ``Prediction.aux['decouple']`` is ``decouple_beta * L_decouple``; β = 0.1 (default)
    in the authors' Moving MNIST script and OpenSTL's config, next to an MSE averaged per pixel.  β is
    relative to the frame loss: with a loss summed over the C·H·W pixels of a frame (this library's
    trainer) the same balance is β = 0.1·C·H·W (409.6 at 64x64x1); MS-RNN's code weighs 0.01 but sums
    over layers and channels (β = 0.01·L·C here).  Train it with reverse scheduled sampling
    (:class:`convrnn.schedules.ReverseScheduled`).

    Args: every :class:`~convrnn.models.stack.RecurrentStack` argument (``cell`` defaults to
    ``predrnnv2``, its variants or a per-layer list with at least one PredRNN-V2 cell), plus
    ``decouple_beta``.
    """

    def __init__(self, cell: str | Sequence[str] = "predrnnv2", layers: int = 4, decouple_beta: float = 0.1,
                 **kw: Any):
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


def preset_cells(name: str, layers: int, kw: dict) -> None:
    """Checks for the presets that fix their cells (an ST-LSTM-like first layer, then ``name`` blocks)."""
    if "cell" in kw:
        raise ValueError(f"the {name!r} model fixes its cells (predrnn, then {name}); to choose cells "
                         "yourself use name='stack' with cell=[...]")
    if positive_int("layers", layers) < 2:
        raise ValueError(f"the {name!r} model needs layers >= 2 (an ST-LSTM layer, then {name} blocks), "
                         f"got {layers}")


MIM_VARIANTS = ("paper", "msrnn", "openstl")


@register_model("mim_net", aliases=("mim",))
def mim_net(layers: int = 4, scales: Sequence[float] | None = None, variant: str = "paper",
            layer_kw: Sequence[dict] | None = None, **kw: Any) -> RecurrentStack:
    """MIM (Wang et al. 2019): ST-LSTM first layer, MIM blocks above; flat or MS-RNN (``scales``).

    ``variant`` is the MIM blocks' (:class:`~convrnn.cells.mim.MIM`): ``"paper"`` (default),
    ``"msrnn"`` (MS-RNN's difference input) or ``"openstl"`` (OpenSTL's MIMBlock/MIMN, with the MIM-N
    cascade from layer 3 up)."""
    preset_cells("mim", layers, kw)
    if variant not in MIM_VARIANTS:
        raise ValueError(f"variant={variant!r}; choose one of {MIM_VARIANTS}")
    per_layer = [{}] + [{"variant": variant}] * (layers - 1)
    return RecurrentStack(cell=["predrnn"] + ["mim"] * (layers - 1), layers=layers, scales=scales,
                          layer_kw=merge_layer_kw(per_layer, layer_kw), **kw)


MOTIONRNN_VARIANTS = ("paper", "msrnn", "thuml")


@register_model("motionrnn_net", aliases=("motionrnn",))
def motionrnn_net(layers: int = 4, scales: Sequence[float] | None = None, variant: str = "paper",
                  layer_kw: Sequence[dict] | None = None, **kw: Any) -> RecurrentStack:
    """MotionRNN-MIM (Wu et al. 2021): ST-LSTM first layer, MotionGRU + MIM blocks + Motion Highway above.

    ``variant`` (see :class:`~convrnn.cells.motionrnn.MotionRNN`):

    - ``"paper"`` (default): ``predrnn``, then ``motionrnn`` cells (MotionGRU before each block).
    - ``"msrnn"`` (MS-RNN's code): ``motionrnn(variant="msrnn", memory="lstm")`` (an ST-LSTM block with
      MotionGRU and highway), ``motionrnn(variant="msrnn")`` in layers 2 .. L-1, and a plain
      ``mim(variant="msrnn")`` on top (MS-RNN's top layer computes a MotionGRU it never uses).
      Layer 1's highway adds its input: the codec must give it C channels (``embed: conv1x1``).
    - ``"thuml"`` (the layout of thuml's code): ``motionrnn(variant="thuml")`` in every layer, an
      ST-LSTM block (``memory="lstm"``) in layer 1, no MotionGRU on top (``motion=False``)."""
    preset_cells("motionrnn", layers, kw)
    if variant not in MOTIONRNN_VARIANTS:
        raise ValueError(f"variant={variant!r}; choose one of {MOTIONRNN_VARIANTS}")
    if variant == "paper":
        cells, per_layer = ["predrnn"] + ["motionrnn"] * (layers - 1), [{}] * layers
    elif variant == "msrnn":
        cells = ["motionrnn"] * (layers - 1) + ["mim"]
        per_layer = [{"variant": "msrnn", "memory": "lstm"}] + [{"variant": "msrnn"}] * (layers - 1)
    else:
        cells = ["motionrnn"] * layers
        per_layer = ([{"variant": "thuml", "memory": "lstm"}] + [{"variant": "thuml"}] * (layers - 2)
                     + [{"variant": "thuml", "motion": False}])
    return RecurrentStack(cell=cells, layers=layers, scales=scales, layer_kw=merge_layer_kw(per_layer, layer_kw),
                          **kw)
