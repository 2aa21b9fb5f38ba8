"""The dataset configs (configs/kth, taxibj, hko7, radolan, folder): each agrees with its DataModule's protocol
(lengths, frame size, channels), has the parameter count of its Moving MNIST twin, and trains a few steps
with ``convrnn fit --config ... --data.root DIR`` on small files in the real format (narrowed to 4 channels
and 16x16 frames so it runs in seconds)."""
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from convrnn.data import FolderDataModule, HKO7DataModule, KTHDataModule, RadolanDataModule, TaxiBJDataModule
from convrnn.data.taxibj import CHANNELS, FILES
from convrnn.lightning_cli import cli_main
from convrnn.losses import frames_of, mask_of
from convrnn.metrics import ZR_DWD, BalancedErrors, SkillScores
from convrnn.registry import model_from_config

from formats import NODATA, radolan_name, write_avi, write_hko_days, write_hko_frame, write_radolan, write_taxibj
from helpers import CONFIGS, load_config
from helpers import one_thread  # noqa: F401  (autouse fixture)

MODULES = {"kth": KTHDataModule, "taxibj": TaxiBJDataModule, "hko7": HKO7DataModule, "radolan": RadolanDataModule,
           "folder": FolderDataModule}
ALL = sorted((p.parent.name, p.stem) for name in MODULES for p in CONFIGS.joinpath(name).glob("*.yaml"))


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dataset,stem", ALL)
def test_config_matches_its_protocol(dataset, stem):
    cfg = load_config(dataset, stem)
    net, data = cfg["model"]["net"], cfg["data"]
    module = MODULES[dataset]
    assert data["class_path"] == f"convrnn.data.{module.__name__}"
    args = data["init_args"]
    settings = {**module.PROTOCOLS[args.get("protocol", "default")].settings,
                **{k: v for k, v in args.items() if k in module.PROTOCOLS[args.get("protocol", "default")].settings}}
    assert (net["in_len"], net["out_len"]) == (settings["in_len"], settings["out_len"])
    size = settings.get("size") or (settings["crop"][2:] if settings.get("crop") else (32, 32))
    size = [size, size] if isinstance(size, int) else list(size)
    assert net["frame_size"] == size
    channels = len(CHANNELS[settings["channels"]]) if dataset == "taxibj" else settings.get("channels", 1)
    assert net["frame_channels"] == channels
    model = model_from_config(net)
    if not stem.startswith("openstl") and dataset != "folder":
        assert params(model) == params(model_from_config(load_config("msrnn", stem)["model"]["net"]))
        assert cfg["model"]["loss"] == "l1+l2" and cfg["model"]["lr"] == 3.0e-4 and args["batch_size"] == 4


def kth_root(root: Path) -> list[str]:
    for person in (1, 15, 17):
        write_avi(root / f"person{person:02d}_running_d1_uncomp.avi", range(1, 25))
    return ["--data.size", "16", "--data.cache_dir", str(root / "cache")]


def taxibj_root(root: Path) -> list[str]:
    for name, day in zip(FILES, (dt.date(2013, 7, 1), dt.date(2014, 3, 1), dt.date(2015, 3, 1), dt.date(2016, 4, 9))):
        write_taxibj(root / name, [day])
    return ["--data.test_windows", "4"]


def hko7_root(root: Path) -> list[str]:
    for k, split in enumerate(("train", "valid", "test")):
        day = dt.date(2009, 6, 1 + k)
        for step in range(22):
            write_hko_frame(root, dt.datetime(day.year, day.month, day.day) + dt.timedelta(minutes=6 * step))
        write_hko_days(root, f"hko7_rainy_{split}_days.txt", [day])
    return ["--data.size", "16", "--data.frame_step", "1"]


def radolan_root(root: Path) -> list[str]:
    for year in (2014, 2015, 2016):
        for k in range(10):
            t = dt.datetime(year, 5, 1) + dt.timedelta(minutes=5 * k)
            raw = np.full((20, 20), 50 * k, np.uint16)     # 0.5 k mm per 5 min = 6 k mm/h
            raw[19, :4] = NODATA                           # masked cells (row 0 north up, in the crop)
            write_radolan(root / radolan_name(t), t, raw)
    return ["--data.crop", "[0, 0, 16, 16]"]


def folder_root(root: Path) -> list[str]:
    for split in ("train", "val", "test"):
        write_avi(root / split / "a.avi", range(1, 21), size=(16, 16))
    return ["--data.size", "16", "--data.cache_dir", str(root / "cache")]


ROOTS = {"kth": kth_root, "taxibj": taxibj_root, "hko7": hko7_root, "radolan": radolan_root, "folder": folder_root}


@pytest.mark.parametrize("dataset,stem", [("kth", "ms_convlstm"), ("taxibj", "ms_predrnn"), ("hko7", "ms_convlstm"),
                                          ("radolan", "ms_convlstm"), ("folder", "convlstm")])
def test_config_trains_a_few_steps(tmp_path, dataset, stem):
    root = tmp_path / "data"
    root.mkdir()
    extra = ROOTS[dataset](root)
    net = load_config(dataset, stem)["model"]["net"]
    narrow = tmp_path / "narrow.yaml"    # a second config replaces the net: 4 channels, 16x16 frames
    small = {**net, "channels": 4, "frame_size": [32, 32] if dataset == "taxibj" else [16, 16]}
    narrow.write_text(yaml.safe_dump({"model": {"net": small}}))
    args = ["fit", "--config", str(CONFIGS / dataset / f"{stem}.yaml"), "--config", str(narrow),
            "--data.root", str(root), "--run_dir", str(tmp_path / "runs"),
            "--data.batch_size", "1", "--data.num_workers", "0", "--trainer.max_steps", "2",
            "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]
    assert cli_main(args) == 0
    (metrics,) = (tmp_path / "runs").glob("*/*-fit/metrics.json")
    record = json.loads(metrics.read_text())
    assert np.isfinite(record["mse"]) and len(record["mse_per_frame"]) == net["out_len"]
    assert record["config"]["data"]["init_args"]["root"] == str(root)
    protocol = record["data_protocol"]       # the DataModule's protocol, with the test's overrides
    assert protocol["name"] == load_config(dataset, stem)["data"]["init_args"].get("protocol", "default")
    assert set(protocol) == {"name", "source", "settings", "overrides", "unverified"}
    radar = dataset in ("hko7", "radolan")
    for prefix in ("", "baseline_", "blank_"):   # nowcasting scores for the model and both baselines
        assert (prefix + "csi" in record) == radar and (prefix + "b_mse" in record) == radar
    if radar:
        assert len(record["csi"]) == len(record["skill_thresholds_mmh"]) == 5
        assert np.array(record["csi_per_frame"]).shape == (net["out_len"], 5)
    if dataset == "radolan":
        check_radolan_baseline(root, record, net)


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


def test_mask_of_batches():
    frames = torch.zeros(2, 3, 1, 4, 4, dtype=torch.uint8)
    mask = torch.ones(2, 3, 1, 4, 4, dtype=torch.bool)
    assert mask_of(frames) is None and mask_of({"frames": frames}) is None
    assert torch.equal(mask_of({"frames": frames, "mask": mask}), mask)
    assert frames_of({"frames": frames, "mask": mask}).dtype == torch.float32
    with pytest.raises(ValueError, match="'mask' must be a \\(B, T, C, H, W\\) tensor"):
        mask_of({"frames": frames, "mask": mask[0]})
