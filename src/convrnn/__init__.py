"""convrnn: light convolutional recurrent networks for spatiotemporal prediction.

Cells do one step ``h, state, m = cell(x, state, m)`` on (B, C, H, W); networks take sequences
(B, T, C, H, W).  Build anything by name::

    from convrnn import create_cell, create_model
    cell = create_cell("convlstm_indconv", in_channels=16, channels=64, size=(16, 16))
    model = create_model("msrnn", cell="predrnn", channels=64, frame_size=(64, 64))

Use a trained one with :class:`Forecaster` (predict, stream, save/load as safetensors)::

    from convrnn import Forecaster
    forecaster = Forecaster.from_checkpoint("runs/quickstart/<run>/checkpoints/last.ckpt")
    future = forecaster.predict(frames)
"""
from . import cells, models  # noqa: F401  (importing them fills the registries)
from .forecaster import Forecaster, Stream, list_pretrained
from .registry import (
    cell_families,
    create_cell,
    create_model,
    list_cells,
    list_models,
    model_aliases,
    model_from_config,
    register_cell,
    register_model,
)

__version__ = "0.1.0"
