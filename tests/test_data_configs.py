"""The dataset configs (configs/kth, taxibj, hko7, radolan, folder): each agrees with its DataModule's protocol
(lengths, frame size, channels), has the parameter count of its Moving MNIST twin, and trains a few steps
with ``convrnn fit --config ... --data.root DIR`` on small files in the real format (narrowed to 4 channels
and 16x16 frames so it runs in seconds)."""
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from convrnn.data import FolderDataModule, HKO7DataModule, KTHDataModule, RadolanDataModule, TaxiBJDataModule
from convrnn.data.taxibj import CHANNELS, FILES
from convrnn.registry import model_from_config
from convrnn.train import cli_main

from formats import radolan_name, write_avi, write_hko_days, write_hko_frame, write_radolan, write_taxibj
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
            write_radolan(root / radolan_name(t), t, np.full((20, 20), 50 * k, np.uint16))
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
