"""Nowcasting scores: SkillScores (POD, FAR, CSI, HSS from contingency counts over the whole test set, per
lead time), BalancedErrors (B-MSE / B-MAE with the HKO-7 weights), the Z-R conversion of thresholds; against
hand computations and, where installed, pysteps."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrnn.metrics import (
    ZR_DWD,
    ZR_HKO7,
    BalancedErrors,
    SkillScores,
    pixel_to_rain,
    rain_to_pixel,
    skill_scores,
)


def grid(out: dict, key: str, t: int, k: int) -> list:
    """out[key] as a (T, K) list (torchmetrics returns one-element results as 0-d tensors)."""
    return out[key].reshape(t, k).tolist()


def frames(values) -> torch.Tensor:
    """(T, H, W) nested lists -> (1, T, 1, H, W) float32."""
    return torch.tensor(values, dtype=torch.float32)[None, :, None]


def test_threshold_conversion_by_hand():
    # HKO-7: 0.5 mm/h -> Z = 58.53 * 0.5^1.56 = 19.8505, dBZ = 12.9777, pixel = 22.9777 / 70 = 0.328253
    z = 58.53 * 0.5 ** 1.56
    assert z == pytest.approx(19.8505, rel=1e-5)
    assert float(rain_to_pixel(0.5, ZR_HKO7)) == pytest.approx((10 * math.log10(z) + 10) / 70, abs=1e-12)
    assert float(rain_to_pixel(0.5, ZR_HKO7)) == pytest.approx(0.328253, abs=1e-6)
    # DWD (MS-RNN): 12 mm/h -> Z = 256 * 12^1.42 = 8723.2, dBZ 39.4068, pixel 49.4068 / 70 = 0.705811
    assert float(rain_to_pixel(12.0, ZR_DWD)) == pytest.approx((10 * math.log10(256 * 12 ** 1.42) + 10) / 70, abs=1e-12)
    assert float(rain_to_pixel(12.0, ZR_DWD)) == pytest.approx(0.705811, abs=1e-6)
    rates = torch.tensor([0.5, 2.0, 5.0, 10.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(pixel_to_rain(rain_to_pixel(rates)), rates, rtol=1e-12, atol=0)


def test_counts_and_scores_by_hand():
    # threshold 0.5 in the data's units; 2 lead times of 2x3 pixels
    truth = frames([[[0.9, 0.1, 0.6], [0.2, 0.7, 0.0]],
                    [[0.5, 0.5, 0.1], [0.1, 0.1, 0.8]]])
    pred = frames([[[0.8, 0.6, 0.2], [0.1, 0.9, 0.3]],
                   [[0.4, 0.5, 0.0], [0.7, 0.2, 0.9]]])
    # t0: hits (0.9,0.8) (0.7,0.9) = 2; miss (0.6,0.2) = 1; false alarm (0.1,0.6) = 1; correct neg 2
    # t1: hit (0.5,0.5) [>= counts] and (0.8,0.9) = 2; miss (0.5,0.4) = 1; false alarm (0.1,0.7) = 1; cn 2
    m = SkillScores(thresholds=[0.5], zr=None)
    m.update(pred, truth)
    out = m.compute()
    assert grid(out, "hits", 2, 1) == [[2], [2]] and grid(out, "misses", 2, 1) == [[1], [1]]
    assert grid(out, "false_alarms", 2, 1) == [[1], [1]] and grid(out, "correct_negatives", 2, 1) == [[2], [2]]
    # overall a=4, c=2, b=2, d=4: POD 4/6, FAR 2/6, CSI 4/8, HSS 2(16-4)/((6)(6)+(6)(6)) = 24/72
    assert float(out["pod"]) == pytest.approx(4 / 6, abs=1e-12)
    assert float(out["far"]) == pytest.approx(2 / 6, abs=1e-12)
    assert float(out["csi"]) == pytest.approx(4 / 8, abs=1e-12)
    assert float(out["hss"]) == pytest.approx(24 / 72, abs=1e-12)
    assert out["csi_per_frame"].reshape(2).tolist() == pytest.approx([2 / 4, 2 / 4], abs=1e-12)


def test_hss_of_a_known_table():
    # a = 10 hits, b = 5 false alarms, c = 3 misses, d = 82 correct negatives
    s = skill_scores(*(torch.tensor([v], dtype=torch.float64) for v in (10, 3, 5, 82)))
    assert float(s["hss"]) == pytest.approx(2 * (10 * 82 - 3 * 5) / (13 * 85 + 15 * 87), abs=1e-12)   # 0.66805
    assert float(s["hss"]) == pytest.approx(0.668050, abs=1e-6)
    assert float(s["pod"]) == pytest.approx(10 / 13) and float(s["far"]) == pytest.approx(5 / 15)
    assert float(s["csi"]) == pytest.approx(10 / 18)


def test_undefined_scores_are_nan():
    # no event observed or predicted: POD, FAR, CSI undefined
    m = SkillScores(thresholds=[0.5], zr=None)
    m.update(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2))
    out = m.compute()
    assert torch.isnan(out["pod"]).all() and torch.isnan(out["far"]).all() and torch.isnan(out["csi"]).all()
    assert grid(out, "correct_negatives", 1, 1) == [[4]]


def test_mask_removes_pixels_from_every_count():
    truth = frames([[[0.9, 0.9], [0.1, 0.1]]])
    pred = frames([[[0.9, 0.1], [0.9, 0.1]]])
    mask = torch.tensor([[True, False], [True, True]])[None, None, None]   # drops the miss at (0, 1)
    m = SkillScores(thresholds=[0.5], zr=None)
    m.update(pred, truth, mask)
    out = m.compute()
    assert [int(out[k].sum()) for k in SkillScores.COUNTS] == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="does not broadcast"):
        m.update(pred, truth, torch.ones(3, 3, dtype=torch.bool))


def test_rain_rate_thresholds_use_the_zr_relation():
    # a pixel exactly at the 2 mm/h level is an event for 2 mm/h but not for 5 mm/h
    p2 = float(rain_to_pixel(2.0, ZR_HKO7))
    truth = torch.full((1, 1, 1, 1, 1), p2)
    m = SkillScores(thresholds=[2.0, 5.0], zr=ZR_HKO7)
    m.update(truth.clone(), truth)
    out = m.compute()
    assert grid(out, "hits", 1, 2) == [[1, 0]] and grid(out, "correct_negatives", 1, 2) == [[0, 1]]
    assert out["csi"].shape == (2,)   # one value per threshold
    assert out["thresholds"].tolist() == pytest.approx([p2, float(rain_to_pixel(5.0, ZR_HKO7))])
    with pytest.raises(ValueError, match="> 0 mm/h"):
        SkillScores(thresholds=[0.0], zr=ZR_HKO7)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), split=st.integers(1, 3))
def test_counts_accumulate_over_batches(seed, split):
    g = torch.Generator().manual_seed(seed)
    pred, truth = torch.rand(4, 3, 1, 5, 5, generator=g), torch.rand(4, 3, 1, 5, 5, generator=g)
    mask = torch.rand(4, 3, 1, 5, 5, generator=g) > 0.3
    whole, parts = SkillScores([0.2, 0.5, 0.8], zr=None), SkillScores([0.2, 0.5, 0.8], zr=None)
    whole.update(pred, truth, mask)
    parts.update(pred[:split], truth[:split], mask[:split])
    parts.update(pred[split:], truth[split:], mask[split:])
    a, b = whole.compute(), parts.compute()
    for k in SkillScores.COUNTS:
        assert torch.equal(a[k], b[k])
    # every masked-in pixel falls in exactly one cell, per lead time and threshold
    total = sum(a[k] for k in SkillScores.COUNTS)
    assert (total == mask.transpose(0, 1).reshape(3, -1).sum(1, keepdim=True)).all()


def test_agrees_with_pysteps():
    detcat = pytest.importorskip("pysteps.verification.detcatscores")
    g = torch.Generator().manual_seed(3)
    pred, truth = torch.rand(3, 4, 1, 6, 6, generator=g), torch.rand(3, 4, 1, 6, 6, generator=g)
    mask = torch.rand(3, 4, 1, 6, 6, generator=g) > 0.25
    m = SkillScores([0.3, 0.6], zr=None)   # random floats never equal a threshold: > and >= agree
    m.update(pred, truth, mask)
    out = m.compute()
    for k, thr in enumerate((0.3, 0.6)):
        ref = detcat.det_cat_fct(pred[mask].numpy(), truth[mask].numpy(), thr, ["POD", "FAR", "CSI", "HSS"])
        for name in ("pod", "far", "csi", "hss"):
            assert float(out[name][k]) == pytest.approx(float(ref[name.upper()]), abs=1e-6)
        for t in range(4):   # per lead time
            sel = mask[:, t]
            ref_t = detcat.det_cat_fct(pred[:, t][sel].numpy(), truth[:, t][sel].numpy(), thr, ["CSI"])
            assert float(out["csi_per_frame"][t, k]) == pytest.approx(float(ref_t["CSI"]), abs=1e-6)


def test_balanced_errors_by_hand():
    # one lead time, 5 pixels at 1, 3, 7, 20, 50 mm/h: weights 1, 2, 5, 10, 30 (HKO-7 bands)
    truth = rain_to_pixel(torch.tensor([1.0, 3.0, 7.0, 20.0, 50.0])).float().view(1, 1, 1, 1, 5)
    delta = torch.tensor([0.1, -0.2, 0.05, 0.1, -0.01]).view(1, 1, 1, 1, 5)
    m = BalancedErrors()
    m.update(truth + delta, truth)
    out = m.compute()
    w = [1, 2, 5, 10, 30]
    d = [0.1, -0.2, 0.05, 0.1, -0.01]
    assert float(out["b_mse"]) == pytest.approx(sum(wi * di * di for wi, di in zip(w, d)), abs=1e-6)  # 0.3155
    assert float(out["b_mae"]) == pytest.approx(sum(wi * abs(di) for wi, di in zip(w, d)), abs=1e-6)  # 2.35
    # a masked pixel contributes nothing; B-MSE is averaged over sequences and frames
    mask = torch.tensor([True, True, True, True, False]).view(1, 1, 1, 1, 5)
    m2 = BalancedErrors()
    m2.update((truth + delta).repeat(2, 2, 1, 1, 1), truth.repeat(2, 2, 1, 1, 1), mask)
    out2 = m2.compute()
    assert float(out2["b_mse"]) == pytest.approx(0.01 + 2 * 0.04 + 5 * 0.0025 + 10 * 0.01, abs=1e-6)
    assert out2["b_mse_per_frame"].shape == (2,)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        SkillScores(zr=None).update(torch.zeros(1, 2, 1, 3, 3), torch.zeros(1, 3, 1, 3, 3))
    with pytest.raises(ValueError, match="one value per band"):
        BalancedErrors(weights=(1, 2))
    with pytest.raises(RuntimeError, match="before any update"):
        SkillScores().compute()
    with pytest.raises(RuntimeError, match="before any update"):
        BalancedErrors().compute()
    m = SkillScores([0.5], zr=None)
    m.update(torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 2))
    with pytest.raises(ValueError, match="same number of frames"):
        m.update(torch.zeros(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2))
