"""What every predictor returns, and the input checks they share."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..layers import _pair


class Prediction(NamedTuple):
    """Output of every predictor's ``forward``.

    Attributes:
        future: (B, out_len, C, H, W) predictions of the future frames (what metrics use).
        outputs: (B, N, C, H, W) every frame the model emitted (what the training loss sees).
        targets: (B, N, C, H, W) ground truth aligned with ``outputs``, or None when the input
            sequence does not contain the future frames.
        aux: extra loss terms, already weighted (e.g. PredRNN-V2's decoupling loss); add them to
            the training loss.
    """
    future: Tensor
    outputs: Tensor
    targets: Tensor | None
    aux: dict


class Predictor(nn.Module):
    """Base of sequence-to-sequence frame predictors: holds the sequence layout and checks input.

    Args:
        frame_channels: C of the frames.
        frame_size: (H, W) of the frames.
        in_len: observed frames; out_len: frames to predict.
    """

    def __init__(self, frame_channels: int = 1, frame_size=(64, 64), in_len: int = 10, out_len: int = 10):
        super().__init__()
        if in_len < 1 or out_len < 1:
            raise ValueError(f"in_len and out_len must be >= 1, got {in_len}, {out_len}")
        self.frame_channels = frame_channels
        self.frame_size = _pair(frame_size)
        self.in_len = in_len
        self.out_len = out_len

    @property
    def seq_len(self) -> int:
        return self.in_len + self.out_len

    def check_frames(self, frames: Tensor) -> None:
        if frames.dim() != 5:
            raise ValueError(f"expected frames of shape (B, T, C, H, W), got shape {tuple(frames.shape)}; "
                             "add a channel axis for grayscale (frames.unsqueeze(2))")
        _, t, c, h, w = frames.shape
        if c != self.frame_channels:
            raise ValueError(f"model built for {self.frame_channels}-channel frames, got {c} channels "
                             f"(shape {tuple(frames.shape)}); set frame_channels={c}")
        if (h, w) != self.frame_size:
            raise ValueError(f"model built for {self.frame_size[0]}x{self.frame_size[1]} frames, got {h}x{w}; "
                             f"set frame_size=({h}, {w})")
        if t < self.in_len:
            raise ValueError(f"need at least in_len={self.in_len} frames, got {t}")
