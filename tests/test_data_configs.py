"""The dataset configs (configs/kth, taxibj, hko7, radolan, folder): each agrees with its DataModule's protocol
(lengths, frame size, channels), has the parameter count of its Moving MNIST twin, and trains a few steps
with ``convrnn fit --config ... --data.root DIR`` on small files in the real format (narrowed to 4 channels
and 16x16 frames so it runs in seconds; the radar configs run in tests/test_nowcast_runs.py).  The batch
format: dicts with a validity mask."""
import pytest
import torch

from convrnn.data import FolderDataModule, HKO7DataModule, KTHDataModule, RadolanDataModule, TaxiBJDataModule
from convrnn.data.taxibj import CHANNELS
from convrnn.losses import frames_of, mask_of
from convrnn.registry import model_from_config

from helpers import CONFIGS, fit_small, load_config
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


@pytest.mark.parametrize("dataset,stem", [("kth", "ms_convlstm"), ("taxibj", "ms_predrnn"), ("folder", "convlstm")])
def test_config_trains_a_few_steps(tmp_path, dataset, stem):
    record = fit_small(tmp_path, dataset, stem)
    assert "csi" not in record and "b_mse" not in record      # nowcasting scores are for radar data only


def test_mask_of_batches():
    frames = torch.zeros(2, 3, 1, 4, 4, dtype=torch.uint8)
    mask = torch.ones(2, 3, 1, 4, 4, dtype=torch.bool)
    assert mask_of(frames) is None and mask_of({"frames": frames}) is None
    assert torch.equal(mask_of({"frames": frames, "mask": mask}), mask)
    assert frames_of({"frames": frames, "mask": mask}).dtype == torch.float32
    with pytest.raises(ValueError, match="'mask' must be a \\(B, T, C, H, W\\) tensor"):
        mask_of({"frames": frames, "mask": mask[0]})
