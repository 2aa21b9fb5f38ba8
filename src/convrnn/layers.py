"""Shared building blocks of every cell: the recurrent operator, input convolutions, shape checks.

The seeds' central idea (Vazhenina & Kanemura 2019/2021, docs/models.md §1) is that the
recurrent term ``U * h`` of a block (a gate or a candidate) may be replaced by a Hadamard product
``U ⊙ h``.  :class:`RecurrentOp` computes the recurrent terms of several blocks at once, each block
being either a convolution or a Hadamard product, so every cell gets every variant for free.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANTS = ("conv", "indconv", "ind")
HADAMARD_MODES = ("position", "channel")


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def block_kinds(variant: str, gates: int, candidates: int) -> tuple[str, ...]:
    """Kinds ('conv' or 'hadamard') of the recurrent terms of ``gates`` gate blocks followed by
    ``candidates`` candidate blocks under a variant (docs/models.md §1):

    - ``conv``    (Conv*):        every recurrent term is a convolution;
    - ``indconv`` (ConvIndConv*): Hadamard in the gates, convolution in the candidates;
    - ``ind``     (ConvInd*):     Hadamard everywhere.
    """
    if variant not in VARIANTS:
        raise ValueError(f"recurrent={variant!r} is not a variant; choose one of {VARIANTS}")
    gate = "conv" if variant == "conv" else "hadamard"
    cand = "hadamard" if variant == "ind" else "conv"
    return (gate,) * gates + (cand,) * candidates


class RecurrentOp(nn.Module):
    """Recurrent terms ``U_b ∘ h`` of ``len(kinds)`` blocks, each a k x k convolution (``'conv'``)
    or a Hadamard product (``'hadamard'``), concatenated along channels in block order.

    Convolution blocks are fused into one convolution (no bias: biases live in the input
    convolution).  Hadamard weights are per position, ``U ∈ R^{C x H x W}`` (the seeds' convention,
    needs ``size``), or per channel, ``U ∈ R^{C x 1 x 1}`` (resolution-free).

    With ``links = L > 1`` the operand holds L maps of C channels (channel ``c·L + l`` is channel c
    of map l, TrajGRU's warped copies of h): a conv block convolves all C·L channels (the paper's
    1x1 projection with ``kernel=1``), a Hadamard block weighs each map and sums them,
    ``Σ_l U^l ⊙ h_l`` with ``U ∈ R^{C x L x H x W}`` (or ``C x L x 1 x 1``): L·C·H·W products.

    Args:
        channels: C, channels of h and of each block's output.
        kinds: per block ``'conv'`` or ``'hadamard'``.
        kernel: k of the recurrent convolutions.
        hadamard: ``'position'`` or ``'channel'``.
        size: (H, W) of the state, required by per-position Hadamard weights.
        in_channels: channels of the operand if it differs from C·L (e.g. [h; c] in rgcLSTM). Hadamard
            blocks need ``in_channels == channels * links``.
        links: L, the number of C-channel maps in the operand (1 = h itself).
    """

    def __init__(self, channels: int, kinds: Sequence[str], kernel: int = 3, hadamard: str = "position",
                 size=None, in_channels: int | None = None, links: int = 1):
        super().__init__()
        if hadamard not in HADAMARD_MODES:
            raise ValueError(f"hadamard={hadamard!r}; choose one of {HADAMARD_MODES}")
        for k in kinds:
            if k not in ("conv", "hadamard"):
                raise ValueError(f"block kind {k!r} must be 'conv' or 'hadamard'")
        if links < 1:
            raise ValueError(f"links must be >= 1, got {links}")
        self.channels = channels
        self.links = links
        self.in_channels = in_channels or channels * links
        self.kinds = tuple(kinds)
        self.hadamard = hadamard
        self.size = _pair(size)
        n_conv = self.kinds.count("conv")
        n_had = self.kinds.count("hadamard")
        self.conv = (nn.Conv2d(self.in_channels, n_conv * channels, kernel, padding=kernel // 2, bias=False)
                     if n_conv else None)
        self.weight: nn.Parameter | None = None
        if n_had:
            if self.in_channels != channels * links:
                raise ValueError("a Hadamard block needs an operand with as many channels as the state")
            if hadamard == "position":
                if self.size is None:
                    raise ValueError(
                        "per-position Hadamard weights (C x H x W) need the state size: pass size=(H, W) "
                        "or use hadamard='channel' for resolution-free weights")
                spatial = self.size
            else:
                spatial = (1, 1)
            shape = (n_had, channels, *((links,) if links > 1 else ()), *spatial)
            # IndRNN-style init: small positive recurrent weights keep the product stable.
            self.weight = nn.Parameter(torch.empty(shape).uniform_(0.0, 1.0 / (links * channels) ** 0.5))
        # Output order: positions of conv and Hadamard blocks in the concatenation.
        conv_idx = [i for i, k in enumerate(self.kinds) if k == "conv"]
        had_idx = [i for i, k in enumerate(self.kinds) if k == "hadamard"]
        order = conv_idx + had_idx
        self._perm = None if order == sorted(order) else [order.index(i) for i in range(len(order))]

    @property
    def n_hadamard(self) -> int:
        return self.kinds.count("hadamard")

    def check(self, h: Tensor) -> None:
        if self.weight is not None and self.hadamard == "position" and tuple(h.shape[-2:]) != self.size:
            raise ValueError(
                f"state of spatial size {tuple(h.shape[-2:])} does not match the per-position Hadamard weight "
                f"of size {self.size}: build the cell with size={tuple(h.shape[-2:])} or use hadamard='channel'")

    def forward(self, h: Tensor) -> Tensor:
        self.check(h)
        parts = []
        if self.conv is not None:
            parts.append(self.conv(h))
        if self.weight is not None:
            b, _, hh, ww = h.shape
            if self.links == 1:
                had = h.unsqueeze(1) * self.weight  # (B, n_had, C, H, W): one product per block
            else:                                   # one product per map, summed over the L maps
                had = (h.view(b, 1, self.channels, self.links, hh, ww) * self.weight).sum(3)
            parts.append(had.reshape(b, -1, hh, ww))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        if self._perm is not None:
            b, _, hh, ww = out.shape
            out = out.view(b, len(self.kinds), self.channels, hh, ww)[:, self._perm].reshape(b, -1, hh, ww)
        return out

    def add_to(self, pre: Tensor, h: Tensor) -> Tensor:
        """``pre + self(h)``, computed into ``pre`` (B, n_blocks·C, H, W), e.g. the input convolution's
        ``W * x + b``: the fused form every cell's gates use.

        Each run of consecutive Hadamard blocks is ONE in-place ``addcmul_`` (``pre_b += U_b ⊙ h`` for all
        its blocks, no temporary, no concatenation), the convolution blocks' one convolution is added to
        their slices, and nothing is reordered.  ``forward`` instead builds U ∘ h as a new tensor in block
        order (a concatenation and, when Hadamard blocks come first, a permutation) that is then added:
        three more passes over 4·C·H·W values per ConvLSTM step.  ``pre`` may be a channel slice of a
        larger tensor (ConvGRU's gates); autograd sees ordinary in-place ops (the convolution that made
        ``pre`` does not keep its output for backward).  Several links (TrajGRU) use ``pre + self(h)``.
        During ONNX export the same sums are built out of place (one concatenation of the runs), since the
        TorchScript exporter drops in-place writes into views."""
        self.check(h)
        if self.links != 1:
            return pre + self(h)
        blocks = pre.unflatten(1, (len(self.kinds), self.channels))     # a view: writes go to pre
        conv = self.conv(h).unflatten(1, (-1, self.channels)) if self.conv is not None else None
        h1 = h.unsqueeze(1)
        exporting = torch.onnx.is_in_onnx_export()   # the TorchScript exporter loses writes into views
        parts, ci, hi = [], 0, 0
        for kind, start, stop in _runs(self.kinds):
            n, run = stop - start, blocks[:, start:stop]
            if kind == "conv":
                parts.append(run + conv[:, ci:ci + n] if exporting else run.add_(conv[:, ci:ci + n]))
                ci += n
            else:
                w = self.weight[hi:hi + n]
                parts.append(torch.addcmul(run, w, h1) if exporting else run.addcmul_(w, h1))
                hi += n
        if not exporting:
            return pre
        return torch.cat(parts, 1).flatten(1, 2) if len(parts) > 1 else parts[0].flatten(1, 2)

    def extra_repr(self) -> str:
        links = f", links={self.links}" if self.links > 1 else ""
        return f"kinds={self.kinds}, hadamard={self.hadamard!r}, size={self.size}{links}"


def _runs(kinds: Sequence[str]) -> list[tuple[str, int, int]]:
    """Runs of equal kinds: ('hadamard', 'hadamard', 'conv') -> [('hadamard', 0, 2), ('conv', 2, 3)]."""
    runs: list[tuple[str, int, int]] = []
    for i, kind in enumerate(kinds):
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1], i + 1)
        else:
            runs.append((kind, i, i + 1))
    return runs


def input_conv(in_channels: int, blocks: int, channels: int, kernel: int, bias: bool = True) -> nn.Conv2d:
    """The fused input-to-state convolution ``W * x`` of ``blocks`` blocks (one bias per block)."""
    return nn.Conv2d(in_channels, blocks * channels, kernel, padding=kernel // 2, bias=bias)


def set_forget_bias(conv: nn.Conv2d, channels: int, blocks: Sequence[int], value: float | Tensor | None) -> None:
    """Set the bias of the given output blocks of a fused input convolution to ``value`` (the
    forget gates' bias: Gers et al. 2000's positive forget bias, PredRNN's +1, JANET's chrono
    initialisation when ``value`` is a tensor of C values).  ``None`` or 0 keeps the default
    initialisation.  The bias stays trainable."""
    if value is None or (not isinstance(value, Tensor) and value == 0):
        return
    with torch.no_grad():
        for b in blocks:
            conv.bias[b * channels:(b + 1) * channels] = value


def bilinear_sample(x: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Sample x bilinearly at N fields of pixel positions: ``out[:, :, n, i, j] = x[:, :, py[n, i, j],
    px[n, i, j]]``, zeros outside the map, pixel centres exact (``align_corners=False``).

    x: (B, C, H, W); px, py: (B, N, H, W) column and row positions in pixels (``px = j`` and ``py = i``
    read x itself).  Returns (B, C, N, H, W).  All N fields are sampled by one ``F.grid_sample`` call
    over an (N·H) x W grid.  Used by TrajGRU's warp and MotionRNN's neighbourhood warp.
    """
    b, c, h, w = x.shape
    n = px.shape[1]
    # pixel p -> grid coordinate (2p + 1) / size - 1 (align_corners=False: pixel centres)
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1).view(b, n * h, w, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, c, n, h, w)


def check_input(x: Tensor, in_channels: int, name: str = "cell") -> None:
    """Clear errors for the two most common mistakes: wrong rank and wrong channel count."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects one time step of shape (B, C, H, W), got shape {tuple(x.shape)}; "
                         "feed sequences (B, T, C, H, W) to a network, not to a cell")
    if x.shape[1] != in_channels:
        raise ValueError(f"{name} was built for {in_channels} input channels but got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}); set in_channels={x.shape[1]}")


def resample(x: Tensor, size: tuple[int, int], down: str = "max", up: str = "bilinear") -> Tensor:
    """Resize a (B, C, H, W) map to ``size`` by integer factors: pooling down, interpolation up.

    These are MS-RNN's P2 (max-pool) and U2 (bilinear, align_corners=False) operators.
    """
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if down not in ("max", "avg") or up not in ("bilinear", "nearest"):
        raise ValueError(f"down={down!r} must be 'max' or 'avg' and up={up!r} 'bilinear' or 'nearest'")
    if th <= h and tw <= w:
        if h % th or w % tw:
            raise ValueError(f"cannot pool {h}x{w} down to {th}x{tw}: not an integer factor")
        k = (h // th, w // tw)
        return F.max_pool2d(x, k) if down == "max" else F.avg_pool2d(x, k)
    if th >= h and tw >= w:
        return F.interpolate(x, size=(th, tw), mode=up, align_corners=False if up == "bilinear" else None)
    raise ValueError(f"cannot resample {h}x{w} to {th}x{tw}: one side grows while the other shrinks")
