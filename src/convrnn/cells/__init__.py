"""Recurrent cells, one file per family.  Importing this package registers them all.

To add a cell: write ``cells/<name>.py`` with a :class:`~convrnn.cells.base.Cell` subclass decorated
by :func:`~convrnn.registry.register_cell`, and import it below.
"""
from .base import Cell
from .convlstm import ConvLSTM, LSTMState

__all__ = ["Cell", "ConvLSTM", "LSTMState"]
