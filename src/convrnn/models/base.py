"""What every predictor returns, the input checks they share, and the streaming protocol."""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


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


def positive_int(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1; a clear error naming ``name`` otherwise (strings,
    floats and bools are refused: ``channels: "8"`` is a mistake, not a number)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def per_layer_ints(name: str, value, layers: int) -> list[int]:
    """An int (the same for every layer) or one positive int per layer -> a list of ``layers`` ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Integral, Sequence)):
        raise TypeError(f"{name} must be a positive integer or a list of {layers} (one per layer), "
                        f"got {value!r} ({type(value).__name__})")
    values = [value] * layers if isinstance(value, Integral) else list(value)
    if len(values) != layers:
        raise ValueError(f"{name} has {len(values)} entries for {layers} layers: give one int or {layers}")
    return [positive_int(f"{name}[{i}]", v) for i, v in enumerate(values)]


def frame_size_pair(size) -> tuple[int, int]:
    """``64`` or ``(64, 48)`` -> (H, W), both positive integers."""
    if isinstance(size, Integral) and not isinstance(size, bool):
        size = (size, size)
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
        raise TypeError(f"frame_size must be an int or [height, width], got {size!r}")
    return positive_int("frame_size[0]", size[0]), positive_int("frame_size[1]", size[1])


class Predictor(nn.Module):
    """Base of sequence-to-sequence frame predictors: holds the sequence layout and checks input.

    Streaming protocol (what :class:`convrnn.Forecaster` and its streams use): ``observe(frame,
    state) -> state`` feeds one observed frame (B, C, H, W) and keeps the recurrent state (``None``
    = nothing seen yet); ``rollout(state, steps) -> (B, steps, C, H, W)`` forecasts the next frames
    from that state without changing it.  ``forecast(frames, steps)`` observes every frame of
    (B, T, C, H, W) then rolls out; with ``T = in_len`` and ``steps = out_len`` it equals
    ``forward(frames).future`` (tests/test_forecaster.py checks every registered model).  A subclass
    that cannot stream keeps the default ``observe``, which raises an error naming the model.

    Args:
        frame_channels: C of the frames.
        frame_size: (H, W) of the frames.
        in_len: observed frames; out_len: frames to predict.
    """

    def __init__(self, frame_channels: int = 1, frame_size: int | tuple[int, int] = (64, 64), in_len: int = 10,
                 out_len: int = 10):
        super().__init__()
        self.frame_channels = positive_int("frame_channels", frame_channels)
        self.frame_size = frame_size_pair(frame_size)
        self.in_len = positive_int("in_len", in_len)
        self.out_len = positive_int("out_len", out_len)

    @property
    def seq_len(self) -> int:
        return self.in_len + self.out_len

    def check_frames(self, frames: Tensor, min_len: int | None = None) -> Tensor:
        """Checks ``frames`` (B, T, C, H, W) against the model and returns them in the model's dtype:
        other float dtypes are converted, uint8 (0..255) is divided by 255 (the library's convention,
        as in :func:`convrnn.losses.frames_of`); any other dtype is an error.  At least ``min_len``
        frames (default ``in_len``)."""
        if not isinstance(frames, Tensor):
            raise TypeError(f"expected a tensor of frames (B, T, C, H, W), got {type(frames).__name__}")
        if frames.dim() != 5:
            raise ValueError(f"expected frames of shape (B, T, C, H, W), got shape {tuple(frames.shape)}; "
                             "add a channel axis for grayscale (frames.unsqueeze(2))")
        b, t, c, h, w = frames.shape
        if b == 0:
            raise ValueError(f"empty batch: frames of shape {tuple(frames.shape)} hold no sequence (B = 0)")
        if c != self.frame_channels:
            hint = (f"; channels-last frames (B, T, H, W, C)? use frames.permute(0, 1, 4, 2, 3)"
                    if w == self.frame_channels else f"; set frame_channels={c}")
            raise ValueError(f"model built for {self.frame_channels}-channel frames, got {c} channels "
                             f"(shape {tuple(frames.shape)}){hint}")
        if (h, w) != self.frame_size:
            raise ValueError(f"model built for {self.frame_size[0]}x{self.frame_size[1]} frames, got {h}x{w}; "
                             f"set frame_size=({h}, {w})")
        if t < (self.in_len if min_len is None else min_len):
            raise ValueError(f"need at least in_len={self.in_len} frames, got {t}" if min_len is None
                             else f"need at least {min_len} frame(s), got {t}")
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)
        if frames.dtype == torch.uint8:
            return frames.to(dtype) / 255
        if not frames.is_floating_point():
            raise TypeError(f"frames of dtype {frames.dtype}: give floats in [0, 1] (or uint8 0..255)")
        return frames.to(dtype)

    # -- streaming ------------------------------------------------------------------------------
    def observe(self, frame: Tensor, state: Any) -> Any:
        """Feed one observed frame (B, C, H, W); returns the new streaming state."""
        raise NotImplementedError(f"{type(self).__name__} does not implement observe/rollout, so it cannot "
                                  "stream or forecast frame by frame; use forward(frames).future")

    def rollout(self, state: Any, steps: int) -> Tensor:
        """The next ``steps`` frames (B, steps, C, H, W) after the observed ones; ``state`` is not changed."""
        raise NotImplementedError(f"{type(self).__name__} does not implement observe/rollout")

    def forecast(self, frames: Tensor, steps: int | None = None) -> Tensor:
        """Observe every frame of ``frames`` (B, T, C, H, W), T >= 1, then forecast ``steps`` frames
        (default ``out_len``); more steps than trained run the model on its own outputs."""
        steps = self.out_len if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps (frames to forecast) must be >= 1, got {steps}")
        frames = self.check_frames(frames, min_len=1)
        state = None
        for t in range(frames.shape[1]):
            state = self.observe(frames[:, t], state)
        return self.rollout(state, steps)
