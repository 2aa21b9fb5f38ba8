"""The composite model of seed 003: a recurrent encoder whose final state starts a predictor of the
future and a reconstructor of the past (Srivastava et al., ICML 2015), with the convolutional frame
codec of Sautermeister (2016) around the recurrent layers (docs/models.md §5).

Data flow (every recurrent part a stack of L cells of any registered cell, separate weights)::

    observed x_0 .. x_{n-1} --frame encoder--> recurrent encoder --final states--+
                                                                                  |
          +-------------------------------------------------------------------+---+
          v                                                                   v
    predictor      -> decoder_p -> x^_n, ..., x^_{n+m-1}     (the future)
    reconstructor  -> decoder_r -> x^_{n-1}, ..., x^_0       (the past, most recent first)

The three recurrent parts run through the library's one time loop, :func:`convrnn.loop.unroll`.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..loop import phase_mask, unroll
from ..registry import create_cell, register_model
from .base import Prediction, Predictor, positive_int
from .stack import step_layers


def sautermeister_encoder(frame_channels: int = 1, widths: Sequence[int] = (32, 64, 64)) -> nn.Sequential:
    """Sautermeister's frame encoder: three convolutions (kernels 5/3/3, strides 2/1/2, 'same'-style
    padding), each followed by ReLU then BatchNorm; (C, H, W) -> (widths[-1], H/4, W/4), e.g.
    64x64x1 -> 16x16x64.  Applied to every frame with the same weights."""
    c1, c2, c3 = widths
    layers = []
    for cin, cout, k, s in ((frame_channels, c1, 5, 2), (c1, c2, 3, 1), (c2, c3, 3, 2)):
        layers += [nn.Conv2d(cin, cout, k, stride=s, padding=k // 2), nn.ReLU(), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers)


def sautermeister_decoder(in_channels: int, frame_channels: int = 1, widths: Sequence[int] = (32, 64, 64)
                          ) -> nn.Sequential:
    """The mirrored decoder: transposed convolutions widths[1] ch 3x3 s2 -> widths[0] ch 3x3 s1 ->
    frame_channels 5x5 s2 (ReLU then BatchNorm after the first two), sigmoid output;
    (in_channels, H/4, W/4) -> (frame_channels, H, W)."""
    c1, c2, _ = widths
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, c2, 3, stride=2, padding=1, output_padding=1), nn.ReLU(), nn.BatchNorm2d(c2),
        nn.ConvTranspose2d(c2, c1, 3, stride=1, padding=1), nn.ReLU(), nn.BatchNorm2d(c1),
        nn.ConvTranspose2d(c1, frame_channels, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid())


class LayersState(NamedTuple):
    layers: list
    m: Tensor | None  # zig-zag memory leaving the top layer (PredRNN family), else None


class CellLayers(nn.Module):
    """L recurrent cells at one resolution, one step at a time (:func:`~convrnn.models.stack.step_layers`,
    the stack's layer loop): layer l reads layer l-1's h; the zig-zag memory M of PredRNN-family cells
    goes up the stack and from the top layer back to layer 1 at the next step."""

    def __init__(self, cells: Sequence[str], in_channels: int, channels: int, kernel: int, size, cell_kw: dict):
        super().__init__()
        self.cells = nn.ModuleList(
            create_cell(name, in_channels=in_channels if l == 0 else channels, channels=channels, kernel=kernel,
                        size=size, **cell_kw)
            for l, name in enumerate(cells))
        self.channels = channels

    def forward(self, x: Tensor, state: LayersState | None) -> tuple[Tensor, LayersState]:
        layers, m = state if state is not None else (None, None)
        h, layers, m = step_layers(self.cells, x, layers, m)
        return h, LayersState(layers, m)


class DecoderState(NamedTuple):
    layers: LayersState
    blank: bool  # feed no input at this step (the reconstructor's first step)


class CompositeStream(NamedTuple):
    """What a composite model's stream keeps between observed frames (see :meth:`CompositeModel.observe`)."""
    encoder: LayersState      # the recurrent encoder's state after the last observed frame
    last: Tensor              # the last observed frame (the conditional predictor's first input)


class CompositeModel(Predictor):
    """Composite encoder / predictor / reconstructor model (Srivastava et al. 2015, "Unsupervised
    Learning of Video Representations using LSTMs"), with Sautermeister's (2016) convolutional frame
    codec, as used by seed 003 (Vazhenina & Kanemura 2019) to compare Conv*, ConvIndConv* and
    ConvInd* cells.

    Per step the recurrent parts compute ``h_t, s_t = Cells(E(x_t), s_{t-1})`` with E the frame
    encoder (:func:`sautermeister_encoder`, shared by everything that reads a frame):

    - encoder: reads E(x_0) .. E(x_{n-1}) from zero states; its final states s_enc (every layer's,
      plus the zig-zag M of PredRNN-family cells) initialise both decoders;
    - predictor (own cells and decoder D_p): step j outputs x^_{n+j} = D_p(h_j);
      conditional: step j is fed frame n-1+j — step 0 the last observed frame, later steps the
      ground truth where ``mask[:, n-1+j]`` is True, else its own previous output; unconditioned:
      fed nothing (the cells' input is zero), so it depends on the inputs only through s_enc;
    - reconstructor (own cells and decoder D_r, only if ``reconstruct``): step j outputs
      x^_{n-1-j}, the inputs in reverse order; conditional: step 0 is fed nothing, step j >= 1 is fed
      frame n-j — ground truth where ``mask[:, n-j]`` is True, else its own previous output;
      unconditioned: fed nothing.

    Mask (B, in_len + out_len - 1), entry t True = feed ground-truth frame t (as in the stack):
    entries in_len .. are the predictor's choices, entries 1 .. in_len-1 the conditional
    reconstructor's (True with the default test-time mask and ordinary scheduled sampling, since
    those frames are observed); entry 0 is unused.

    ``outputs`` = predictions then reconstructions, ``targets`` = future frames then the inputs
    reversed, so a loss over (outputs, targets) is prediction loss + reconstruction loss with
    equal weights per frame.  Frames must have H, W divisible by 4; the cells run at (H/4, W/4)
    with ``codec_channels[-1]`` input channels (16x16x64 for 64x64 Moving MNIST, the seeds'
    counting setting).

    Args:
        cell: registered cell name, or one per layer; ``cell_kw`` passes the variant
            (``recurrent``, ``hadamard``) and other options to every cell.
        layers, channels, kernel: L, C and k of each of the three recurrent parts.
        frame_channels, frame_size, in_len, out_len: sequence layout.
        conditional_predictor, conditional_reconstructor: feed the previous frame (True) or nothing.
        reconstruct: build and run the reconstructor.
        codec_channels: widths of the frame encoder (decoder mirrored); (32, 64, 64) as published.
    """

    def __init__(self, cell: str | Sequence[str] = "convlstm", layers: int = 1, channels: int = 64, kernel: int = 3,
                 frame_channels: int = 1, frame_size: int | tuple[int, int] = (64, 64), in_len: int = 10,
                 out_len: int = 10,
                 conditional_predictor: bool = True, conditional_reconstructor: bool = False,
                 reconstruct: bool = True, cell_kw: dict | None = None,
                 codec_channels: Sequence[int] = (32, 64, 64)):
        super().__init__(frame_channels, frame_size, in_len, out_len)
        layers, channels, kernel = (positive_int(k, v) for k, v in (("layers", layers), ("channels", channels),
                                                                      ("kernel", kernel)))
        cells = [cell] * layers if isinstance(cell, str) else list(cell)
        if len(cells) != layers:
            raise ValueError(f"need {layers} cell names, got {len(cells)}")
        if len(codec_channels) != 3:
            raise ValueError(f"codec_channels needs 3 widths (encoder convs 1-3), got {list(codec_channels)}")
        h, w = self.frame_size
        if h % 4 or w % 4:
            raise ValueError(f"frame size {h}x{w} is not divisible by 4 (the frame codec has two stride-2 "
                             f"convolutions); the smallest valid size is {-(-h // 4) * 4}x{-(-w // 4) * 4}: "
                             "resize or crop the frames")
        self.state_size = (h // 4, w // 4)
        self.conditional_predictor = conditional_predictor
        self.conditional_reconstructor = conditional_reconstructor
        self.reconstruct = reconstruct
        self.frame_encoder = sautermeister_encoder(frame_channels, codec_channels)
        enc_channels = codec_channels[-1]

        def parts() -> CellLayers:
            return CellLayers(cells, enc_channels, channels, kernel, self.state_size, dict(cell_kw or {}))

        self.encoder = parts()
        self.predictor = parts()
        self.predictor_decoder = sautermeister_decoder(channels, frame_channels, codec_channels)
        if reconstruct:
            self.reconstructor = parts()
            self.reconstructor_decoder = sautermeister_decoder(channels, frame_channels, codec_channels)
        self.enc_channels = enc_channels

    # -- steps for unroll ----------------------------------------------------------------------
    def _encode_step(self, frame: Tensor, state: LayersState | None) -> tuple[Tensor, LayersState]:
        _, state = self.encoder(self.frame_encoder(frame), state)
        return frame, state  # the encoder emits nothing; the frame is a placeholder output

    def _decode_step(self, cells: CellLayers, decoder: nn.Module, conditional: bool, frame: Tensor,
                     state: DecoderState) -> tuple[Tensor, DecoderState]:
        if conditional and not state.blank:
            x = self.frame_encoder(frame)
        else:
            x = frame.new_zeros(frame.shape[0], self.enc_channels, *self.state_size)
        h, layers = cells(x, state.layers)
        return decoder(h), DecoderState(layers, False)

    # -- streaming (see Predictor) -------------------------------------------------------------
    def observe(self, frame: Tensor, state: CompositeStream | None) -> CompositeStream:
        """One encoder step on an observed frame.  The forecast is not made here: the predictor is a
        separate network started from the encoder's state, so :meth:`rollout` runs it from there."""
        _, enc = self._encode_step(frame, None if state is None else state.encoder)
        return CompositeStream(enc, frame)

    def rollout(self, state: CompositeStream | None, steps: int) -> Tensor:
        """The predictor's ``steps`` frames from the encoder's state (fed the last observed frame
        first when conditional, then its own outputs), as ``forward`` does; ``state`` is not changed."""
        if state is None:
            raise ValueError("observe at least one frame before forecasting")
        step = partial(self._decode_step, self.predictor, self.predictor_decoder, self.conditional_predictor)
        future, _ = unroll(step, DecoderState(state.encoder, False), state.last[:, None], steps)
        return future

    # -- forward -------------------------------------------------------------------------------
    def check_mask(self, mask: Tensor, batch: int) -> None:
        n = self.seq_len - 1
        if mask.dim() != 2 or mask.shape[1] != n or mask.shape[0] not in (1, batch) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a (B, in_len + out_len - 1) = ({batch}, {n}) bool tensor, got "
                             f"{mask.dtype} of shape {tuple(mask.shape)}; build it with "
                             "convrnn.schedules.sample_mask or convrnn.loop.phase_mask")

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Prediction:
        """frames: (B, T, C, H, W) with T >= in_len (T >= in_len + out_len to get targets).
        mask: (B, in_len + out_len - 1) bool (see the class docstring); None = test time:
        the predictor feeds back its own outputs, the conditional reconstructor the observed frames."""
        frames = self.check_frames(frames)
        b, n = frames.shape[0], self.in_len
        if mask is None:
            mask = phase_mask(b, n, self.out_len, frames.device)
        self.check_mask(mask, b)
        mask = mask.expand(b, -1)
        _, enc = unroll(self._encode_step, None, frames[:, :n], n)

        step = partial(self._decode_step, self.predictor, self.predictor_decoder, self.conditional_predictor)
        future, _ = unroll(step, DecoderState(enc, False), frames[:, n - 1:self.seq_len - 1], self.out_len,
                           mask[:, n - 1:])
        outputs, targets = [future], [frames[:, n:self.seq_len]]
        if self.reconstruct:
            step = partial(self._decode_step, self.reconstructor, self.reconstructor_decoder,
                           self.conditional_reconstructor)
            past = frames[:, :n].flip(1)  # x_{n-1}, ..., x_0: the reconstruction targets
            fed = torch.cat([torch.zeros_like(past[:, :1]), past[:, :n - 1]], 1)  # step 0 blank, then x_{n-j}
            fed_mask = torch.cat([mask[:, :1], mask[:, 1:n].flip(1)], 1)
            recon, _ = unroll(step, DecoderState(enc, True), fed, n, fed_mask)
            outputs.append(recon)
            targets.append(past)
        has_future = frames.shape[1] >= self.seq_len
        return Prediction(future, torch.cat(outputs, 1), torch.cat(targets, 1) if has_future else None, {})


@register_model("composite")
def composite(**kw: Any) -> CompositeModel:
    """Composite encoder / predictor / reconstructor with Sautermeister's conv codec (seed 003)."""
    return CompositeModel(**kw)
