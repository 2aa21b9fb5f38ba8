"""TrajGRU (Shi et al., NeurIPS 2017): a ConvGRU whose recurrent connections follow learned flows."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import RecurrentOp, bilinear_sample, block_kinds, input_conv
from ..registry import register_cell
from .base import Cell


class TrajGRUState(NamedTuple):
    h: Tensor


def warp_links(h: Tensor, flows: Tensor) -> Tensor:
    """Warp h by each of L flow fields: ``out[:, c, l, i, j] = h[:, c, i + V_l[i, j], j + U_l[i, j]]``,
    sampled bilinearly, zeros outside the map (the paper's warp).  Zero flow gives h.

    h: (B, C, H, W); flows: (B, 2L, H, W) in pixels as L pairs (U_l, V_l) = (horizontal, vertical).
    Returns (B, C, L, H, W), all L fields sampled at once by :func:`convrnn.layers.bilinear_sample`.
    """
    b, _, height, width = h.shape
    if flows.dim() != 4 or flows.shape[0] != b or flows.shape[1] % 2 or flows.shape[-2:] != h.shape[-2:]:
        raise ValueError(f"flows must have shape (B, 2L, H, W) = ({b}, 2L, {height}, {width}) to warp a map of "
                         f"shape {tuple(h.shape)}, got {tuple(flows.shape)}")
    f = flows.view(b, flows.shape[1] // 2, 2, height, width)
    cols = torch.arange(width, device=h.device, dtype=h.dtype).view(1, 1, 1, width)
    rows = torch.arange(height, device=h.device, dtype=h.dtype).view(1, 1, height, 1)
    return bilinear_sample(h, cols + f[:, :, 0], rows + f[:, :, 1])


@register_cell("trajgru")
class TrajGRU(Cell):
    """TrajGRU, the trajectory GRU of Shi, Gao, Lausen, Wang, Yeung, Wong & Woo, "Deep Learning for
    Precipitation Nowcasting: A Benchmark and a New Model", NeurIPS 2017.

    A ConvGRU whose state-to-state connections are not a fixed k x k neighbourhood but L learned
    links per position: a small network γ turns (x_t, h_{t-1}) into L flow fields (U_l, V_l), h_{t-1}
    is warped along each, and 1x1 convolutions over the L warped maps give the recurrent terms::

        (U, V)_{1..L} = γ(x_t, h_{t-1})
                      = W_f * LeakyReLU(W_fx * x_t + W_fh * h_{t-1} + b) + b_f        (2L channels)
        w_l  = warp(h_{t-1}, U_l, V_l)        (bilinear sample at (i + V_l, j + U_l), zeros outside)
        z    = σ(W_xz * x_t + Σ_l U_z^l ∘ w_l + b_z)
        r    = σ(W_xr * x_t + Σ_l U_r^l ∘ w_l + b_r)
        h~   = LeakyReLU(W_xh * x_t + r ⊙ (Σ_l U_h^l ∘ w_l [+ b_hh]) + b_h)  (negative slope 0.2)
        h_t  = (1 - z) ⊙ h~ + z ⊙ h_{t-1}

    ``U^l ∘ w_l`` is the paper's 1x1 convolution (``recurrent='conv'``).  Hadamard variants (new for
    this cell; docs/models.md §1): each link's 1x1 convolution becomes a Hadamard weight,
    ``Σ_l U^l ⊙ w_l`` (a :class:`~convrnn.layers.RecurrentOp` with ``links=L``: the 1x1 convolutions of
    all blocks fused over the L·C warped channels, channel ``c·L + l`` = channel c of link l; no bias,
    the biases live in the input convolution), in the gates z, r under ``indconv`` and also in
    the candidate under ``ind``.  The flow network γ (its convolutions on x and h), the input
    convolutions W_x * x and the warp stay as they are in every variant.

    Facts and choices (paper vs. implementations):

    - links L: default 13.  The authors' configs (sxjscience/HKO-7) use L = 13 in every layer of the
      Moving MNIST++ model (they also compare L = 5, 9, 17) and 13, 13, 9 on HKO-7.  MS-RNN's code
      uses L = 10.
    - γ: the authors' code (sxjscience/HKO-7) uses 5x5 convolutions, 32 hidden channels and a
      LeakyReLU(0.2) hidden activation: the defaults ``flow_kernel=5, flow_channels=32``.  MS-RNN's
      code uses k x k convolutions with C hidden channels (``flow_kernel=3, flow_channels=64`` at
      6 x 64, with L = 10: its 1.916 M parameters).
    - flows start at zero (warp = identity): the authors' code zero-initialises the last flow
      convolution (``INIT_GRID``); we do the same.  MS-RNN's code initialises it at random.
    - warp direction: the paper samples at (i + V, j + U); both codes warp by ``-flow``, the same
      model with the last flow convolution negated.  Bilinear, zero padding (the paper's sum over
      in-map pixels; mxnet's BilinearSampler), pixel centres exact (MS-RNN's code mixes
      ``align_corners=False`` with a (W - 1) normalisation: a sub-pixel offset).
    - gate layout as the paper: r multiplies the projected recurrent term (not r ⊙ h before the
      convolution as in ConvGRU), z keeps the old state.
    - biases: one per block on the input convolution and one on γ's hidden layer; γ's state
      convolution has none (both codes bias it: redundant, it adds to the hidden layer's bias).  Both
      codes also bias the 1x1 projection: redundant for z and r (it adds to their input biases), but
      not for the candidate, where it sits inside r ⊙ (·): ``candidate_bias=True`` adds that b_hh
      (a different function class; the MS-RNN configs use it), the default leaves it out.
    - zoneout (the authors' optional regulariser) is not implemented.

    Multiplications per step: ``gating_products = 3`` C·H·W products (r ⊙ ·, (1-z) ⊙ h~, z ⊙ h); the
    link Hadamard products are L·C·H·W each, and the warp's bilinear sampling is counted in
    :meth:`extra_mults`.
    """

    gating_products = 3

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, links: int = 13, flow_channels: int = 32,
                 flow_kernel: int = 5, candidate_bias: bool = False):
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size)
        if links < 1 or flow_channels < 1:
            raise ValueError(f"links and flow_channels must be positive, got links={links}, "
                             f"flow_channels={flow_channels}")
        if flow_kernel % 2 == 0:
            raise ValueError(f"flow_kernel must be odd to keep the spatial size, got {flow_kernel}")
        self.links = links
        self.wx = input_conv(in_channels, 3, channels, kernel)  # blocks z, r, h~
        pad = flow_kernel // 2
        self.flow_x = nn.Conv2d(in_channels, flow_channels, flow_kernel, padding=pad)
        self.flow_h = nn.Conv2d(channels, flow_channels, flow_kernel, padding=pad, bias=False)
        self.flow_out = nn.Conv2d(flow_channels, 2 * links, flow_kernel, padding=pad)
        nn.init.zeros_(self.flow_out.weight)
        nn.init.zeros_(self.flow_out.bias)
        self.uh = RecurrentOp(channels, block_kinds(recurrent, 2, 1), 1, hadamard, self.size, links=links)
        self.b_hh = nn.Parameter(torch.zeros(channels)) if candidate_bias else None   # inside r ⊙ (·)

    def init_state(self, x: Tensor) -> TrajGRUState:
        return TrajGRUState(self.zeros(x))

    def flows(self, x: Tensor, h: Tensor) -> Tensor:
        """γ(x_t, h_{t-1}): the L flow fields, (B, 2L, H, W) as pairs (U_l, V_l) in pixels."""
        return self.flow_out(F.leaky_relu(self.flow_x(x) + self.flow_h(h), 0.2))

    def forward(self, x: Tensor, state: TrajGRUState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, TrajGRUState, Tensor | None]:
        self.check(x)
        (h,) = state if state is not None else self.init_state(x)
        xz, xr, xh = self.wx(x).chunk(3, 1)
        uz, ur, uh = self.uh(warp_links(h, self.flows(x, h)).flatten(1, 2)).chunk(3, 1)
        z = torch.sigmoid(xz + uz)
        r = torch.sigmoid(xr + ur)
        if self.b_hh is not None:
            uh = uh + self.b_hh.view(1, -1, 1, 1)
        cand = F.leaky_relu(xh + r * uh, 0.2)
        h = (1 - z) * cand + z * h
        return h, TrajGRUState(h), m

    def extra_mults(self, height: int, width: int) -> int:
        """Products the cost walker cannot see: 4 per bilinear sample and channel in the warp
        (4 L C H W: corner values times weights; the weights' own arithmetic is not counted, as for
        MotionRNN).  The walker counts the convolutions (γ, input, 1x1 projection), the link Hadamard
        products (L·C·H·W per Hadamard block: the weight's L axis) and the 3 gating products."""
        return 4 * self.links * self.channels * height * width
