"""Scheduled sampling schedules.  Each gives, for a training iteration (and its epoch), the probability
of feeding ground truth in the input phase and in the output phase; :func:`sample_mask` turns those into the
boolean step mask that :func:`convrnn.loop.unroll` consumes (sampled with torch's RNG on the
device, outside the time loop).

- :class:`TeacherForcing`: always ground truth (p = 1).
- :class:`FreeRunning`: never ground truth in the output phase (p = 0).
- :class:`Linear`: PredRNN/OpenSTL/MS-RNN: p falls linearly from ``start`` to ``end`` over
  ``iterations`` (OpenSTL: 1.0, -2e-5 per iteration, 0 from 50k iterations on).
- :class:`InverseSigmoid`: Bengio et al. 2015 / Sautermeister 2016: p_i = a / (a + exp(i / a)).
- :class:`ReverseScheduled`: PredRNN-V2 (Wang et al. 2022): the input phase is also sampled,
  rising from 0.5 to 1 (exponential, time constant ``alpha``) between ``step1`` and ``step2``,
  while the output phase falls linearly from 0.5 to 0; per iteration (PredRNN-V2, OpenSTL) or,
  with ``unit="epoch"``, per epoch (MS-RNN's code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


class Schedule:
    """Probability of ground truth (input phase, output phase) at a training iteration; ``epoch`` is
    the 0-based epoch that iteration belongs to (Lightning's ``current_epoch``)."""

    def probs(self, iteration: int, epoch: int = 0) -> tuple[float, float]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class TeacherForcing(Schedule):
    def probs(self, iteration: int, epoch: int = 0) -> tuple[float, float]:
        return 1.0, 1.0


@dataclass
class FreeRunning(Schedule):
    def probs(self, iteration: int, epoch: int = 0) -> tuple[float, float]:
        return 1.0, 0.0


@dataclass
class Linear(Schedule):
    start: float = 1.0
    end: float = 0.0
    iterations: int = 50_000

    def probs(self, iteration: int, epoch: int = 0) -> tuple[float, float]:
        if self.iterations <= 0:
            return 1.0, self.end
        frac = min(max(iteration, 0) / self.iterations, 1.0)
        return 1.0, self.start + (self.end - self.start) * frac


@dataclass
class InverseSigmoid(Schedule):
    a: float = 1000.0

    def probs(self, iteration: int, epoch: int = 0) -> tuple[float, float]:
        z = iteration / self.a
        return 1.0, (self.a / (self.a + math.exp(z))) if z < 700 else 0.0


@dataclass
class ReverseScheduled(Schedule):
    """Reverse scheduled sampling (PredRNN-V2, Wang et al. 2022).  With k the clock::

        k < step1:          p_in = 0.5,                                  p_out = 0.5
        step1 <= k < step2: p_in = 1 - 0.5 exp(-(k - step1) / alpha),     p_out = 0.5 - 0.5 (k - step1) / (step2 - step1)
        k >= step2:         p_in = 1,                                    p_out = 0

    ``unit="iteration"`` (default; PredRNN-V2's code and OpenSTL: 25,000 / 50,000 / 5,000): k is the
    training iteration.  ``unit="epoch"`` (MS-RNN's code): k is the epoch counted from 1, as MS-RNN
    numbers them (``epoch + 1``), constant within an epoch; MS-RNN uses step1 = E/3, step2 = 2E/3,
    alpha = E/15 for E epochs.
    """
    step1: float = 25_000
    step2: float = 50_000
    alpha: float = 5_000.0
    unit: str = "iteration"

    def __post_init__(self):
        if self.unit not in ("iteration", "epoch"):
            raise ValueError(f"unit={self.unit!r}; choose 'iteration' or 'epoch'")
        if not 0 <= self.step1 < self.step2 or self.alpha <= 0:
            raise ValueError(f"need 0 <= step1 < step2 and alpha > 0, got step1={self.step1}, step2={self.step2}, "
                             f"alpha={self.alpha}")

    def probs(self, iteration: int, epoch: int = 0) -> tuple[float, float]:
        k = iteration if self.unit == "iteration" else epoch + 1
        if k < self.step1:
            return 0.5, 0.5
        if k < self.step2:
            enc = 1.0 - 0.5 * math.exp(-(k - self.step1) / self.alpha)
            dec = 0.5 - 0.5 * (k - self.step1) / (self.step2 - self.step1)
            return enc, dec
        return 1.0, 0.0


SCHEDULES = {"teacher": TeacherForcing, "free": FreeRunning, "linear": Linear,
             "inverse_sigmoid": InverseSigmoid, "reverse": ReverseScheduled}


def create_schedule(name: str, **kw) -> Schedule:
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kw)


def sample_mask(p_in: float, p_out: float, batch: int, in_len: int, out_len: int, device=None,
                per_sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Boolean (B, in_len + out_len - 1) mask; entry t True = feed ground-truth frame t at step t.

    Input-phase entries (t < in_len) are True with probability ``p_in`` (1 except for reverse
    scheduled sampling; t = 0 is always True), output-phase entries with ``p_out``.  With
    ``per_sample=False`` one coin per step is shared by the batch (Sautermeister's protocol).
    """
    n = in_len + out_len - 1
    rows = batch if per_sample else 1
    probs = torch.full((rows, n), float(p_out), device=device)
    probs[:, :in_len] = float(p_in)
    probs[:, 0] = 1.0
    mask = torch.rand(rows, n, device=device, generator=generator) < probs
    return mask.expand(batch, n) if not per_sample else mask
