"""What every predictor returns, the input checks they share, and the streaming protocol."""
from __future__ import annotations

from typing import Any, NamedTuple

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

    def check_frames(self, frames: Tensor, min_len: int | None = None) -> None:
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
        if t < (self.in_len if min_len is None else min_len):
            raise ValueError(f"need at least in_len={self.in_len} frames, got {t}" if min_len is None
                             else f"need at least {min_len} frame(s), got {t}")

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
        self.check_frames(frames, min_len=1)
        state = None
        for t in range(frames.shape[1]):
            state = self.observe(frames[:, t], state)
        return self.rollout(state, steps)
