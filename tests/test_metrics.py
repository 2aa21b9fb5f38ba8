"""PredictionMetrics against scikit-image and hand computations."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from convrnn.metrics import PredictionMetrics, copy_last_baseline, ssim


def sk_standard(a, b):
    return structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1)


def sk_openstl(a, b):
    return structural_similarity(a, b, channel_axis=0, win_size=7, data_range=2)


def structured_pair(size=24):
    """A bright square on a gradient, and the same square shifted by one pixel and blurred."""
    yy, xx = np.mgrid[:size, :size] / size
    a = 0.3 * xx
    a[6:14, 8:18] = 0.9
    b = np.roll(a, 1, axis=1)
    b = (b + np.roll(b, 1, axis=0) + np.roll(b, -1, axis=0)) / 3
    return a[None], np.clip(b + 0.05 * yy, 0, 1)[None]


def random_pair(c=2, h=20, w=17, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((c, h, w))
    return a, np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)


@pytest.mark.parametrize("pair", [random_pair(), structured_pair(), random_pair(1, 11, 30, seed=1)])
@pytest.mark.parametrize("convention,reference", [("standard", sk_standard), ("openstl", sk_openstl)])
def test_ssim_matches_scikit_image(pair, convention, reference):
    a, b = pair
    got = ssim(torch.tensor(a)[None], torch.tensor(b)[None], convention)  # float64 in, float64 out
    assert got.shape == (1,)
    assert got.item() == pytest.approx(reference(a, b), abs=1e-10)
    got32 = ssim(torch.tensor(a, dtype=torch.float32)[None], torch.tensor(b, dtype=torch.float32)[None], convention)
    assert got32.item() == pytest.approx(reference(a, b), abs=2e-5)


def test_openstl_convention_reads_higher_on_blur():
    a, b = structured_pair(32)
    ta, tb = torch.tensor(a)[None], torch.tensor(b)[None]
    assert ssim(ta, tb, "openstl") > ssim(ta, tb, "standard")


def hand_metrics(pred, target):
    """Per-frame MSE/MAE (sums over C*H*W, unclipped) and PSNR (clipped), averaged over sequences: (T,) each."""
    b, t = pred.shape[:2]
    mse, mae, psnr = np.zeros(t), np.zeros(t), np.zeros(t)
    for i in range(b):
        for j in range(t):
            err = pred[i, j] - target[i, j]
            mse[j] += np.sum(err ** 2) / b
            mae[j] += np.sum(np.abs(err)) / b
            clipped = np.clip(pred[i, j], 0, 1)
            psnr[j] += 10 * math.log10(1 / np.mean((clipped - target[i, j]) ** 2)) / b
    return mse, mae, psnr


def test_metrics_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(5, 3, 1, 16, 16, generator=g)
    pred = target + 0.4 * torch.randn(5, 3, 1, 16, 16, generator=g)  # leaves [0, 1]: clipping matters
    metric = PredictionMetrics()
    metric.update(pred[:2], target[:2])
    metric.update(pred[2:], target[2:])
    out = metric.compute()
    mse, mae, psnr = hand_metrics(pred.double().numpy(), target.double().numpy())
    np.testing.assert_allclose(out["mse_per_frame"].numpy(), mse, rtol=1e-5)
    np.testing.assert_allclose(out["mae_per_frame"].numpy(), mae, rtol=1e-5)
    np.testing.assert_allclose(out["psnr_per_frame"].numpy(), psnr, rtol=1e-5)
    assert out["mse"].item() == pytest.approx(mse.mean(), rel=1e-5) and out["mse"].dim() == 0
    assert out["mae"].item() == pytest.approx(mae.mean(), rel=1e-5)
    assert out["psnr"].item() == pytest.approx(psnr.mean(), rel=1e-5)
    clipped = pred.clamp(0, 1).double().numpy()
    ssim_frames = [[sk_standard(clipped[i, j], target[i, j].double().numpy()) for j in range(3)] for i in range(5)]
    np.testing.assert_allclose(out["ssim_per_frame"].numpy(), np.mean(ssim_frames, axis=0), atol=2e-5)
    assert out["ssim"].item() == pytest.approx(np.mean(ssim_frames), abs=2e-5)


def test_openstl_metric_uses_its_convention():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 2, 1, 12, 12, generator=g)
    pred = target + 0.2 * torch.randn(2, 2, 1, 12, 12, generator=g)
    metric = PredictionMetrics(ssim="openstl")
    metric.update(pred, target)
    clipped = pred.clamp(0, 1).double().numpy()
    expected = np.mean([[sk_openstl(clipped[i, j], target[i, j].double().numpy()) for j in range(2)] for i in range(2)])
    assert metric.compute()["ssim"].item() == pytest.approx(expected, abs=2e-5)
    assert "openstl" in metric.convention and "data range 2" in metric.convention
    assert "standard" in PredictionMetrics().convention


def test_per_frame_curves_and_identity():
    frames = torch.rand(2, 7, 2, 16, 16)
    metric = PredictionMetrics()
    metric.update(frames, frames)
    out = metric.compute()
    assert set(out) == {f"{n}{s}" for n in ("mse", "mae", "ssim", "psnr") for s in ("", "_per_frame")}
    assert all(out[f"{n}_per_frame"].shape == (7,) for n in ("mse", "mae", "ssim", "psnr"))
    assert out["mse"] == 0 and out["mae"] == 0
    torch.testing.assert_close(out["ssim_per_frame"], torch.ones(7))
    assert out["psnr"].item() == pytest.approx(100.0)  # capped


def test_merged_states_equal_one_pass():
    """What DDP does (sum the states of each process) gives the single-process result."""
    pred, target = torch.rand(4, 3, 1, 16, 16), torch.rand(4, 3, 1, 16, 16)
    whole, part_a, part_b = PredictionMetrics(), PredictionMetrics(), PredictionMetrics()
    whole.update(pred, target)
    part_a.update(pred[:1], target[:1])
    part_b.update(pred[1:], target[1:])
    part_a.merge_state(part_b)
    for key, value in whole.compute().items():
        torch.testing.assert_close(part_a.compute()[key], value)


def test_reset_starts_over():
    metric = PredictionMetrics()
    metric.update(torch.zeros(1, 2, 1, 16, 16), torch.ones(1, 2, 1, 16, 16))
    metric.reset()
    frames = torch.rand(1, 4, 1, 16, 16)
    metric.update(frames, frames)
    assert metric.compute()["mse_per_frame"].shape == (4,) and metric.compute()["mse"] == 0


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_errors():
    metric = PredictionMetrics()
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        metric.update(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="of one shape"):
        metric.update(torch.rand(1, 2, 1, 16, 16), torch.rand(1, 3, 1, 16, 16))
    metric.update(torch.rand(1, 2, 1, 16, 16), torch.rand(1, 2, 1, 16, 16))
    with pytest.raises(ValueError, match="same number of frames"):
        metric.update(torch.rand(1, 3, 1, 16, 16), torch.rand(1, 3, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        PredictionMetrics().update(torch.rand(1, 2, 1, 8, 8), torch.rand(1, 2, 1, 8, 8))
    with pytest.raises(ValueError, match="ssim must be one of"):
        PredictionMetrics(ssim="skimage")
    with pytest.raises(RuntimeError, match="before any update"):
        PredictionMetrics().compute()


def test_lpips_unavailable_gives_clear_message():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="LPIPS is unavailable.*torchvision"):
            PredictionMetrics(lpips=True)
    else:
        pytest.skip("torchvision is installed: LPIPS may work here")


def test_copy_last_baseline():
    inputs, targets = torch.rand(2, 4, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    pred = copy_last_baseline(inputs, targets)
    assert pred.shape == targets.shape
    for t in range(3):
        torch.testing.assert_close(pred[:, t], inputs[:, -1], rtol=0, atol=0)
    pred[0, 0] = -1  # a real tensor, not a view of the inputs
    assert inputs.min() >= 0
    with pytest.raises(ValueError, match="same B, C, H, W"):
        copy_last_baseline(inputs, torch.rand(2, 3, 1, 8, 9))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(11, 20), w=st.integers(11, 20),
       seed=st.integers(0, 2**31 - 1), convention=st.sampled_from(["standard", "openstl"]))
def test_ssim_properties(n, c, h, w, seed, convention):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    b = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * torch.rand((), generator=g, dtype=torch.float64)
    ab, ba = ssim(a, b, convention), ssim(b, a, convention)
    assert ab.shape == (n,)
    assert ((ab >= -1) & (ab <= 1)).all()
    torch.testing.assert_close(ab, ba, rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(a, a, convention), torch.ones(n, dtype=torch.float64))
