"""Frame-prediction metrics with the literature's conventions (OpenSTL / PredRNN / MS-RNN tables).

On the predicted future frames only, pixel values in [0, 1], per predicted frame (lead time) and averaged:

- MSE, MAE "per frame": sum over C*H*W of (pred - target)^2 (|pred - target|), on the unclipped prediction.
- PSNR: 10 log10(1 / mean_pixel((clip(pred) - target)^2)) per frame (capped at 100 dB for identical frames).
- SSIM (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to structural
  similarity", IEEE TIP 2004) on clip(pred), per frame and channel, averaged:

      SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),  C1 = (K1 R)², C2 = (K2 R)²

  averaged over the positions where the local window lies inside the image (the border is cropped, as
  in Wang's code and scikit-image). Two conventions:

  * "standard": Gaussian window 11x11, σ 1.5, K1 0.01, K2 0.03, data range R = 1, population
    (co)variances — Wang et al. 2004, MS-RNN's code; scikit-image's ``structural_similarity(
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.
  * "openstl": what OpenSTL's tables use — scikit-image <= 0.19 defaults on float images: 7x7 uniform
    window, sample (co)variances (N / (N - 1)), data range R = 2. It reads higher than "standard" by an
    amount that depends on the error (measured +0.02 for a 1-pixel blur to +0.18 for light noise,
    docs/references.md), so no constant converts one into the other: compare within one convention.
- LPIPS (optional, AlexNet, Zhang et al. 2018) when torchvision and its pretrained weights are available.

torchmetrics' own SSIM is not used: it averages over the whole reflect-padded image instead of cropping
the border, so it differs from Wang's definition near the edges.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

SSIM_CONVENTIONS = {
    # window size, Gaussian sigma (None = uniform window), data range, sample covariance
    "standard": {"size": 11, "sigma": 1.5, "data_range": 1.0, "sample_covariance": False},
    "openstl": {"size": 7, "sigma": None, "data_range": 2.0, "sample_covariance": True},
}
CONVENTION_TEXT = {
    "standard": "SSIM standard (Wang et al. 2004: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1)",
    "openstl": "SSIM openstl (scikit-image<=0.19 float defaults: uniform 7x7, sample covariance, data range 2)",
}
PSNR_CAP_MSE = 1e-10  # PSNR of identical frames is capped at 10 log10(1 / 1e-10) = 100 dB


def _window_1d(size: int, sigma: float | None, dtype, device) -> Tensor:
    if sigma is None:
        return torch.full((size,), 1.0 / size, dtype=dtype, device=device)
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(pred: Tensor, target: Tensor, convention: str = "standard", k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """SSIM of each image, averaged over its channels: (N, C, H, W) x 2 -> (N,).

    Inputs are used as given (clip the prediction first). Float16/bfloat16 inputs are computed in float32.
    """
    if convention not in SSIM_CONVENTIONS:
        raise ValueError(f"ssim convention must be one of {list(SSIM_CONVENTIONS)}, got {convention!r}")
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    cfg = SSIM_CONVENTIONS[convention]
    size = cfg["size"]
    n, c, h, w = pred.shape
    if h < size or w < size:
        raise ValueError(f"SSIM ({convention}) needs frames of at least {size}x{size}, got {h}x{w}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    x, y = pred.to(dtype), target.to(dtype)
    win = _window_1d(size, cfg["sigma"], dtype, pred.device)
    rows, cols = win.view(1, 1, size, 1).repeat(c, 1, 1, 1), win.view(1, 1, 1, size).repeat(c, 1, 1, 1)
    stacked = torch.cat([x, y, x * x, y * y, x * y])                     # (5N, C, H, W)
    means = F.conv2d(F.conv2d(stacked, rows, groups=c), cols, groups=c)  # separable window, 'valid' only
    mx, my, mxx, myy, mxy = means.split(n)
    norm = size * size / (size * size - 1) if cfg["sample_covariance"] else 1.0
    vx, vy, cxy = norm * (mxx - mx * mx), norm * (myy - my * my), norm * (mxy - mx * my)
    c1, c2 = (k1 * cfg["data_range"]) ** 2, (k2 * cfg["data_range"]) ** 2
    smap = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.mean(dim=(1, 2, 3))


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR per frame for data range 1: (N, C, H, W) x 2 -> (N,), capped at 100 dB."""
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(PSNR_CAP_MSE))


def copy_last_baseline(inputs: Tensor, targets: Tensor) -> Tensor:
    """The trivial forecast: the last observed frame repeated for every target frame.

    inputs (B, T_in, C, H, W), targets (B, T_out, C, H, W) -> prediction shaped like targets.
    """
    if inputs.dim() != 5 or targets.dim() != 5 or inputs.shape[0] != targets.shape[0] \
            or inputs.shape[2:] != targets.shape[2:]:
        raise ValueError(f"inputs and targets must be (B, T, C, H, W) with the same B, C, H, W; got "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    return inputs[:, -1:].expand_as(targets).clone()


def _load_lpips():
    """AlexNet LPIPS network from torchmetrics (needs torchvision and, once, its pretrained weights)."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).net
    except (ImportError, OSError, RuntimeError) as err:
        raise RuntimeError(
            "LPIPS is unavailable: it needs torchvision (pip install torchvision) and AlexNet's pretrained "
            "weights, which torchvision downloads once into ~/.cache/torch (copy them there on an offline "
            f"machine); or use lpips=False. Cause: {err}") from err


class PredictionMetrics(Metric):
    """MSE, MAE, SSIM, PSNR (and optionally LPIPS) of predicted frames, overall and per lead time.

    ``update(pred, target)`` takes (B, T, C, H, W) future frames in [0, 1] (pred unclipped). ``compute()``
    returns 0-dim tensors ``mse``, ``mae`` (per frame: summed over C*H*W, before clipping), ``ssim``,
    ``psnr`` (after clipping pred to [0, 1]) [, ``lpips``] and (T,) tensors ``<name>_per_frame`` (the
    metric at each lead time). See the module docstring for the equations and the two SSIM
    conventions; ``self.convention`` says which one a number used. States are sums (DDP-safe); every
    process must see at least one batch, and every batch the same T.

    Args:
        ssim: "standard" (Wang et al. 2004; Gaussian 11x11, data range 1) or "openstl" (OpenSTL's tables).
        lpips: also compute LPIPS (AlexNet); raises a clear error when it is not available offline.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    NAMES = ("mse", "mae", "ssim", "psnr")

    def __init__(self, ssim: str = "standard", lpips: bool = False, **kwargs):
        super().__init__(**kwargs)
        if ssim not in SSIM_CONVENTIONS:
            raise ValueError(f"ssim must be one of {list(SSIM_CONVENTIONS)}, got {ssim!r}")
        self.ssim_convention = ssim
        self.lpips_net = _load_lpips() if lpips else None
        self.names = self.NAMES + (("lpips",) if lpips else ())
        self.convention = ("MSE/MAE per frame (sum over C*H*W, before clipping); " + CONVENTION_TEXT[ssim]
                           + "; PSNR 10 log10(1/MSE_pixel) per frame after clipping to [0, 1]"
                           + ("; LPIPS AlexNet" if lpips else "") + "; averaged over frames and sequences")
        for name in self.names:
            self.add_state(f"{name}_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")  # becomes (T,)
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 5:
            raise ValueError(f"pred and target must both be (B, T, C, H, W) of one shape, got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        t = pred.shape[1]
        if self.count > 0 and self.mse_sum.shape != (t,):
            raise ValueError(f"every batch must have the same number of frames: got T={t} after "
                             f"T={self.mse_sum.numel()}; use one PredictionMetrics per horizon")
        pred, target = pred.detach().float(), target.detach().float()
        err = pred - target
        clipped = pred.clamp(0.0, 1.0)
        frames = {  # each (B, T)
            "mse": err.pow(2).flatten(2).sum(2),
            "mae": err.abs().flatten(2).sum(2),
            "ssim": ssim(clipped.flatten(0, 1), target.flatten(0, 1), self.ssim_convention).view(-1, t),
            "psnr": psnr(clipped.flatten(0, 1), target.flatten(0, 1)).view(-1, t),
        }
        if self.lpips_net is not None:
            frames["lpips"] = self._lpips(clipped, target)
        for name, values in frames.items():
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + values.sum(0))
        self.count += pred.shape[0]

    def _lpips(self, pred: Tensor, target: Tensor) -> Tensor:
        b, t, c = pred.shape[:3]
        if c not in (1, 3):
            raise ValueError(f"LPIPS needs 1- or 3-channel frames, got {c} channels; use lpips=False")
        a, b_ = (x.flatten(0, 1).expand(-1, 3, -1, -1) for x in (pred, target))
        return self.lpips_net(a, b_, normalize=True).reshape(b, t)

    def compute(self) -> dict[str, Tensor]:
        if self.count == 0:
            raise RuntimeError("PredictionMetrics.compute() called before any update(pred, target)")
        out = {}
        for name in self.names:
            per_frame = getattr(self, f"{name}_sum") / self.count
            out[name] = per_frame.mean()
            out[f"{name}_per_frame"] = per_frame
        return out


# -- nowcasting scores ---------------------------------------------------------------------------
# Radar pixels p in [0, 1] hold reflectivity dBZ = 70 p - 10 (HKO-7's PNGs / 255; RADOLAN after the MS-RNN
# conversion); a Z-R relation Z = a R^b (Z = 10^(dBZ/10), R in mm/h) turns rain rates into pixel values.
ZR_HKO7 = (58.53, 1.56)          # Shi et al. 2017 (HKO-7), nowcasting/config.py
ZR_DWD = (256.0, 1.42)           # MS-RNN's German radar conversion (util/load_DWD.py)
RAIN_THRESHOLDS = (0.5, 2.0, 5.0, 10.0, 30.0)          # mm/h, the HKO-7 benchmark's
BALANCING_WEIGHTS = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)   # B-MSE / B-MAE weight per rain-rate band


def rain_to_pixel(rate, zr: tuple[float, float] = ZR_HKO7):
    """Rain rate R (mm/h) -> pixel value p = (10 log10(a R^b) + 10) / 70 (not clipped; R = 0 gives -inf)."""
    a, b = zr
    rate = torch.as_tensor(rate, dtype=torch.float64)
    return (10.0 * (math.log10(a) + b * torch.log10(rate)) + 10.0) / 70.0


def pixel_to_rain(pixel, zr: tuple[float, float] = ZR_HKO7):
    """Pixel value p -> rain rate R = (10^((70 p - 10) / 10) / a)^(1 / b) in mm/h (inverse of rain_to_pixel)."""
    a, b = zr
    dbz = 70.0 * torch.as_tensor(pixel, dtype=torch.float64) - 10.0
    return (10.0 ** (dbz / 10.0) / a) ** (1.0 / b)


def _event_thresholds(thresholds, zr) -> Tensor:
    """Thresholds in mm/h -> pixel values with ``zr``; ``zr=None``: already in the data's units."""
    values = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("give at least one threshold")
    if zr is None:
        return values
    if (values <= 0).any():
        raise ValueError(f"rain-rate thresholds must be > 0 mm/h, got {values.tolist()}")
    return rain_to_pixel(values, zr)


def _check_pair(pred: Tensor, truth: Tensor, mask: Tensor | None) -> Tensor | None:
    if pred.shape != truth.shape or pred.dim() != 5:
        raise ValueError(f"pred and truth must both be (B, T, C, H, W) of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(truth.shape)}")
    if mask is None:
        return None
    try:
        return torch.broadcast_to(mask.to(device=pred.device, dtype=torch.bool), pred.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the frames "
                         f"{tuple(pred.shape)}") from None


class SkillScores(Metric):
    """Categorical nowcasting scores (POD, FAR, CSI, HSS) from contingency counts accumulated over the
    whole test set, overall and per lead time.

    For each threshold an *event* is a value >= threshold (the HKO-7 convention; pysteps uses >).  Over the
    pixels where ``mask`` is True (all when it is None): hits TP (event predicted and observed), misses FN
    (observed only), false alarms FP (predicted only), correct negatives TN (neither). Then

        POD = TP / (TP + FN)    FAR = FP / (TP + FP)    CSI = TP / (TP + FN + FP)
        HSS = 2 (TP TN - FN FP) / ((TP + FN)(FN + TN) + (TP + FP)(FP + TN))

    (NaN where a denominator is 0).  Counts are summed first, so the scores weigh every pixel of the test
    set equally (never a mean of per-batch scores).  Shi et al., "Deep learning for precipitation
    nowcasting: a benchmark and a new model" (NeurIPS 2017), HKO-7 code nowcasting/hko_evaluation.py.

    Args:
        thresholds: rain rates in mm/h (default 0.5, 2, 5, 10, 30), converted to pixel values with ``zr``;
            with ``zr=None`` they are taken in the data's own units.
        zr: (a, b) of Z = a R^b (:data:`ZR_HKO7`, :data:`ZR_DWD`), or None.

    ``update(pred, truth, mask=None)``: (B, T, C, H, W) in the data's units (pixels in [0, 1]); mask bool,
    broadcastable to them.  ``compute()``: ``pod``, ``far``, ``csi``, ``hss`` (K,) float64, one per
    threshold; ``<score>_per_frame`` (T, K); the counts ``hits``, ``misses``, ``false_alarms``,
    ``correct_negatives`` (T, K) int64; ``thresholds`` (K,) in the data's units.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    COUNTS = ("hits", "misses", "false_alarms", "correct_negatives")

    def __init__(self, thresholds=RAIN_THRESHOLDS, zr: tuple[float, float] | None = ZR_HKO7, **kwargs):
        super().__init__(**kwargs)
        self.rain_thresholds = tuple(float(t) for t in torch.as_tensor(thresholds).flatten().tolist())
        self.zr = None if zr is None else (float(zr[0]), float(zr[1]))
        self.register_buffer("levels", _event_thresholds(thresholds, zr), persistent=False)
        for name in self.COUNTS:   # 0-d until the first update, then (T, K)
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> None:
        mask = _check_pair(pred, truth, mask)
        t = pred.shape[1]
        if self.hits.dim() and self.hits.shape[0] != t:
            raise ValueError(f"every batch must have the same number of frames: got T={t} after "
                             f"T={self.hits.shape[0]}")
        counts = {name: [] for name in self.COUNTS}
        for level in self.levels.tolist():   # one threshold at a time: no (K, B, T, C, H, W) tensor
            p, o = pred.detach() >= level, truth.detach() >= level
            cells = {"hits": p & o, "misses": ~p & o, "false_alarms": p & ~o, "correct_negatives": ~p & ~o}
            for name, cell in cells.items():
                cell = cell if mask is None else cell & mask
                counts[name].append(cell.transpose(0, 1).reshape(t, -1).sum(1))
        for name, parts in counts.items():
            setattr(self, name, getattr(self, name) + torch.stack(parts, 1))

    def compute(self) -> dict[str, Tensor]:
        if self.hits.dim() == 0:
            raise RuntimeError("SkillScores.compute() called before any update(pred, truth)")
        per_frame = skill_scores(*(getattr(self, name).double() for name in self.COUNTS))
        overall = skill_scores(*(getattr(self, name).sum(0).double() for name in self.COUNTS))
        out = {name: value for name, value in overall.items()}
        out.update({f"{name}_per_frame": value for name, value in per_frame.items()})
        out.update({name: getattr(self, name).clone() for name in self.COUNTS})
        out["thresholds"] = self.levels.clone()
        return out


def skill_scores(hits: Tensor, misses: Tensor, false_alarms: Tensor,
                 correct_negatives: Tensor) -> dict[str, Tensor]:
    """POD, FAR, CSI, HSS from contingency counts (any shape, elementwise; NaN where undefined)."""
    a, c, b, d = hits, misses, false_alarms, correct_negatives
    return {"pod": a / (a + c), "far": b / (a + b), "csi": a / (a + b + c),
            "hss": 2 * (a * d - c * b) / ((a + c) * (c + d) + (a + b) * (b + d))}


class BalancedErrors(Metric):
    """Balanced MSE and MAE (B-MSE, B-MAE) of the HKO-7 benchmark, overall and per lead time.

    Each pixel's error is weighted by the rain rate R of the ground truth: w = 1 for R < 2 mm/h, 2 for
    [2, 5), 5 for [5, 10), 10 for [10, 30), 30 for R >= 30 (``weights`` per band of ``thresholds``:
    w = weights[0] + sum_k (weights[k+1] - weights[k]) [truth >= threshold_k]), times the mask; then

        B-MSE = sum over C x H x W of w (pred - truth)^2, averaged over frames and sequences (B-MAE: |.|).

    Scale: pixel values in [0, 1], no further factor (as nowcasting/hko_evaluation.py evaluates; the HKO-7
    *training loss* multiplies by NORMAL_LOSS_GLOBAL_SCALE = 5e-5, which is not applied here).
    ``update(pred, truth, mask=None)`` as :class:`SkillScores`; ``compute()``: ``b_mse``, ``b_mae`` (0-d) and
    ``b_mse_per_frame``, ``b_mae_per_frame`` (T,).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, thresholds=RAIN_THRESHOLDS, weights=BALANCING_WEIGHTS,
                 zr: tuple[float, float] | None = ZR_HKO7, **kwargs):
        super().__init__(**kwargs)
        weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
        levels = _event_thresholds(thresholds, zr)
        if weights.numel() != levels.numel() + 1:
            raise ValueError(f"weights needs one value per band: len(thresholds) + 1 = {levels.numel() + 1}, "
                             f"got {weights.numel()}")
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("weights", weights, persistent=False)
        for name in ("b_mse_sum", "b_mae_sum"):   # 0-d until the first update, then (T,)
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def pixel_weights(self, truth: Tensor) -> Tensor:
        """The weight of every pixel of ``truth`` (float64, same shape)."""
        w = torch.full(truth.shape, float(self.weights[0]), dtype=torch.float64, device=truth.device)
        steps = self.weights.diff().tolist()
        for level, step in zip(self.levels.tolist(), steps):
            w += step * (truth >= level)
        return w

    def update(self, pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> None:
        mask = _check_pair(pred, truth, mask)
        t = pred.shape[1]
        if self.count > 0 and self.b_mse_sum.shape != (t,):
            raise ValueError(f"every batch must have the same number of frames: got T={t} after "
                             f"T={self.b_mse_sum.numel()}")
        w = self.pixel_weights(truth.detach())
        if mask is not None:
            w = w * mask
        err = pred.detach().double() - truth.detach().double()
        self.b_mse_sum = self.b_mse_sum + (w * err.square()).flatten(2).sum(2).sum(0)
        self.b_mae_sum = self.b_mae_sum + (w * err.abs()).flatten(2).sum(2).sum(0)
        self.count += pred.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if self.count == 0:
            raise RuntimeError("BalancedErrors.compute() called before any update(pred, truth)")
        mse, mae = self.b_mse_sum / self.count, self.b_mae_sum / self.count
        return {"b_mse": mse.mean(), "b_mae": mae.mean(), "b_mse_per_frame": mse, "b_mae_per_frame": mae}


class NowcastScores(Metric):
    """:class:`SkillScores` and :class:`BalancedErrors` together, for a radar test set: one
    ``update(pred, truth, mask=None)``, one ``compute()`` holding ``pod``, ``far``, ``csi``, ``hss`` (one
    value per threshold), their ``*_per_frame``, the contingency counts, ``b_mse``, ``b_mae`` and their
    ``*_per_frame``.  ``thresholds`` in mm/h with the Z-R relation ``zr`` (the dataset's ``zr``)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, zr: tuple[float, float] = ZR_HKO7, thresholds=RAIN_THRESHOLDS, weights=BALANCING_WEIGHTS,
                 **kwargs):
        super().__init__(**kwargs)
        self.skill = SkillScores(thresholds, zr)
        self.balanced = BalancedErrors(thresholds, weights, zr)

    def update(self, pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> None:
        self.skill.update(pred, truth, mask)
        self.balanced.update(pred, truth, mask)

    def compute(self) -> dict[str, Tensor]:
        return {**self.skill.compute(), **self.balanced.compute()}

    def reset(self) -> None:
        super().reset()
        self.skill.reset()
        self.balanced.reset()


__all__ = ["BALANCING_WEIGHTS", "RAIN_THRESHOLDS", "SSIM_CONVENTIONS", "ZR_DWD", "ZR_HKO7", "BalancedErrors",
           "NowcastScores", "PredictionMetrics", "SkillScores", "copy_last_baseline", "pixel_to_rain", "psnr",
           "rain_to_pixel", "skill_scores", "ssim"]
