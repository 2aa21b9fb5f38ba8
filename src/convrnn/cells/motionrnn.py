"""MotionRNN (Wu et al., CVPR 2021) on the MIM block: MotionGRU and the Motion Highway.  The network
(an ST-LSTM first layer, MotionRNN layers above) is ``motionrnn_net`` in :mod:`convrnn.models.presets`."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..layers import bilinear_sample
from ..registry import register_cell
from .base import Below
from .mim import MIM, MIMState


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Backward bilinear warp: ``out[:, :, i, j] = x[:, :, i + flow_y, j + flow_x]``, zeros outside.

    x: (B, C, H, W); flow: (B, 2, H, W) in pixels, channel 0 horizontal (x), channel 1 vertical (y).
    Zero flow is the identity.
    """
    return neighbourhood_warp(x, flow, 1).squeeze(2)


def neighbourhood_warp(x: Tensor, offsets: Tensor, k: int, centred: bool = True) -> Tensor:
    """Sample x at the k x k neighbourhood of every pixel, each neighbour moved by its own offset
    (deformable-convolution sampling, MotionRNN's "Warp"): neighbour n = ky * k + kx of pixel
    (i, j) is read at (i + ky - k//2 + dy_n, j + kx - k//2 + dx_n), bilinearly, zeros outside.
    ``centred=False`` drops the neighbourhood's base offsets: neighbour n is read at
    (i + dy_n, j + dx_n) (MS-RNN's MotionGRU: k² plain warps of the map).

    x: (B, C, H, W); offsets: (B, 2 k², H, W) as k² pairs (dx_n, dy_n).  Returns (B, C, k², H, W).
    All k² fields are sampled at once by :func:`convrnn.layers.bilinear_sample`.
    """
    b, _, h, w = x.shape
    n = k * k
    if offsets.shape != (b, 2 * n, h, w):
        raise ValueError(f"offsets must have shape {(b, 2 * n, h, w)} for a {k}x{k} neighbourhood, "
                         f"got {tuple(offsets.shape)}")
    off = offsets.view(b, n, 2, h, w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    if centred:
        r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        base_y, base_x = (t.reshape(1, n, 1, 1) for t in torch.meshgrid(r, r, indexing="ij"))
        rows, cols = rows + base_y, cols + base_x
    return bilinear_sample(x, cols + off[:, :, 0], rows + off[:, :, 1])


MOTION_STYLES = ("thuml", "msrnn")


class MotionGRU(nn.Module):
    """MotionGRU (Wu et al. 2021, §3.2): learns k x k offset fields of the hidden state and warps it.

    With H the hidden map (C x H x W), Enc a stride-2 convolution to C/4 channels and F, D offset
    fields (2k² x H/2 x W/2)::

        E   = Enc(H)
        u, r = σ(W_{u,r} * [E; F_{t-1}] + b)                  (transient variation: a ConvGRU)
        F'  = u ⊙ tanh(W_z * [E; r ⊙ F_{t-1}] + b_z) + (1 - u) ⊙ F_{t-1}
        D_t = D_{t-1} + α (F_{t-1} - D_{t-1})                  (motion trend, α = 0.5)
        F_t = F' + D_t
        m   = σ(W_m * E + b_m)                                 (one mask per neighbour)
        H'  = Mix(m ⊙ Warp(E, F_t))                            (k² warped copies, mixed by a 1x1 conv)
        g   = σ(W_g * [Dec(H'); H] + b_g)
        X   = g ⊙ Dec(H') + (1 - g) ⊙ H

    Dec is a 4 x 4 stride-2 transposed convolution back to C channels.  ``style`` picks the kernels:

    - ``"thuml"`` (default; the thuml code, ``MotionGRU.py``/``MotionRNN_PredRNN.py``): a k x k Enc
      (padding k//2) and output gate, 3 x 3 u, r, z and mask convolutions, Warp the centred
      neighbourhood warp of :func:`neighbourhood_warp` (with zero offsets and unit mask Mix(Warp(E, 0))
      is a k x k convolution of E; Mix holds its weights, there a k-stride-k conv, no bias).  The
      paper writes the last gate as a 1 x 1 convolution.
    - ``"msrnn"`` (MS-RNN's code): a 2 x 2 stride-2 Enc, 1 x 1 u, r, z, mask, Mix (with bias) and
      gate convolutions, Warp k² plain warps ``centred=False``.  Its gate is written
      X = g' ⊙ H + (1 - g') ⊙ Dec(H'): g' = 1 - g, the same function with W_g, b_g negated
      (:mod:`convrnn.convert` negates them on import).  Its Warp reshapes the (B, 2k², ...) offsets
      as (k², B, 2, ...), mixing batch and neighbour axes, and samples with a (W - 1) normalisation
      under ``align_corners=False`` (a sub-pixel shift): plain bugs, not reproduced (docs/references.md).

    The candidate's weights start at zero so the offsets start at zero (the thuml code
    zero-initialises the GRU convolutions).
    """

    def __init__(self, channels: int, kernel: int = 3, neighbourhood: int = 3, hidden: int | None = None,
                 alpha: float = 0.5, style: str = "thuml"):
        super().__init__()
        if style not in MOTION_STYLES:
            raise ValueError(f"style={style!r}; choose one of {MOTION_STYLES}")
        self.k = neighbourhood
        self.alpha = alpha
        self.style = style
        self.hidden = hidden or max(1, channels // 4)
        self.offset_channels = 2 * self.k ** 2
        e, o, n = self.hidden, self.offset_channels, self.k ** 2
        thuml = style == "thuml"
        g = 3 if thuml else 1                                       # u, r, z and mask kernels
        self.enc = (nn.Conv2d(channels, e, kernel, stride=2, padding=kernel // 2) if thuml
                    else nn.Conv2d(channels, e, 2, stride=2))
        self.w_ur = nn.Conv2d(e + o, 2 * o, g, padding=g // 2)      # u, r
        self.w_z = nn.Conv2d(e + o, o, g, padding=g // 2)           # offset candidate
        self.w_mask = nn.Conv2d(e, n, g, padding=g // 2)
        self.mix = nn.Conv2d(e * n, e, 1, bias=not thuml)           # combines the k² warped samples
        self.dec = nn.ConvTranspose2d(e, channels, 4, stride=2, padding=1)
        gk = kernel if thuml else 1
        self.w_gate = nn.Conv2d(2 * channels, channels, gk, padding=gk // 2)
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
        warped = neighbourhood_warp(e, f_new, self.k, centred=self.style == "thuml") * mask.unsqueeze(1)
        dec = self.dec(self.mix(warped.flatten(1, 2)))
        g = torch.sigmoid(self.w_gate(torch.cat([dec, x], 1)))
        return g * dec + (1 - g) * x, f_new, d_new


class MotionRNNState(NamedTuple):
    h: Tensor
    c: Tensor
    m: Tensor
    n: Tensor
    s: Tensor
    prev_input: Tensor  # not a recurrent state: what MIM-N's δ differences against at the next step
    f: Tensor | None    # F_t, MotionGRU's offsets (2k² x H/2 x W/2); None without a MotionGRU
    d: Tensor | None    # D_t, MotionGRU's motion trend
    lateral: Tensor | None = None   # variant="thuml": the Motion Highway passed up (h before MotionGRU)


MOTION_VARIANTS = ("paper", "msrnn", "thuml")


@register_cell("motionrnn")
class MotionRNN(MIM):
    """MotionRNN layer (Wu et al., "MotionRNN: A Flexible Model for Video Prediction with
    Spacetime-Varying Motions", CVPR 2021) on the MIM block: MotionGRU + MIM block + Motion Highway.

    The paper puts a MotionGRU between layers l and l+1 (it transforms H^l into the input X^l of
    block l+1) and adds a Motion Highway to each block's output.  ``variant="paper"`` (the default)
    puts it BEFORE the block, in the cell that reads it: with x the previous layer's output::

        X, F_t, D_t = MotionGRU(x, F_{t-1}, D_{t-1})          (see :class:`MotionGRU`)
        o, C_t, M_t, ... = MIM block on input X                 (see :class:`~convrnn.cells.mim.MIM`)
        h_t = o ⊙ tanh(W_{1x1} * [C_t; M_t] + b) + (1 - o) ⊙ x     (Motion Highway)

    so a stack ["predrnn", "motionrnn", ...] has L - 1 MotionGRUs, one after each of layers 1 .. L-1,
    and every layer's recurrent h is its block output before the next MotionGRU.  MIM-N differences
    the layer input x (before this MotionGRU), δ_0 = 0.

    ``variant="thuml"`` (the layout of the authors' code, ``MotionRNN_PredRNN.py``): the MotionGRU
    runs AFTER this layer's block and its output is both the next layer's input and this layer's own
    recurrent h (the post-MotionGRU state), while the Motion Highway is a separate stream::

        b_t = o ⊙ tanh(W_{1x1} * [C_t; M_t] + b) + (1 - o) ⊙ v     (v: the highway from below)
        h_t, F_t, D_t = MotionGRU(b_t, F_{t-1}, D_{t-1})          (h_t = b_t with ``motion=False``)

    v is the b of the layer below (``state.lateral``, passed by the network), or at the first layer
    a 1x1 projection of x (thuml's ``conv_first_v``; x itself when it has C channels).  The top layer
    has ``motion=False`` there.  thuml's blocks are ST-LSTMs (``memory="lstm"``); its states start at
    random values and its warp clamps at the border (here zeros, and zeros outside).

    ``variant="msrnn"`` (MS-RNN's code): block, then MotionGRU (``style="msrnn"``), then highway, the
    result being the output and the recurrent h; δ as in MIM's ``msrnn`` variant::

        h_t = MotionGRU(o ⊙ tanh(W_{1x1} * [C_t; M_t] + b)) + (1 - o) ⊙ x

    MS-RNN's first layer is this with ``memory="lstm"``; its top layer computes a MotionGRU it never
    uses (the preset puts a ``mim`` cell with ``variant="msrnn"`` there).

    In an MS-RNN pyramid the MotionGRU runs at this layer's scale, so the state needs even height and
    width (``size_multiple = 2``).  The highway needs ``in_channels == channels`` (except ``thuml``'s
    first layer).  ``recurrent`` (Hadamard variants) applies to the MIM block's gates; MotionGRU's
    small convolutions on the offsets stay convolutions.

    Products per step: the C·H·W gating products counted in ``gating_products`` (the block's 10, or 5
    with ``memory="lstm"``; the highway 1; MotionGRU's output mix 2) plus MotionGRU's products on
    smaller maps (r ⊙ F, u ⊙ z, (1 - u) ⊙ F on 2k² x H/2 x W/2, the mask on C/4 x k² x H/2 x W/2) and
    the bilinear sampling inside ``grid_sample``: see :meth:`extra_mults` and :meth:`map_sizes`.
    """

    gating_products = 13
    size_multiple = 2

    def __init__(self, in_channels: int, channels: int, kernel: int = 3, recurrent: str = "conv",
                 hadamard: str = "position", size=None, forget_bias: float = 1.0, neighbourhood: int = 3,
                 motion_channels: int | None = None, alpha: float = 0.5, variant: str = "paper",
                 memory: str = "mim", motion: bool = True):
        if variant not in MOTION_VARIANTS:
            raise ValueError(f"variant={variant!r}; choose one of {MOTION_VARIANTS}")
        if in_channels != channels and variant != "thuml":
            raise ValueError(f"the Motion Highway adds the layer input to its output: in_channels ({in_channels}) "
                             f"must equal channels ({channels}); put a layer of another cell first")
        if not motion and variant != "thuml":
            raise ValueError("motion=False (no MotionGRU) is the top layer of variant='thuml'; for MS-RNN's top "
                             "layer use a 'mim' cell with variant='msrnn'")
        super().__init__(in_channels, channels, kernel, recurrent, hadamard, size, forget_bias,
                         "msrnn" if variant == "msrnn" else "paper", memory)
        self.variant = variant
        self.reads_below = variant != "paper"
        self.gating_products = (10 if memory == "mim" else 5) + 1 + 2 * motion
        if not motion:
            self.size_multiple = 1
        elif self.size is not None and (self.size[0] % 2 or self.size[1] % 2):
            raise ValueError(f"MotionGRU's stride-2 encoder needs an even state size, got {self.size}")
        self.motion = (MotionGRU(channels, kernel, neighbourhood, motion_channels, alpha,
                                 "msrnn" if variant == "msrnn" else "thuml") if motion else None)
        self.highway_in = (nn.Conv2d(in_channels, channels, 1, bias=False)
                           if variant == "thuml" and in_channels != channels else None)

    def init_state(self, x: Tensor) -> MotionRNNState:
        mim = super().init_state(x)
        f = self.motion.init_offsets(x) if self.motion is not None else None
        return MotionRNNState(*mim[:6], f, f)

    def forward(self, x: Tensor, state: MotionRNNState | None = None, m: Tensor | None = None,
                below: Below | None = None) -> tuple[Tensor, MotionRNNState, Tensor]:
        self.check(x)
        if self.motion is not None and (x.shape[-2] % 2 or x.shape[-1] % 2):
            raise ValueError(f"MotionGRU's stride-2 encoder needs an even height and width, got "
                             f"{tuple(x.shape[-2:])}; resize the frames (MS-RNN pyramid: divisible by 8)")
        if state is None:
            state = self.init_state(x)
        mim_state = MIMState(*state[:6])
        f, d = state.f, state.d
        if self.variant == "paper":
            xm, f, d = self.motion(x, f, d)
            o, y, new = self.block(xm, mim_state, m, diff_input=x)
            h = o * y + (1 - o) * x
            return h, MotionRNNState(h, *new[1:6], f, d), new.m
        o, y, new = self.block(x, mim_state, m, below=below)
        if self.variant == "msrnn":
            h, f, d = self.motion(o * y, f, d)
            h = h + (1 - o) * x
            return h, MotionRNNState(h, *new[1:6], f, d), new.m
        v = below.lateral if below is not None and below.lateral is not None else x
        if self.highway_in is not None and v.shape[1] != self.channels:
            v = self.highway_in(v)
        b = o * y + (1 - o) * v
        h = b
        if self.motion is not None:
            h, f, d = self.motion(b, f, d)
        return h, MotionRNNState(h, *new[1:6], f, d, b), new.m

    def map_sizes(self, height: int, width: int) -> dict:
        """For the cost walker: MotionGRU's modules that read a map of H/2 x W/2 (its encoder reads H x W
        with stride 2, its gate convolution H x W; everything else of the cell runs at H x W)."""
        if self.motion is None:
            return {}
        mg, half = self.motion, (height // 2, width // 2)
        return {mod: half for mod in (mg.w_ur, mg.w_z, mg.w_mask, mg.mix, mg.dec)}

    def extra_mults(self, height: int, width: int) -> int:
        """Products the cost walker cannot see: MotionGRU's elementwise products on H/2 x W/2 maps
        (r ⊙ F, u ⊙ z, (1 - u) ⊙ F on the 2k² offset channels; the mask on the C/4 x k² warped samples)
        and 4 per bilinear sample and channel in the warp (corner values times weights; the weights'
        own arithmetic is not counted)."""
        if self.motion is None:
            return 0
        mg = self.motion
        half, n = (height // 2) * (width // 2), mg.k ** 2
        return 3 * mg.offset_channels * half + mg.hidden * n * half + 4 * mg.hidden * n * half
