"""Recurrent cells, one file per family.  Importing this package registers them all.

To add a cell: write ``cells/<name>.py`` with a :class:`~convrnn.cells.base.Cell` subclass decorated
by :func:`~convrnn.registry.register_cell`, and import it below.
"""
from .base import Cell
from .convgru import ConvGRU, GRUState
from .convjanet import ConvJANET, JANETState
from .convlstm import ConvLSTM, LSTMState
from .gem import GEM, GEMState
from .mim import MIM, MIMState
from .motionrnn import MotionGRU, MotionRNN, MotionRNNState
from .preciplstm import PrecipLSTM, PrecipLSTMState
from .predrnn import SpatioTemporalLSTM, STLSTMState
from .predrnnpp import CausalLSTM, CausalLSTMState
from .predrnnv2 import PredRNNv2, PredRNNv2Cell, PredRNNv2State
from .rgclstm import RGCLSTM, RGCState
from .trajgru import TrajGRU, TrajGRUState

__all__ = [
    "Cell", "ConvLSTM", "LSTMState", "ConvGRU", "GRUState", "ConvJANET", "JANETState", "RGCLSTM", "RGCState",
    "GEM", "GEMState", "SpatioTemporalLSTM", "STLSTMState", "CausalLSTM", "CausalLSTMState", "PredRNNv2",
    "PredRNNv2Cell", "PredRNNv2State", "MIM", "MIMState", "MotionGRU", "MotionRNN", "MotionRNNState",
    "TrajGRU", "TrajGRUState", "PrecipLSTM", "PrecipLSTMState",
]
