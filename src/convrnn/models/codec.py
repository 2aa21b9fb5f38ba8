"""Frame codecs: how a frame enters the recurrent stack and how a prediction leaves it.

- ``patch``: PredRNN/OpenSTL patch reshape (space-to-depth by ``patch``), the stack reads the
  C·p² channels directly; readout is a 1x1 convolution back to C·p² then depth-to-space.
- ``conv1x1``: MS-RNN's 1x1 convolution to ``embed_channels`` (after the optional patch reshape),
  and the same 1x1 readout.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FrameCodec(nn.Module):
    def __init__(self, frame_channels: int, hidden_channels: int, patch: int = 1, embed: str = "patch",
                 embed_channels: int | None = None, out_activation: str | None = None):
        super().__init__()
        if embed not in ("patch", "conv1x1"):
            raise ValueError(f"embed={embed!r}; choose 'patch' or 'conv1x1'")
        self.patch = patch
        patch_channels = frame_channels * patch * patch
        if embed == "conv1x1":
            self.embed = nn.Conv2d(patch_channels, embed_channels or hidden_channels, 1)
            self.out_channels = embed_channels or hidden_channels
        else:
            self.embed = nn.Identity()
            self.out_channels = patch_channels
        self.readout = nn.Conv2d(hidden_channels, patch_channels, 1, bias=embed == "conv1x1")
        if out_activation not in (None, "sigmoid"):
            raise ValueError(f"out_activation={out_activation!r}; choose None or 'sigmoid'")
        self.out_activation = out_activation

    def encode(self, frame: Tensor) -> Tensor:
        if self.patch > 1:
            frame = F.pixel_unshuffle(frame, self.patch)
        return self.embed(frame)

    def decode(self, h: Tensor) -> Tensor:
        y = self.readout(h)
        if self.patch > 1:
            y = F.pixel_shuffle(y, self.patch)
        return y.sigmoid() if self.out_activation == "sigmoid" else y
