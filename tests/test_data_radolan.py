"""RadolanDataModule on small RADOLAN RY binary files (ASCII header, little-endian uint16 with flag bits) read
with wradlib: the mm/5 min -> mm/h -> dBZ -> pixel conversion, no-data and clutter as masked pixels, the
north-up orientation, year splits, window boundaries, crops, masks reaching the scores, clear errors."""
import datetime as dt
import math

import numpy as np
import pytest
import torch

from convrnn.data import DatasetFormatError, DatasetNotFoundError, RadolanDataModule
from convrnn.metrics import ZR_DWD, SkillScores

from formats import CLUTTER, NODATA, SECONDARY, radolan_name, write_radolan

T = dt.datetime
SMALL = {"in_len": 2, "out_len": 2, "crop": False}   # False: no crop (the grid is 20 x 24)


def minutes(start: dt.datetime, count: int, skip=()) -> list[dt.datetime]:
    return [start + dt.timedelta(minutes=5 * k) for k in range(count) if k not in skip]


def raw_frame(time: dt.datetime) -> np.ndarray:
    """uint16 20 x 24, row 0 = the southern edge: cell (0, 0) holds the minute of the day / 5 + 1 (0.01 mm),
    row 0 also 100 (1 mm per 5 min); one no-data, one clutter and one secondary-data cell."""
    raw = np.zeros((20, 24), dtype=np.uint16)
    raw[0, :] = 100
    raw[0, 0] = (time.hour * 60 + time.minute) // 5 + 1
    raw[5, 6] = NODATA
    raw[6, 7] = CLUTTER | 300
    raw[7, 8] = SECONDARY | 100
    return raw


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("radolan")
    times = (minutes(T(2014, 6, 1), 11, skip={5}) + minutes(T(2015, 6, 1), 5)
             + minutes(T(2016, 6, 1, 23, 40), 10))        # 2016 crosses midnight: one run
    for t in times:
        write_radolan(root / f"{t:%Y}" / radolan_name(t), t, raw_frame(t))
    return root


def pixel(mm_per_5min: float) -> float:
    """The MS-RNN conversion by hand."""
    if mm_per_5min == 0:
        return 0.0
    rate = 12 * mm_per_5min
    return min(max((10 * math.log10(256 * rate ** 1.42) + 10) / 70, 0.0), 1.0)


def test_year_splits_and_window_boundaries(root):
    dm = RadolanDataModule(str(root), **SMALL)
    info = dm.describe()
    # windows of 4 consecutive 5-minute frames, non-overlapping: 2014 runs of 5 and 5 (00:25 missing) -> 1 + 1;
    # 2015: 5 frames -> 1; 2016: 10 frames across midnight -> 2
    assert info["splits"] == {"train": 2, "val": 1, "test": 2}
    assert (info["in_len"], info["out_len"], info["channels"], info["height"], info["width"]) == (2, 2, 1, 20, 24)
    dense = RadolanDataModule(str(root), stride=1, **SMALL)
    dense.setup("fit")
    assert len(dense.datasets["train"]) == 2 + 2
    test = dm.datasets["test"]
    # the time code of each frame at the south-west cell (row 19 after the flip to north up): 23:40 .. 00:15
    start = T(2016, 6, 1, 23, 40)
    for w in range(2):
        times = minutes(start + dt.timedelta(minutes=20 * w), 4)
        expected = [pixel(((t.hour * 60 + t.minute) // 5 + 1) / 100) for t in times]
        assert test[w]["frames"][:, 0, 19, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_conversion_masks_and_orientation(root):
    dm = RadolanDataModule(str(root), **SMALL)
    dm.setup("test")
    item = dm.datasets["test"][0]
    frames, mask = item["frames"], item["mask"]
    assert frames.dtype == torch.float32 and mask.dtype == torch.bool and frames.shape == mask.shape == (4, 1, 20, 24)
    north_up = frames[0, 0]
    # the file's first (southern) row is the frame's last: 1 mm per 5 min = 12 mm/h
    assert north_up[19, 5].item() == pytest.approx(pixel(1.0), abs=1e-6)
    assert pixel(1.0) == pytest.approx(0.705811, abs=1e-6)      # 10 log10(256 * 12^1.42) = 39.41 dBZ
    assert north_up[0, 5].item() == 0.0 and bool(mask[0, 0, 0, 5])              # dry is valid data
    assert not mask[0, 0, 19 - 5, 6] and north_up[19 - 5, 6].item() == 0.0     # no data: masked
    assert not mask[0, 0, 19 - 6, 7]                                           # clutter: masked
    assert mask[0, 0, 19 - 7, 8] and north_up[19 - 7, 8].item() == pytest.approx(pixel(1.0), abs=1e-6)
    assert int((~mask[0, 0]).sum()) == 2
    cropped = RadolanDataModule(str(root), in_len=2, out_len=2, crop=[12, 5, 8, 10])
    cropped.setup("test")
    part = cropped.datasets["test"][0]
    assert torch.equal(part["frames"], frames[:, :, 12:20, 5:15]) and torch.equal(part["mask"], mask[:, :, 12:20, 5:15])


def test_masks_reach_the_scores(root):
    dm = RadolanDataModule(str(root), batch_size=2, **SMALL)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    scores = SkillScores(thresholds=[0.5, 5.0], zr=dm.zr)
    assert dm.zr == ZR_DWD
    scores.update(torch.zeros_like(batch["frames"]), batch["frames"], batch["mask"])
    out = scores.compute()
    # a blank forecast: every observed event is a miss.  Events >= 0.5 mm/h per lead time, over the two
    # windows: 23 cells of the southern row and the secondary-data cell (12 mm/h) in each, the time-code cell
    # in the first (23:40-23:55: >= 2.85 mm per 5 min) but not the second (00:00-00:15: <= 0.48 mm/h)
    assert out["misses"][:, 0].tolist() == [2 * (23 + 1) + 1] * 4 and int(out["hits"].sum()) == 0
    total = sum(out[k] for k in SkillScores.COUNTS)
    assert (total == 2 * (20 * 24 - 2)).all()


def test_bad_folders_give_clear_errors(root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"no RADOLAN files(.|\n)*opendata.dwd.de"):
        RadolanDataModule(str(tmp_path), **SMALL).setup()
    with pytest.warns(UserWarning, match="unverified"), pytest.raises(DatasetFormatError, match="does not fit"):
        RadolanDataModule(str(root)).setup("test")
    with pytest.raises(DatasetNotFoundError, match=r"years 2016-2017 \(test split\)"):
        write_radolan(tmp_path / "a" / radolan_name(T(2010, 1, 1)), T(2010, 1, 1), raw_frame(T(2010, 1, 1)))
        RadolanDataModule(str(tmp_path / "a"), **SMALL).setup("test")
    bad = tmp_path / "b"
    write_radolan(bad / radolan_name(T(2016, 1, 1)), T(2016, 1, 1), raw_frame(T(2016, 1, 1)), product="RW")
    with pytest.raises(DatasetFormatError, match="RW product, not RY"):
        RadolanDataModule(str(bad), **SMALL).setup("test")
    wrong = tmp_path / "c"
    write_radolan(wrong / radolan_name(T(2016, 1, 1)), T(2016, 1, 1, 0, 5), raw_frame(T(2016, 1, 1)))
    with pytest.raises(DatasetFormatError, match="but its header"):
        RadolanDataModule(str(wrong), **SMALL).setup("test")
    junk = tmp_path / "d"
    junk.mkdir()
    (junk / radolan_name(T(2016, 1, 1))).write_bytes(b"\x00" * 50)
    with pytest.raises(DatasetFormatError, match="cannot read"):
        RadolanDataModule(str(junk), **SMALL).setup("test")
    with pytest.raises(ValueError, match="overlap"):
        RadolanDataModule(str(root), val_years=[2014, 2015], **SMALL)


def test_without_wradlib_the_error_names_the_extra(root, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wradlib.io", None)     # as if wradlib were not installed
    with pytest.raises(ImportError, match=r"pip install 'convrnn\[radar\]'"):
        RadolanDataModule(str(root), **SMALL).setup("test")
