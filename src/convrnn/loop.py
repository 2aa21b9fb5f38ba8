"""The one time loop of the library.

Every network (flat stack, multi-scale pyramid, composite encoder/predictor/reconstructor) unrolls
its step function through :func:`unroll`.  Which frame is fed at each step is decided by a boolean
mask tensor: ``True`` feeds the ground-truth frame, ``False`` feeds the model's own previous output.
Scheduled sampling, reverse scheduled sampling and teacher forcing are only different masks (see
:mod:`convrnn.schedules`).  The loop has no host syncs, no ``.item()``, no Python randomness and
static shapes, so it compiles and graph-captures.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Step = Callable[[Tensor, Any], "tuple[Tensor, Any]"]


def phase_mask(batch: int, in_len: int, out_len: int, device=None) -> Tensor:
    """The test-time mask: ground truth for the ``in_len`` observed frames, own predictions after.
    Shape (B, in_len + out_len - 1): entry t says what is fed at step t (which predicts frame t+1)."""
    m = torch.zeros(batch, in_len + out_len - 1, dtype=torch.bool, device=device)
    m[:, :in_len] = True
    return m


def unroll(step: Step, state: Any, inputs: Tensor, n_steps: int, mask: Tensor | None = None
           ) -> tuple[Tensor, Any]:
    """Run ``y_t, state = step(x_t, state)`` for ``t = 0 .. n_steps - 1``.

    Args:
        step: one step; ``y_t`` must have the shape of ``x_t`` (it is fed back).
        state: initial state (anything ``step`` understands; ``None`` for zeros).
        inputs: (B, T_in, ...) ground-truth inputs for steps ``0 .. T_in - 1``; ``T_in`` may be
            smaller than ``n_steps``: later steps always feed back the previous output.
        mask: (B, n_steps) bool; ``mask[:, t]`` True feeds ``inputs[:, t]``, False feeds ``y_{t-1}``.
            ``None`` feeds every available input.  ``mask[:, 0]`` is ignored (nothing to feed back).

    Returns:
        outputs (B, n_steps, ...) and the final state.
    """
    t_in = inputs.shape[1]
    if t_in < 1:
        raise ValueError("unroll needs at least one input frame")
    if mask is not None and (mask.dim() != 2 or mask.shape[1] < min(t_in, n_steps)):
        raise ValueError(f"mask must be (B, n_steps={n_steps}) booleans, got shape {tuple(mask.shape)}")
    outputs = []
    y = inputs[:, 0]
    for t in range(n_steps):
        if t == 0:
            x = inputs[:, 0]
        elif t < t_in:
            if mask is None:
                x = inputs[:, t]
            else:
                m = mask[:, t].reshape((-1,) + (1,) * (y.dim() - 1))
                x = torch.where(m, inputs[:, t], y)
        else:
            x = y
        y, state = step(x, state)
        outputs.append(y)
    return torch.stack(outputs, 1), state
