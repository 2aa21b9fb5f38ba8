"""MotionRNN (Wu et al., CVPR 2021) on the MIM block: MotionGRU and the Motion Highway.  The network
(an ST-LSTM first layer, MotionRNN layers above) is ``motionrnn_net`` in :mod:`convrnn.models.presets`."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import bilinear_sample
from ..registry import register_cell
from .mim import MIM, MIMState


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Backward bilinear warp: ``out[:, :, i, j] = x[:, :, i + flow_y, j + flow_x]``, zeros outside.

    x: (B, C, H, W); flow: (B, 2, H, W) in pixels, channel 0 horizontal (x), channel 1 vertical (y).
    Zero flow is the identity.
    """
    return neighbourhood_warp(x, flow, 1).squeeze(2)


def neighbourhood_warp(x: Tensor, offsets: Tensor, k: int) -> Tensor:
    """Sample x at the k x k neighbourhood of every pixel, each neighbour moved by its own offset
    (deformable-convolution sampling, MotionRNN's "Warp"): neighbour n = ky * k + kx of pixel
    (i, j) is read at (i + ky - k//2 + dy_n, j + kx - k//2 + dx_n), bilinearly, zeros outside.

    x: (B, C, H, W); offsets: (B, 2 k², H, W) as k² pairs (dx_n, dy_n).  Returns (B, C, k², H, W).
    All k² fields are sampled at once by :func:`convrnn.layers.bilinear_sample`.
    """
    b, _, h, w = x.shape
    n = k * k
    if offsets.shape != (b, 2 * n, h, w):
        raise ValueError(f"offsets must have shape {(b, 2 * n, h, w)} for a {k}x{k} neighbourhood, "
                         f"got {tuple(offsets.shape)}")
    off = offsets.view(b, n, 2, h, w)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    base_y, base_x = (t.reshape(1, n, 1, 1) for t in torch.meshgrid(r, r, indexing="ij"))
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    return bilinear_sample(x, cols + base_x + off[:, :, 0], rows + base_y + off[:, :, 1])


class MotionGRU(nn.Module):
    """MotionGRU (Wu et al. 2021, §3.2): learns k x k offset fields of the hidden state and warps it.

    With H the hidden map (C x H x W), Enc a k x k stride-2 convolution to C/4 channels and F, D
    offset fields (2k² x H/2 x W/2)::

        E   = Enc(H)
        u, r = σ(W_{u,r} * [E; F_{t-1}] + b)                  (transient variation: a ConvGRU)
        F'  = u ⊙ tanh(W_z * [E; r ⊙ F_{t-1}] + b_z) + (1 - u) ⊙ F_{t-1}
        D_t = D_{t-1} + α (F_{t-1} - D_{t-1})                  (motion trend, α = 0.5)
        F_t = F' + D_t
        m   = σ(W_m * E + b_m)                                 (one mask per neighbour)
        H'  = Mix(m ⊙ Warp(E, F_t))                            (k² warped copies, mixed by a 1x1 conv)
        g   = σ(W_g * [Dec(H'); H] + b_g)
        X   = g ⊙ Dec(H') + (1 - g) ⊙ H

    Warp is the neighbourhood warp of :func:`neighbourhood_warp`; with zero offsets and unit mask
    Mix(Warp(E, 0)) is a k x k convolution of E (Mix holds its weights).  Dec is a 4 x 4 stride-2
    transposed convolution back to C channels.  Like the thuml code (``MotionRNN_PredRNN``,
    ``MotionGRU.py``): 3 x 3 gate/candidate/mask convolutions, a k x k Enc and output gate, the
    k² samples combined by one linear map (there a k-stride-k conv), the gate g mixing Dec(H') with
    H.  The paper writes the last gate as a 1 x 1 convolution.  The candidate's weights start at
    zero so the offsets start at zero (the thuml code zero-initialises the GRU convolutions).
    MS-RNN's code differs (2 x 2 Enc, 1 x 1 GRU convolutions, no base neighbourhood offsets).
    """

    def __init__(self, channels: int, kernel: int = 3, neighbourhood: int = 3, hidden: int | None = None,
                 alpha: float = 0.5):
        super().__init__()
        self.k = neighbourhood
        self.alpha = alpha
        self.hidden = hidden or max(1, channels // 4)
        self.offset_channels = 2 * self.k ** 2
        e, o, n = self.hidden, self.offset_channels, self.k ** 2
        self.enc = nn.Conv2d(channels, e, kernel, stride=2, padding=kernel // 2)
        self.w_ur = nn.Conv2d(e + o, 2 * o, 3, padding=1)        # u, r
        self.w_z = nn.Conv2d(e + o, o, 3, padding=1)             # offset candidate
        self.w_mask = nn.Conv2d(e, n, 3, padding=1)
        self.mix = nn.Conv2d(e * n, e, 1, bias=False)            # combines the k² warped samples
        self.dec = nn.ConvTranspose2d(e, channels, 4, stride=2, padding=1)
        self.w_gate = nn.Conv2d(2 * channels, channels, kernel, padding=kernel // 2)
        nn.init.zeros_(self.w_z.weight)
        nn.init.zeros_(self.w_z.bias)

    def init_offsets(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return x.new_zeros(b, self.offset_channels, h // 2, w // 2)

    def forward(self, x: Tensor, f: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: the hidden map H (B, C, H, W); f, d: F_{t-1}, D_{t-1}.  Returns (X, F_t, D_t)."""
        e = self.enc(x)
        u, r = torch.sigmoid(self.w_ur(torch.cat([e, f], 1))).chunk(2, 1)
        z = torch.tanh(self.w_z(torch.cat([e, r * f], 1)))
        d_new = d + self.alpha * (f - d)
        f_new = u * z + (1 - u) * f + d_new
        mask = torch.sigmoid(self.w_mask(e))
        warped = neighbourhood_warp(e, f_new, self.k) * mask.unsqueeze(1)
        dec = self.dec(self.mix(warped.flatten(1, 2)))
        g = torch.sigmoid(self.w_gate(torch.cat([dec, x], 1)))
        return g * dec + (1 - g) * x, f_new, d_new


class MotionRNNState(NamedTuple):
    h: Tensor
    c: Tensor
    m: Tensor
    n: Tensor
    s: Tensor
    prev_input: Tensor  # not a recurrent state: this layer's input x at the step before (MIM-N's δ)
    f: Tensor       # F_t, MotionGRU's offsets (2k² x H/2 x W/2)
    d: Tensor       # D_t, MotionGRU's motion trend


@register_cell("motionrnn")
class MotionRNN(MIM):
    """MotionRNN layer (Wu et al., "MotionRNN: A Flexible Model for Video Prediction with
    Spacetime-Varying Motions", CVPR 2021) on the MIM block: MotionGRU + MIM block + Motion Highway.

    The paper puts a MotionGRU between layers l and l+1 (it transforms H^l into the input X^l of
    block l+1) and adds a Motion Highway to each block's output.  This cell owns the MotionGRU
    BEFORE its block: with x the previous layer's output H^{l-1}_t::

        X, F_t, D_t = MotionGRU(x, F_{t-1}, D_{t-1})          (see :class:`MotionGRU`)
        o, C_t, M_t, ... = MIM block on input X                 (see :class:`~convrnn.cells.mim.MIM`)
        h_t = o ⊙ tanh(W_{1x1} * [C_t; M_t] + b) + (1 - o) ⊙ x     (Motion Highway)

    A stack ["predrnn", "motionrnn", ...] therefore computes exactly the thuml MotionRNN layout
    (``MotionRNN_PredRNN.py``): L - 1 MotionGRUs, one after each of layers 1 .. L-1, none after the
    top layer, and a highway that carries the previous layer's block output around the MotionGRU
    (the paper's "compensates the output of the block by the previous hidden state").  Differences:
    thuml also gives layer 1 a highway from a separate 1x1 frame embedding (the ``predrnn`` first
    layer here has none), starts states and offsets from random values (here zeros) and its block
    is an ST-LSTM; the paper's MotionRNN-MIM uses the MIM block, as here.  MS-RNN's code instead runs the MotionGRU AFTER each layer's own block (also on the
    top layer) and adds the highway after it (h = MotionGRU(block) + (1 - o) ⊙ x).

    MIM-N differences the layer input x (the previous layer's output, before this MotionGRU; MS-RNN's
    code also differences the previous layer's output), δ_0 = 0 as in :class:`~convrnn.cells.mim.MIM`.  In an
    MS-RNN pyramid the MotionGRU runs at this layer's scale on the resampled input, so the state
    needs even height and width (``size_multiple = 2``).  The Motion Highway needs
    ``in_channels == channels``.  ``recurrent`` (Hadamard variants) applies to the MIM block's
    gates; MotionGRU's small convolutions on the offsets stay convolutions.

    Products per step: the 13 C·H·W gating products counted in ``gating_products`` (MIM 10,
    highway 1, MotionGRU's output mix 2) plus MotionGRU's products on smaller maps (r ⊙ F, u ⊙ z,
    (1 - u) ⊙ F on 2k² x H/2 x W/2, the mask on C/4 x k² x H/2 x W/2) and the bilinear sampling
    inside ``grid_sample``: see :meth:`extra_mults` and :meth:`map_sizes`.
    """

    gating_products = 13
    size_multiple = 2

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0, neighbourhood: int = 3,
                 motion_channels: int | None = None, alpha: float = 0.5):
        if in_channels != channels:
            raise ValueError(f"the Motion Highway adds the layer input to its output: in_channels ({in_channels}) "
                             f"must equal channels ({channels}); put a layer of another cell first")
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size, forget_bias)
        if self.size is not None and (self.size[0] % 2 or self.size[1] % 2):
            raise ValueError(f"MotionGRU's stride-2 encoder needs an even state size, got {self.size}")
        self.motion = MotionGRU(channels, kernel, neighbourhood, motion_channels, alpha)

    def init_state(self, x: Tensor) -> MotionRNNState:
        z = self.zeros(x)
        f = self.motion.init_offsets(x)
        return MotionRNNState(z, z, z, z, z, x, f, f)

    def forward(self, x: Tensor, state: MotionRNNState | None = None, m: Tensor | None = None
                ) -> tuple[Tensor, MotionRNNState, Tensor]:
        self.check(x)
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"MotionGRU's stride-2 encoder needs an even height and width, got "
                             f"{tuple(x.shape[-2:])}; resize the frames (MS-RNN pyramid: divisible by 8)")
        if state is None:
            state = self.init_state(x)
        xm, f, d = self.motion(x, state.f, state.d)
        o, y, new = self.block(xm, MIMState(*state[:6]), m, diff_input=x)
        h = o * y + (1 - o) * x
        return h, MotionRNNState(h, *new[1:], f, d), new.m

    def map_sizes(self, height: int, width: int) -> dict:
        """For the cost walker: MotionGRU's modules that read a map of H/2 x W/2 (its encoder reads H x W
        with stride 2, its gate convolution H x W; everything else of the cell runs at H x W)."""
        mg, half = self.motion, (height // 2, width // 2)
        return {mod: half for mod in (mg.w_ur, mg.w_z, mg.w_mask, mg.mix, mg.dec)}

    def extra_mults(self, height: int, width: int) -> int:
        """Products the cost walker cannot see: MotionGRU's elementwise products on H/2 x W/2 maps
        (r ⊙ F, u ⊙ z, (1 - u) ⊙ F on the 2k² offset channels; the mask on the C/4 x k² warped samples)
        and 4 per bilinear sample and channel in the warp (corner values times weights; the weights'
        own arithmetic is not counted)."""
        mg = self.motion
        half, n = (height // 2) * (width // 2), mg.k ** 2
        return 3 * mg.offset_channels * half + mg.hidden * n * half + 4 * mg.hidden * n * half
