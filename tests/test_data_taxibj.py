"""TaxiBJDataModule on small .h5 files in the ST-ResNet format (byte-string dates): incomplete days dropped,
windows never across a gap or a split, time order, min-max from the training slots, denormalize, inflow."""
import datetime as dt

import h5py
import numpy as np
import pytest
import torch

from convrnn.data import DatasetFormatError, DatasetNotFoundError, TaxiBJDataModule
from convrnn.data.taxibj import FILES

from formats import taxibj_value, write_taxibj

D = dt.date
DAYS = {FILES[0]: [D(2013, 7, 1), D(2013, 7, 2), D(2013, 7, 3), D(2013, 7, 4)],
        FILES[1]: [D(2014, 3, 1)], FILES[2]: [D(2015, 3, 1)],
        FILES[3]: [D(2016, 4, 8), D(2016, 4, 9), D(2016, 4, 10)]}
SMALL = {"test_windows": 48}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("taxibj")
    for name, days in DAYS.items():
        drop = {D(2013, 7, 3): [17]} if name == FILES[0] else None     # 2013-07-03 is incomplete
        negative = (10, -5.0) if name == FILES[1] else None             # a negative flow to clip
        spike = (-1, 1e6) if name == FILES[3] else None                  # a huge flow in the test period
        write_taxibj(root / name, days, drop, negative, spike)
    return root


def decode(dm, frames: torch.Tensor) -> list[tuple[dt.date, int]]:
    """(day, slot) of every frame of a window, from the inflow value at pixel (0, 0) in flow units."""
    out = []
    for value in dm.denormalize(frames[:, 0, 0, 0].double()).tolist():
        code, slot = divmod(round(value), 100)
        day = next(d for days in DAYS.values() for d in days if d.toordinal() % 1000 == code)
        out.append((day, slot))
    return out


def half_hours(day_slot) -> float:
    day, slot = day_slot
    return day.toordinal() * 48 + slot


def test_split_counts_and_boundaries(root):
    dm = TaxiBJDataModule(str(root), **SMALL)
    info = dm.describe()
    # runs of complete days: 07-01..02 (96 slots), 07-04, 2014-03-01, 2015-03-01 (48 each), 2016-04-08..10 (144);
    # windows of 8, stride 1: 89 + 41 + 41 + 41 + 137 = 349.  test = the last 48 (starts 89..136 of the last
    # run); before them: starts 0..81 there (ending before slot 89) + 212 = 294; val = ceil(29.4) = 30 latest
    # (starts 52..81); train: those ending before start 52 -> starts 0..44 = 45, + 212 = 257
    assert info["splits"] == {"train": 257, "val": 30, "test": 48}
    assert (info["in_len"], info["out_len"], info["channels"], info["height"], info["width"]) == (4, 4, 2, 32, 32)
    spans = {}
    for split, data in dm.datasets.items():
        times = [decode(dm, data[i]) for i in range(len(data))]
        for window in times:   # consecutive half hours, in time order, never the incomplete day
            steps = np.diff([half_hours(t) for t in window])
            assert (steps == 1).all(), window
            assert all(day != D(2013, 7, 3) for day, _ in window)
        flat = [half_hours(t) for w in times for t in w]
        spans[split] = (min(flat), max(flat))
    assert spans["train"][1] < spans["val"][0] and spans["val"][1] < spans["test"][0]   # no shared slot


def test_minmax_from_training_slots_and_denormalize(root):
    dm = TaxiBJDataModule(str(root), **SMALL)
    dm.setup("test")
    # slots before the first test frame (2016-04-09 slot 42): all kept slots of the first four runs and of
    # 2016-04-08 .. 2016-04-09 slot 41; every pixel is 1.0 except (0, 0) and one negative flow, clipped to 0
    kept = [(d, s) for days in DAYS.values() for d in days if d != D(2013, 7, 3) for s in range(1, 49)]
    before = [(d, s) for d, s in kept if (d, s) < (D(2016, 4, 9), 42)]
    assert dm.flow_min == 0.0
    assert dm.flow_max == max(taxibj_value(d, s, c) for d, s in before for c in (0, 1))   # not the test spike
    first = dm.datasets["test"][0]
    assert first.dtype == torch.float32 and decode(dm, first)[0] == (D(2016, 4, 9), 42)
    flows = dm.denormalize(first.double())
    assert float(flows[0, 1, 0, 0]) == pytest.approx(taxibj_value(D(2016, 4, 9), 42, 1), rel=1e-6)  # float32
    assert float(flows[0, 0, 3, 3]) == pytest.approx(1.0, abs=1e-6)
    assert float(first[0, 0, 3, 3]) == pytest.approx(1.0 / dm.flow_max, abs=1e-7)


def test_inflow_only_and_msrnn_protocol(root):
    both = TaxiBJDataModule(str(root), **SMALL)
    inflow = TaxiBJDataModule(str(root), "msrnn", **SMALL)
    both.setup("test")
    inflow.setup("test")
    assert inflow.datasets["test"][5].shape == (8, 1, 32, 32)
    assert torch.equal(inflow.datasets["test"][5][:, 0], both.datasets["test"][5][:, 0])
    assert inflow.protocol["settings"]["channels"] == "inflow"
    outflow = TaxiBJDataModule(str(root), channels="outflow", **SMALL)
    outflow.setup("test")
    assert torch.equal(outflow.datasets["test"][5][:, 0], both.datasets["test"][5][:, 1])
    batch = next(iter(inflow.test_dataloader()))
    assert batch.shape == (16, 8, 1, 32, 32)


def test_bad_files_give_clear_errors(tmp_path, root):
    with pytest.raises(DatasetNotFoundError, match=r"missing BJ13_M32x32_T30_InOut.h5(.|\n)*DeepST"):
        TaxiBJDataModule(str(tmp_path)).setup()
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in FILES:
        (bad / name).symlink_to(root / name)
    (bad / FILES[2]).unlink()
    with h5py.File(bad / FILES[2], "w") as h5:
        h5["data"] = np.zeros((2, 2, 32, 32))
        h5["date"] = np.array([b"2015030101", b"2015030199"])
    with pytest.raises(DatasetFormatError, match=r"date\[1\] = '2015030199' is not YYYYMMDDSS"):
        TaxiBJDataModule(str(bad), **SMALL).setup()
    with h5py.File(bad / FILES[2], "w") as h5:
        h5["data"] = np.zeros((2, 2, 32, 32))
    with pytest.raises(DatasetFormatError, match="no 'data' and 'date' datasets"):
        TaxiBJDataModule(str(bad), **SMALL).setup()
    (bad / FILES[2]).unlink()
    write_taxibj(bad / FILES[2], [D(2014, 3, 1)])      # the same day as BJ14
    with pytest.raises(DatasetFormatError, match="2014030101 appears twice"):
        TaxiBJDataModule(str(bad), **SMALL).setup()
    with pytest.raises(DatasetFormatError, match="test set alone takes the last 5000"):
        TaxiBJDataModule(str(root), test_windows=5000).setup()
    with pytest.raises(ValueError, match="channels='red'"):
        TaxiBJDataModule(str(root), channels="red")
