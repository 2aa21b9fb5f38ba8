"""Recurrent cells, one file per family.  Importing this package registers them all.

To add a cell: write ``cells/<name>.py`` with a :class:`~convrnn.cells.base.Cell` subclass decorated
by :func:`~convrnn.registry.register_cell`, and add one import line below (docs/architecture.md has a
worked example).  The registry-driven contract tests (tests/test_contract.py) then test it.
"""
from .base import Cell
from .convgru import ConvGRU, ConvGRUState
from .convjanet import ConvJANET, ConvJANETState
from .convlstm import ConvLSTM, ConvLSTMState
from .gem import GEM, GEMState
from .mim import MIM, MIMState
from .motionrnn import MotionGRU, MotionRNN, MotionRNNState
from .preciplstm import PrecipLSTM, PrecipLSTMState
from .predrnn import SpatioTemporalLSTM, SpatioTemporalLSTMState
from .predrnnpp import CausalLSTM, CausalLSTMState
from .predrnnv2 import PredRNNv2Cell, PredRNNv2State
from .rgclstm import RGCLSTM, RGCLSTMState
from .trajgru import TrajGRU, TrajGRUState
