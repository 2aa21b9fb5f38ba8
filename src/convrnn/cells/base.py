"""The cell interface shared by every recurrent cell.

Every cell has ONE signature, like ``torch.nn.LSTMCell(input, hx=None)``::

    h, state, m = cell(x, state=None, m=None)

on (B, C, H, W) tensors: ``x`` the input of this step, ``state`` the cell's own recurrent state (a
NamedTuple whose field ``h`` is the cell's output; ``None`` means zeros sized from ``x``, lazily, so
one cell serves any batch), ``m`` the zig-zag spatiotemporal memory of the PredRNN family.  A cell
that uses ``m`` (``zigzag = True``) reads it (zeros when None; without it a cell used on its own feeds
back its own ``state.m``) and returns the new M; every other cell returns ``m`` unchanged.  So a
network threads ``m`` through every layer without asking what a cell is: a cell never knows where it
is in the stack.

Two reference forms need more than x from the layer below (MIM's and MotionRNN's difference input
in MS-RNN's code, OpenSTL's MIM-N cascade, the thuml Motion Highway): a cell that sets
``reads_below = True`` is called ``cell(x, state, m, below=Below(direct, lateral))`` by the network
(:func:`convrnn.models.stack.step_layers`) and must work with ``below=None`` (a cell on its own).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..layers import RecurrentOp, _pair, block_kinds, check_input


class Below(NamedTuple):
    """What the network hands a ``reads_below`` cell besides its input x at one step.

    Attributes:
        direct: the input without the skips added, R(h^{l-1}_t) (R resamples to this layer's size);
            equal to x at layer 1 and wherever no skip arrives.
        lateral: the ``lateral`` field of the state the layer below produced at this step, resampled
            to this layer's size; None at layer 1 and when the layer below has no such field.
    """
    direct: Tensor
    lateral: Tensor | None


class Cell(nn.Module):
    """Base class: holds the sizes and the recurrent-operator options of a cell.

    Args:
        in_channels: C_x, channels of the input x_t.
        channels: C, channels of every state.
        kernel: k of the input and recurrent convolutions.
        recurrent: ``'conv'`` | ``'indconv'`` | ``'ind'`` (docs/models.md §1).
        hadamard: ``'position'`` (U ∈ R^{CxHxW}, the seeds') or ``'channel'`` (U ∈ R^{Cx1x1}).
        size: (H, W) of the state; required by per-position Hadamard weights (and peepholes).

    Subclasses implement ``init_state(x)`` and ``forward(x, state=None, m=None) -> (h, state, m)``.
    Cost hooks (see :mod:`convrnn.cost`): ``gating_products`` and, for work the structural walker
    cannot see, ``extra_macs(height, width)`` (matrix products), ``extra_mults(height, width)``
    (elementwise products) and ``map_sizes(height, width)``.
    """

    #: elementwise gating products per step, in units of C*H*W (f⊙c, i⊙g, o⊙tanh(c) -> 3 for LSTM);
    #: used by the analytic multiplication count of :mod:`convrnn.cost`.
    gating_products: int = 0
    #: reads/writes the zig-zag memory M (PredRNN family).
    zigzag: bool = False
    #: called as ``cell(x, state, m, below=Below(...))`` by the network (see :class:`Below`).
    reads_below: bool = False
    #: the state's H and W must be divisible by this (e.g. 2 for MotionRNN's stride-2 encoder).
    size_multiple: int = 1
    registry_name: str = ""

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None):
        super().__init__()
        if in_channels <= 0 or channels <= 0:
            raise ValueError(f"channels must be positive, got in_channels={in_channels}, channels={channels}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd to keep the spatial size ('same' padding), got {kernel}")
        self.in_channels = in_channels
        self.channels = channels
        self.kernel = kernel
        self.recurrent = recurrent
        self.hadamard = hadamard
        self.size = _pair(size)

    # -- helpers for subclasses -------------------------------------------------------------
    def recurrent_op(self, gates: int, candidates: int, in_channels: int | None = None) -> RecurrentOp:
        """The recurrent terms of ``gates`` gate blocks then ``candidates`` candidate blocks,
        convolution or Hadamard as ``self.recurrent`` says."""
        return RecurrentOp(self.channels, block_kinds(self.recurrent, gates, candidates), self.kernel,
                           self.hadamard, self.size, in_channels)

    def zeros(self, x: Tensor, channels: int | None = None) -> Tensor:
        b, _, h, w = x.shape
        return x.new_zeros(b, channels or self.channels, h, w)

    def check(self, x: Tensor) -> None:
        check_input(x, self.in_channels, type(self).__name__)

    def memory_in(self, x: Tensor, state: Any, m: Tensor | None) -> Tensor:
        """The zig-zag memory M a PredRNN-family cell reads at this step.

        ``m`` (passed by the network: M from the layer below, or from the top layer at the previous
        step) wins; without it a cell used on its own feeds back its own ``state.m`` (the zig-zag of a
        one-layer stack); at the first step M is zeros.  The shape must be (B, C, H, W) of the state.
        """
        if m is None:
            return state.m if state is not None else self.zeros(x)
        want = (x.shape[0], self.channels, *x.shape[-2:])
        if tuple(m.shape) != want:
            raise ValueError(f"{type(self).__name__} expects the zig-zag memory M of shape {want} (batch, "
                             f"channels, and the spatial size of x), got {tuple(m.shape)}; resample M to the "
                             "layer's scale and give every zig-zag layer the same channel count")
        return m

    def init_state(self, x: Tensor) -> Any:  # pragma: no cover - every cell overrides
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.channels}, kernel={self.kernel}, recurrent={self.recurrent!r}, "
                f"hadamard={self.hadamard!r}, size={self.size}")


def hard_sigmoid(x: Tensor) -> Tensor:
    """Keras' hard sigmoid clip(0.2 x + 0.5, 0, 1), as used by rgcLSTM (one multiply by a constant,
    which is a scaling, not a product of two signals)."""
    return torch.clamp(x * 0.2 + 0.5, 0.0, 1.0)
