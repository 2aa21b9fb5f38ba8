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


__all__ = ["SSIM_CONVENTIONS", "PredictionMetrics", "copy_last_baseline", "psnr", "ssim"]
