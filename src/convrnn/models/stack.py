"""The stacked predictor: L recurrent layers, flat (one resolution) or as the MS-RNN pyramid.

Flat stack (PredRNN/OpenSTL, docs/models.md §3): per step t the frame fed (ground truth or
the previous prediction, as the mask says) is encoded by the frame codec, passes through L layers
at one resolution and is read out as the prediction of frame t+1.

Multi-scale (MS-RNN, Ma et al. 2022/2023, seeds 001/002, docs/models.md §4): layer l keeps its
states at ``scales[l]`` of the codec resolution.  Between layers the hidden map is max-pooled (down)
or bilinearly upsampled (up); when a layer goes back up to a scale an earlier layer had, that
layer's output is added (``skip='add'``, the paper's default).  The zig-zag memory M of the PredRNN
family is resampled the same way, without skips, and re-enters layer 1 from the top layer at the
next step.  Scales change no parameter: an MS model has exactly its flat model's parameters.

Skip modes (the MS-RNN reference code's ablations; all parameter-free, every skip is resampled to
the receiving layer's scale with the stack's ``down``/``up`` operators and added), see
:func:`skip_sets`: ``'add'`` (mirror skips), ``'none'``, ``'unet3p'`` (UNet3+-style full-scale
skips into the layers past the bottom of the pyramid) and ``'dense'`` (every earlier layer into
every layer).
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..cells.base import Below
from ..layers import resample
from ..loop import phase_mask, unroll
from ..registry import cell_entry, create_cell, register_model
from .base import Prediction, Predictor, per_layer_ints, positive_int
from .codec import FrameCodec

MSRNN_SCALES = (1, 0.5, 0.25, 0.25, 0.5, 1)
SKIPS = ("add", "none", "unet3p", "dense")


class StackState(NamedTuple):
    layers: list              # each layer's cell state
    m: Tensor | None          # zig-zag memory leaving the top layer (PredRNN family), else None
    aux: Tensor | None        # running sum of per-layer auxiliary terms (see ``layer_aux``)


class StackStream(NamedTuple):
    """What a stack's stream keeps between observed frames (see :meth:`RecurrentStack.observe`)."""
    state: StackState         # the recurrent state after the last observed frame (aux dropped)
    next: Tensor              # the prediction of the next frame, made by that same step


def step_layers(cells: Sequence[nn.Module], x: Tensor, states: Sequence | None, m: Tensor | None,
                sizes: Sequence | None = None, skip_from: Sequence[tuple[int, ...]] | None = None,
                memory_sizes: Sequence | None = None, down: str = "max", up: str = "bilinear"
                ) -> tuple[Tensor, list, Tensor | None]:
    """One time step through L stacked cells, the one layer loop of every network.

    Layer l reads R(h^{l-1}) + Σ_{j in skip_from[l]} R(h^j) (layer 1 reads ``x``), R resampling to
    ``sizes[l]`` (max-pool down, bilinear up; ``sizes=None``: one resolution, no resampling).  The
    zig-zag memory ``m`` is threaded through every cell (``h, s, m = cell(x, s, m)``); before a layer
    that reads it (``memory_sizes[l]`` not None) it is resampled to that layer's size, without skips.
    A cell with ``reads_below = True`` also gets ``below=Below(direct, lateral)``: its input without
    the skips, and the ``lateral`` field of the state layer l-1 just produced, resampled the same way
    (:class:`~convrnn.cells.base.Below`; MS-RNN's and OpenSTL's MIM, the thuml Motion Highway).
    Returns the top layer's output, the new per-layer states and the memory leaving the top layer.
    """
    states = states if states is not None else [None] * len(cells)
    outs: list[Tensor] = []
    new = []
    for l, cell in enumerate(cells):
        direct = x
        if l > 0:
            x = direct = outs[-1] if sizes is None else resample(outs[-1], sizes[l], down, up)
            for j in (skip_from[l] if skip_from is not None else ()):
                x = x + resample(outs[j], sizes[l], down, up)
        if m is not None and memory_sizes is not None and memory_sizes[l] is not None:
            m = resample(m, memory_sizes[l], down, up)
        if getattr(cell, "reads_below", False):
            lateral = getattr(new[-1], "lateral", None) if l > 0 else None
            if lateral is not None and sizes is not None:
                lateral = resample(lateral, sizes[l], down, up)
            h, s, m = cell(x, states[l], m, below=Below(direct, lateral))
        else:
            h, s, m = cell(x, states[l], m)
        outs.append(h)
        new.append(s)
    return outs[-1], new, m


def _fraction(s) -> Fraction:
    f = Fraction(s).limit_denominator(64)
    if f <= 0 or f > 1 or f.numerator != 1 or (f.denominator & (f.denominator - 1)):
        raise ValueError(f"scale {s!r} must be 1, 1/2, 1/4, ... (a power of two <= 1)")
    return f


def default_scales(layers: int) -> tuple[float, ...]:
    """MS-RNN's mirror pyramid for any depth: down by 2 until 1/4, flat, then back up.
    6 layers give (1, 1/2, 1/4, 1/4, 1/2, 1)."""
    if layers == 6:
        return MSRNN_SCALES
    half = (layers + 1) // 2
    down = [1.0 / 2 ** min(i, 2) for i in range(half)]
    return tuple(down + down[: layers - half][::-1])


def skip_sources(scales: Sequence[float], mode: str = "add") -> list[int | None]:
    """For each layer, the earlier layer whose output is added to its input (``add``) or None.

    A layer that goes up in scale gets the output of the last earlier layer at that scale that was
    followed by a downsampling: the mirror of the pyramid (layer 5 <- layer 2, 6 <- 1 in MS-RNN)."""
    if mode not in SKIPS:
        raise ValueError(f"skip={mode!r}; choose one of {SKIPS}")
    if mode not in ("add", "none"):
        raise ValueError(f"skip={mode!r} has no single source per layer; choose 'add' or 'none' here, "
                         "or use skip_sets() for every mode")
    out: list[int | None] = []
    for l, s in enumerate(scales):
        src = None
        if mode == "add" and l > 0 and s > scales[l - 1]:
            for j in range(l - 1, -1, -1):
                if scales[j] == s and j + 1 < len(scales) and scales[j + 1] < s:
                    src = j
                    break
        out.append(src)
    return out


def skip_sets(scales: Sequence[float], mode: str = "add") -> list[tuple[int, ...]]:
    """For each layer l, the earlier layers j < l-1 whose outputs h^j, resampled to layer l's scale,
    are added to its direct input R(h^{l-1}) (R = max-pool down / bilinear up, the stack's operators):

    - ``'none'``: no skips, every layer reads R(h^{l-1}) only.
    - ``'add'`` (MS-RNN): a layer that goes up in scale gets the mirror layer of
      :func:`skip_sources` (6 layers: layer 5 <- 2, layer 6 <- 1, 1-based).
    - ``'unet3p'`` (UNet3+-style full-scale skips, Huang et al. 2020, as in MS-RNN's ablation code):
      let b be the first layer at the smallest scale (the bottom of the down path).  Layers l <= b
      get no skip.  A layer l > b gets (a) every down-path layer j <= b at its own or a finer scale
      (s_j >= s_l: UNet3+'s same- and larger-resolution encoder maps, max-pooled), and (b) every
      layer b < j < l-1 past the bottom (UNet3+'s deeper decoder maps, upsampled).  For the 6-layer
      pyramid (1-based): layer 4 <- P2 h^2, P4 h^1; layer 5 <- h^2, P2 h^1; layer 6 <- h^1, U4 h^4.
    - ``'dense'`` (fully connected): every layer l >= 2 gets every earlier layer j < l-1.

    Parameter-free, so the parameter count stays that of the flat stack.  On a flat stack
    (b = the first layer) ``'unet3p'`` and ``'dense'`` coincide: every earlier layer is added.
    """
    if mode not in SKIPS:
        raise ValueError(f"skip={mode!r}; choose one of {SKIPS}")
    n = len(scales)
    if mode in ("add", "none"):
        return [() if j is None else (j,) for j in skip_sources(scales, mode)]
    if mode == "dense":
        return [tuple(range(max(l - 1, 0))) for l in range(n)]
    bottom = min(range(n), key=lambda j: (scales[j], j))
    out: list[tuple[int, ...]] = []
    for l in range(n):
        src: tuple[int, ...] = ()
        if l > bottom:
            src = tuple(j for j in range(l - 1) if (j <= bottom and scales[j] >= scales[l]) or j > bottom)
        out.append(src)
    return out


class RecurrentStack(Predictor):
    """L stacked recurrent cells with a frame codec; flat or multi-scale (MS-RNN).

    Args:
        cell: registered cell name (``convlstm``, ``gem_indconv``, ``predrnn`` ...) or one per layer.
        layers: L; channels: C of every layer (int or one per layer); kernel: k.
        frame_channels, frame_size, in_len, out_len: sequence layout (see :class:`Predictor`).
        patch: space-to-depth factor of the codec; embed: ``'patch'`` or ``'conv1x1'``.
        scales: per-layer scale (1, 1/2, 1/4 ...); None = flat. ``skip``: ``'add'``, ``'none'``,
            ``'unet3p'`` or ``'dense'`` (see :func:`skip_sets`; all parameter-free).
        down, up: resampling operators (``'max'``/``'avg'``, ``'bilinear'``/``'nearest'``).
        cell_kw: extra keyword arguments for every cell (``recurrent``, ``hadamard``, ``peephole``...).
        layer_kw: optional list of per-layer keyword arguments, merged over ``cell_kw``
            (e.g. PredRNN++'s gradient highway on layer 1 only).

    Cells with ``zigzag = True`` exchange the memory M; a non-zigzag cell in between (any layer
    kind can be mixed) passes M on unchanged.  Subclasses may override :meth:`layer_aux` to add a
    per-layer, per-step auxiliary loss (PredRNN-V2's decoupling loss, :mod:`convrnn.models.presets`).
    """

    def __init__(self, cell: str | Sequence[str] = "convlstm", layers: int = 4, channels: int | Sequence[int] = 64,
                 kernel: int = 3, frame_channels: int = 1, frame_size: int | tuple[int, int] = (64, 64),
                 in_len: int = 10, out_len: int = 10, patch: int = 1, embed: str = "patch",
                 embed_channels: int | None = None, scales: Sequence[float] | None = None, skip: str = "add",
                 down: str = "max", up: str = "bilinear", out_activation: str | None = None,
                 cell_kw: dict | None = None, layer_kw: Sequence[dict] | None = None):
        super().__init__(frame_channels, frame_size, in_len, out_len)
        layers, kernel = positive_int("layers", layers), positive_int("kernel", kernel)
        patch = positive_int("patch", patch)
        if embed_channels is not None:
            positive_int("embed_channels", embed_channels)
        cells = [cell] * layers if isinstance(cell, str) else list(cell)
        if len(cells) != layers or not all(isinstance(c, str) for c in cells):
            raise ValueError(f"cell must be a cell name or a list of {layers} names (one per layer), got {cell!r}")
        chans = per_layer_ints("channels", channels, layers)
        scales = tuple(float(_fraction(s)) for s in (scales or (1,) * layers))
        if len(scales) != layers:
            raise ValueError(f"scales has {len(scales)} entries for {layers} layers")
        if scales[-1] != 1:
            raise ValueError(f"the last layer feeds the readout and must be at scale 1, got scales={list(scales)}; "
                             "end the pyramid at full scale, e.g. (1, 0.5, 0.5, 1)")
        self.scales = scales
        self.multiscale = any(s != 1 for s in scales)
        h, w = self.frame_size
        # Each cell may need its state divisible further (e.g. MotionRNN's stride-2 encoder).
        multiple = max(getattr(cell_entry(n)[0], "size_multiple", 1) for n in cells)
        factor = patch * max(round(1 / s) for s in scales) * multiple
        if h % factor or w % factor:
            ok = (-(-h // factor) * factor, -(-w // factor) * factor)
            raise ValueError(
                f"frame size {h}x{w} is not divisible by {factor} (patch {patch} x smallest scale "
                f"1/{max(round(1 / s) for s in scales)} x cell multiple {multiple}); the smallest valid "
                f"size is {ok[0]}x{ok[1]}: resize or crop the frames")
        base = (h // patch, w // patch)
        self.sizes = [(int(base[0] * s), int(base[1] * s)) for s in scales]
        self.down, self.up = down, up
        self.skip_mode = skip
        self.skip_from = skip_sets(scales, skip)  # per layer: earlier layers added to its input
        # single-source view kept for 'add'/'none' (None for the multi-source modes)
        self.skips = skip_sources(scales, skip) if skip in ("add", "none") else None
        self.codec = FrameCodec(frame_channels, chans[-1], patch, embed, embed_channels, out_activation)
        per_layer = list(layer_kw or [{}] * layers)
        if len(per_layer) != layers:
            raise ValueError(f"layer_kw has {len(per_layer)} entries for {layers} layers")
        mods = []
        for l, (name, c) in enumerate(zip(cells, chans)):
            cin = self.codec.out_channels if l == 0 else chans[l - 1]
            kw = {**(cell_kw or {}), **(per_layer[l] or {})}
            mods.append(create_cell(name, in_channels=cin, channels=c, kernel=kernel, size=self.sizes[l], **kw))
        self.cells = nn.ModuleList(mods)
        zig = [m.zigzag for m in self.cells]
        self.zigzag = any(zig)
        if self.zigzag and len({c for c, z in zip(chans, zig) if z}) != 1:
            raise ValueError("the zig-zag memory M needs the same channel count in every layer that carries it")
        self.memory_channels = next((c for c, z in zip(chans, zig) if z), 0)
        self.memory_sizes = [size if z else None for size, z in zip(self.sizes, zig)]
        for l, sources in enumerate(self.skip_from):
            for src in sources:
                if chans[src] != chans[l - 1]:
                    raise ValueError(f"skip from layer {src} to layer {l} (skip={skip!r}) needs equal channel "
                                     f"counts, got {chans[src]} and {chans[l - 1]}: use equal channels or "
                                     "skip='none'")

    # -- one time step -----------------------------------------------------------------------
    def step(self, frame: Tensor, state: StackState | None) -> tuple[Tensor, StackState]:
        """One time step: frame (B, C, H, W) -> prediction of the next frame and the new state."""
        layers, m, aux = state if state is not None else (None, None, None)
        h, layers, m = step_layers(self.cells, self.codec.encode(frame), layers, m, self.sizes, self.skip_from,
                                   self.memory_sizes, self.down, self.up)
        for l, (cell, s) in enumerate(zip(self.cells, layers)):
            term = self.layer_aux(l, cell, s)
            if term is not None:
                aux = term if aux is None else aux + term
        return self.codec.decode(h), StackState(layers, m, aux)

    # -- streaming (see Predictor) ----------------------------------------------------------
    def observe(self, frame: Tensor, state: StackStream | None) -> StackStream:
        """One step on an observed frame: keeps the state and the prediction of the next frame."""
        pred, new = self.step(frame, None if state is None else state.state)
        return StackStream(new._replace(aux=None), pred)

    def rollout(self, state: StackStream | None, steps: int) -> Tensor:
        """The prediction made with the last observed frame, then ``steps - 1`` steps fed with the
        model's own outputs (as ``forward`` does after ``in_len``); ``state`` is left as it was."""
        if state is None:
            raise ValueError("observe at least one frame before forecasting")
        y, s = state.next, state.state
        outputs = [y]
        for _ in range(steps - 1):
            y, s = self.step(y, s)
            outputs.append(y)
        return torch.stack(outputs, 1)

    def layer_aux(self, layer: int, cell: nn.Module, state: Any) -> Tensor | None:
        """Auxiliary loss term of one layer at one step (summed over layers and steps, divided by
        the number of steps in :meth:`aux_losses`).  None by default."""
        return None

    def aux_losses(self, total: Tensor | None, steps: int) -> dict:
        """Named, weighted auxiliary losses from the summed ``layer_aux`` terms."""
        return {} if total is None else {"aux": total / steps}

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Prediction:
        """frames: (B, T, C, H, W), T >= in_len (T >= in_len + out_len to get targets).
        mask: (B, in_len + out_len - 1) bool, True = feed ground truth at that step (see
        :mod:`convrnn.schedules`); None = observed frames only, own predictions after."""
        frames = self.check_frames(frames)
        n = self.seq_len - 1
        if mask is None:
            mask = phase_mask(frames.shape[0], self.in_len, self.out_len, frames.device)
        outputs, state = unroll(self.step, None, frames[:, :n], n, mask)
        targets = frames[:, 1:n + 1] if frames.shape[1] >= self.seq_len else None
        return Prediction(outputs[:, self.in_len - 1:], outputs, targets, self.aux_losses(state.aux, n))


@register_model("stack")
def stack(**kw: Any) -> RecurrentStack:
    """Flat stack of recurrent layers with a frame codec (PredRNN/OpenSTL layout)."""
    return RecurrentStack(**kw)


@register_model("msrnn")
def msrnn(layers: int = 6, scales: Sequence[float] | None = None, **kw: Any) -> RecurrentStack:
    """MS-RNN multi-scale pyramid over any cell (default scales 1, 1/2, 1/4, 1/4, 1/2, 1)."""
    return RecurrentStack(layers=layers, scales=scales or default_scales(layers), **kw)
