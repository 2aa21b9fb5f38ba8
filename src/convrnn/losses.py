"""The training objective and the batch format.

:func:`frame_loss` is the per-frame loss of the literature: the per-pixel loss **summed over C x H x W
of a frame and averaged over frames and sequences**.

====== ===========================================================================
mse    sum_{c,h,w} (y - x)^2
l1     sum_{c,h,w} |y - x|
l1+l2  sum_{c,h,w} (|y - x| + (y - x)^2)            (MS-RNN)
bce    sum_{c,h,w} -(x log y + (1 - x) log(1 - y))    (needs out_activation: sigmoid)
====== ===========================================================================

:func:`frames_of` turns whatever a DataModule yields into the float frames the network reads.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

LOSSES = ("mse", "l1", "l1+l2", "bce")


def frame_loss(outputs: Tensor, targets: Tensor, kind: str = "mse") -> Tensor:
    """Loss summed over C x H x W of each frame, averaged over frames and sequences.

    outputs, targets: (B, N, C, H, W). Computed in float32 whatever the autocast dtype."""
    y, x = outputs.float(), targets.float()
    if kind == "mse":
        per_pixel = (y - x).square()
    elif kind == "l1":
        per_pixel = (y - x).abs()
    elif kind == "l1+l2":
        per_pixel = (y - x).abs() + (y - x).square()
    elif kind == "bce":
        eps = 1e-6
        y = y.clamp(eps, 1 - eps)
        per_pixel = -(x * y.log() + (1 - x) * (1 - y).log())
    else:
        raise ValueError(f"loss={kind!r}; choose one of {LOSSES}")
    return per_pixel.flatten(2).sum(-1).mean()


def frames_of(batch: Any) -> Tensor:
    """A batch is a (B, T, C, H, W) tensor, or a tuple/list whose first item is, or a dict with
    ``'frames'`` (and optionally ``'mask'``, see :func:`mask_of`): float in [0, 1], or uint8 in 0..255,
    divided by 255 here, on the device (what :class:`convrnn.data.MovingMNISTDataModule` sends: a
    quarter of the bytes to copy)."""
    if isinstance(batch, dict):
        batch = batch["frames"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.dim() != 5:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"expected a batch of frames (B, T, C, H, W), got {shape}; the DataModule must "
                         "yield float tensors in [0, 1] or uint8 tensors (0..255) of that shape")
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


def mask_of(batch: Any) -> Tensor | None:
    """The validity mask of a batch, bool (B, T, C, H, W) or broadcastable to its frames (True = use the
    pixel), or None: a dict batch ``{"frames", "mask"}`` (radar data: HKO-7, RADOLAN) carries one."""
    mask = batch.get("mask") if isinstance(batch, dict) else None
    if mask is None:
        return None
    frames = batch["frames"]
    if not isinstance(mask, Tensor) or mask.dim() != 5 or mask.shape[:2] != frames.shape[:2]:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"the batch's 'mask' must be a (B, T, C, H, W) tensor like its frames "
                         f"{tuple(frames.shape)}, got {shape}")
    return mask.bool()
