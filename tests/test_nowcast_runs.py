"""Radar configs end to end: ``convrnn fit`` on small HKO-7 and RADOLAN data writes metrics.json with the
nowcasting scores (POD, FAR, CSI, HSS per threshold, B-MSE, B-MAE) of the model, the copy-last and the
blank forecasts over the masked-in pixels, the data protocol, and the per-lead plot; the copy-last scores
agree with SkillScores / BalancedErrors computed here on the same test batch."""
from pathlib import Path

import numpy as np
import pytest

from convrnn.data import RadolanDataModule
from convrnn.metrics import ZR_DWD, BalancedErrors, SkillScores

from helpers import fit_small, load_config
from helpers import one_thread  # noqa: F401  (autouse fixture)


@pytest.mark.parametrize("dataset", ["hko7", "radolan"])
def test_radar_run_reports_nowcasting_scores(tmp_path, dataset):
    record = fit_small(tmp_path, dataset, "ms_convlstm")
    net = load_config(dataset, "ms_convlstm")["model"]["net"]
    for prefix in ("", "baseline_", "blank_"):   # the model and both baselines
        assert len(record[prefix + "csi"]) == len(record["skill_thresholds_mmh"]) == 5
        assert np.array(record[prefix + "csi_per_frame"]).shape == (net["out_len"], 5)
        assert len(record[prefix + "b_mse_per_frame"]) == net["out_len"]
    assert record["zr"] == ([58.53, 1.56] if dataset == "hko7" else [256.0, 1.42])
    assert next((tmp_path / "runs").rglob("*-fit/metrics_per_frame.png")).stat().st_size > 0
    if dataset == "radolan":
        check_radolan_baseline(tmp_path / "data", record, net)


def check_radolan_baseline(root: Path, record: dict, net: dict) -> None:
    """The copy-last scores in metrics.json equal SkillScores / BalancedErrors computed here, by hand, on
    the first test batch (the run tested one batch of one window) with its mask."""
    dm = RadolanDataModule(str(root), crop=[0, 0, 16, 16], batch_size=1)
    batch = next(iter(dm.test_dataloader()))
    frames, mask = batch["frames"], batch["mask"]
    n = net["in_len"]
    truth, past = frames[:, n:n + net["out_len"]], frames[:, n - 1:n]
    skill, balanced = SkillScores(zr=ZR_DWD), BalancedErrors(zr=ZR_DWD)
    skill.update(past.expand_as(truth), truth, mask[:, n:])
    balanced.update(past.expand_as(truth), truth, mask[:, n:])
    expected = {**skill.compute(), **balanced.compute()}
    for key in ("csi", "pod", "far", "hss"):
        got = [np.nan if v is None else v for v in record[f"baseline_{key}"]]     # JSON writes NaN as null
        np.testing.assert_allclose(got, expected[key].numpy(), atol=1e-6)
    assert record["baseline_b_mse"] == pytest.approx(float(expected["b_mse"]), rel=1e-6)
    assert record["baseline_hits"] == expected["hits"].tolist()
    assert record["baseline_correct_negatives"] == expected["correct_negatives"].tolist()
    assert int(mask.logical_not().sum()) > 0 and record["baseline_csi"][:4] == [1.0] * 4   # 24 mm/h copied
    assert sum(record["blank_hits"][0]) == 0 and record["blank_far"] == [None] * 5   # no event forecast: FAR NaN
