"""TrajGRU (Shi et al., NeurIPS 2017): a ConvGRU whose recurrent connections follow learned flows."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import block_kinds, input_conv
from ..registry import register_cell
from .base import Cell


class TrajGRUState(NamedTuple):
    h: Tensor


def warp_links(h: Tensor, flows: Tensor) -> Tensor:
    """Warp h by each of L flow fields: ``out[:, c, l, i, j] = h[:, c, i + V_l[i, j], j + U_l[i, j]]``,
    sampled bilinearly, zeros outside the map (the paper's warp).  Zero flow gives h.

    h: (B, C, H, W); flows: (B, 2L, H, W) in pixels as L pairs (U_l, V_l) = (horizontal, vertical).
    Returns (B, C, L, H, W).  All L fields are sampled by one ``F.grid_sample`` over an (L·H) x W grid.
    """
    b, _, height, width = h.shape
    if flows.dim() != 4 or flows.shape[0] != b or flows.shape[1] % 2 or flows.shape[-2:] != h.shape[-2:]:
        raise ValueError(f"flows must have shape (B, 2L, H, W) = ({b}, 2L, {height}, {width}) to warp a map of "
                         f"shape {tuple(h.shape)}, got {tuple(flows.shape)}")
    links = flows.shape[1] // 2
    f = flows.view(b, links, 2, height, width)
    cols = torch.arange(width, device=h.device, dtype=h.dtype).view(1, 1, 1, width)
    rows = torch.arange(height, device=h.device, dtype=h.dtype).view(1, 1, height, 1)
    px, py = cols + f[:, :, 0], rows + f[:, :, 1]  # (B, L, H, W) sampling positions in pixels
    # pixel p -> grid coordinate (2p + 1) / size - 1 (align_corners=False: pixel centres)
    grid = torch.stack([(2 * px + 1) / width - 1, (2 * py + 1) / height - 1], -1)
    out = F.grid_sample(h, grid.view(b, links * height, width, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out.view(b, h.shape[1], links, height, width)


class LinkProjection(nn.Module):
    """Recurrent terms ``Σ_l U_b^l ∘ warp_l(h)`` of several blocks from the L warped copies of h.

    A ``'conv'`` block is the paper's 1x1 convolution over the L concatenated warped maps (channel
    ``c·L + l`` holds channel c of link l); all conv blocks share one fused convolution, without bias
    (the biases live in the input convolution).  A ``'hadamard'`` block replaces each link's 1x1
    convolution by a per-channel (``'channel'``, U ∈ R^{L x C x 1 x 1}) or per-position
    (``'position'``, U ∈ R^{L x C x H x W}) weight: ``Σ_l U_b^l ⊙ warp_l(h)``, L·C·H·W products.
    """

    def __init__(self, channels: int, links: int, kinds, hadamard: str = "position", size=None):
        super().__init__()
        self.channels, self.links, self.kinds = channels, links, tuple(kinds)
        self.hadamard, self.size = hadamard, size
        n_conv, n_had = self.kinds.count("conv"), self.kinds.count("hadamard")
        self.conv = nn.Conv2d(links * channels, n_conv * channels, 1, bias=False) if n_conv else None
        self.weight: nn.Parameter | None = None
        if n_had:
            if hadamard not in ("position", "channel"):
                raise ValueError(f"hadamard={hadamard!r}; choose 'position' or 'channel'")
            if hadamard == "position" and size is None:
                raise ValueError("per-position Hadamard weights (L x C x H x W) need the state size: pass "
                                 "size=(H, W) or use hadamard='channel' for resolution-free weights")
            shape = (n_had, channels, links, *(size if hadamard == "position" else (1, 1)))
            # small positive weights, fan-in L·C like the 1x1 convolution they replace
            self.weight = nn.Parameter(torch.empty(shape).uniform_(0.0, 1.0 / (links * channels) ** 0.5))

    @property
    def n_hadamard(self) -> int:
        return self.kinds.count("hadamard")

    def forward(self, warped: Tensor) -> list[Tensor]:
        """warped: (B, C, L, H, W) -> one (B, C, H, W) term per block, in block order."""
        b, c, links, height, width = warped.shape
        conv = [] if self.conv is None else list(self.conv(warped.reshape(b, c * links, height, width)).chunk(
            self.kinds.count("conv"), 1))
        had = []
        if self.weight is not None:
            if self.hadamard == "position" and (height, width) != tuple(self.size):
                raise ValueError(f"state of spatial size {(height, width)} does not match the per-position "
                                 f"Hadamard weight of size {tuple(self.size)}: build the cell with "
                                 f"size={(height, width)} or use hadamard='channel'")
            had = list((warped.unsqueeze(1) * self.weight).sum(3).unbind(1))  # one product per link
        return [conv.pop(0) if k == "conv" else had.pop(0) for k in self.kinds]


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
        h~   = LeakyReLU(W_xh * x_t + r ⊙ (Σ_l U_h^l ∘ w_l) + b_h)         (negative slope 0.2)
        h_t  = (1 - z) ⊙ h~ + z ⊙ h_{t-1}

    ``U^l ∘ w_l`` is the paper's 1x1 convolution (``recurrent='conv'``).  Hadamard variants (new for
    this cell; reference/cells.md §1): each link's 1x1 convolution becomes a Hadamard weight,
    ``Σ_l U^l ⊙ w_l`` (see :class:`LinkProjection`), in the gates z, r under ``indconv`` and also in
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
    - biases: one per block on the input convolution and one on γ's hidden layer; the recurrent 1x1
      projection and γ's state convolution have none (both codes bias them too: redundant).
    - zoneout (the authors' optional regulariser) is not implemented.

    Multiplications per step: ``gating_products = 3`` C·H·W products (r ⊙ ·, (1-z) ⊙ h~, z ⊙ h); the
    warp's bilinear sampling and the link Hadamard products are counted in :meth:`analytic_cost`.
    """

    gating_products = 3

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, links: int = 13, flow_channels: int = 32,
                 flow_kernel: int = 5):
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
        self.uh = LinkProjection(channels, links, block_kinds(recurrent, 2, 1), hadamard, self.size)

    def init_state(self, x: Tensor) -> TrajGRUState:
        return TrajGRUState(self.zeros(x))

    def flows(self, x: Tensor, h: Tensor) -> Tensor:
        """γ(x_t, h_{t-1}): the L flow fields, (B, 2L, H, W) as pairs (U_l, V_l) in pixels."""
        return self.flow_out(F.leaky_relu(self.flow_x(x) + self.flow_h(h), 0.2))

    def forward(self, x: Tensor, state: TrajGRUState | None = None) -> tuple[Tensor, TrajGRUState]:
        self.check(x)
        (h,) = state if state is not None else self.init_state(x)
        xz, xr, xh = self.wx(x).chunk(3, 1)
        uz, ur, uh = self.uh(warp_links(h, self.flows(x, h)))
        z = torch.sigmoid(xz + uz)
        r = torch.sigmoid(xr + ur)
        cand = F.leaky_relu(xh + r * uh, 0.2)
        h = (1 - z) * cand + z * h
        return h, TrajGRUState(h)

    def analytic_cost(self, height: int, width: int) -> dict:
        """Parameters, multiplications and convolution MACs of one step, batch 1, state H x W.

        ``macs``: every convolution's k² C_in C_out per pixel (γ, input, 1x1 projection).  ``mults``:
        macs + the link Hadamard products (L·C·H·W per Hadamard block) + 3 C·H·W gating products +
        4 per bilinear sample and channel in the warp (4 L C H W: corner values times weights; the
        weights' own arithmetic is not counted, as for MotionRNN).  Additions and activations are not
        multiplications.
        """
        hw = height * width
        macs = sum(m.weight.numel() * hw for m in self.modules() if isinstance(m, nn.Conv2d))
        per_map = self.channels * hw
        hadamard = self.uh.n_hadamard * self.links * per_map
        bilinear = 4 * self.links * per_map
        mults = macs + hadamard + self.gating_products * per_map + bilinear
        return {"params": sum(p.numel() for p in self.parameters()), "mults": mults, "macs": macs}
