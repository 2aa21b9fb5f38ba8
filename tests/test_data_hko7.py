"""HKO7DataModule on a small PNG tree in the HKO-7 format (8-bit PNGs, zlib .mask files, mask_dat.npz, day
lists): the iterator's window rules, day splits, masks (per frame, global, noise) reaching the scores."""
import datetime as dt

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrnn.data import DatasetFormatError, DatasetNotFoundError, HKO7DataModule
from convrnn.data.hko7 import existing_starts, sequent_starts
from convrnn.metrics import SkillScores

from formats import hko_value, write_hko_days, write_hko_frame, write_hko_global_mask

T = dt.datetime
TRAIN, VAL, TEST = dt.date(2009, 6, 1), dt.date(2009, 6, 2), dt.date(2015, 6, 1)
SIZE = 8
SMALL = {"in_len": 2, "out_len": 3, "eval_stride": 2}


def times(day: dt.date, slots) -> list[dt.datetime]:
    return [T(day.year, day.month, day.day) + dt.timedelta(minutes=6 * k) for k in slots]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hko7")
    mask = np.ones((SIZE, SIZE), dtype=bool)
    mask[7, 7] = False                                   # a per-frame invalid pixel
    image = np.full((SIZE, SIZE), 200, dtype=np.uint8)
    image[1, 1], image[2, 2] = 50, 0                     # noise (0 < 50 < 71) and a clear-sky 0
    layout = {TRAIN: [k for k in range(12) if k not in (3, 6, 7, 8)],   # gaps: 3 (one), 6-8 (three)
              VAL: range(8), TEST: [k for k in range(10) if k != 4]}
    for day, slots in layout.items():
        for t in times(day, slots):
            img = image.copy()
            img[0, 0] = hko_value(t)
            write_hko_frame(root, t, mask=mask, image=img)
    write_hko_frame(root, times(dt.date(2012, 1, 1), [0])[0], mask=mask)    # a day in no split
    exclude = np.zeros((SIZE, SIZE), dtype=bool)
    exclude[0, 7] = True
    write_hko_global_mask(root, exclude)
    for split, day in (("train", TRAIN), ("valid", VAL), ("test", TEST)):
        write_hko_days(root, f"hko7_rainy_{split}_days.txt", [day])
    return root


def slots_of(frames: torch.Tensor) -> list[int]:
    """Slot of the day (6-minute steps) of each frame; -1 for a missing (zero) frame."""
    return [int(v) - 10 if v else -1 for v in frames[:, 0, 0, 0].tolist()]


def test_hand_counted_windows(root):
    dm = HKO7DataModule(str(root), **SMALL)
    info = dm.describe()
    # test day: slots 0..9 without 4; windows of 5, stride 2, up to 2 consecutive missing frames:
    # 0..4 (4 missing) ok, 2..6 ok, 4..8 (starts on a missing frame) ok, 6..10 (10 missing) ok, 8..12 has 3
    # missing -> jump to 9: 9..13 has 4 -> no frame after 9: stop.  4 windows
    assert [slots_of(dm.datasets["test"][i]["frames"]) for i in range(4)] == [
        [0, 1, 2, 3, -1], [2, 3, -1, 5, 6], [-1, 5, 6, 7, 8], [6, 7, 8, 9, -1]]
    # train day: frames 0 1 2 4 5 9 10 11; every existing frame whose window of 5 has <= 2 consecutive
    # missing: 0 (0..4: 3 missing once) ok, 1 (1..5) ok, 2 (2..6) ok, 4 (4..8: 6 7 8 missing) no,
    # 5 (5..9) no, 9 (9..13: 12 13 missing) ok, 10 (10..14: 12 13 14) no, 11 no.  3 + 1 = 4
    # val day: frames 0..7: sequent from 0 with stride 2: 0, 2, 4 (4..8: 8 missing) ok, 6..10 (8 9 10) no
    # -> 7..11 no -> stop.  3
    assert info["splits"] == {"train": 4, "val": 3, "test": 4}
    assert (info["in_len"], info["out_len"], info["channels"], info["height"], info["width"]) == (2, 3, 1, 8, 8)
    assert [slots_of(dm.datasets["train"][i]["frames"])[0] for i in range(4)] == [0, 1, 2, 9]


def test_masks_per_frame_global_noise_and_missing(root):
    dm = HKO7DataModule(str(root), **SMALL)
    dm.setup("test")
    item = dm.datasets["test"][0]
    frames, mask = item["frames"], item["mask"]
    assert frames.dtype == torch.uint8 and mask.dtype == torch.bool and mask.shape == frames.shape == (5, 1, 8, 8)
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[7, 7] = False     # the frame's .mask
    expected[0, 7] = False     # mask_dat.npz exclude_mask
    expected[1, 1] = False     # 0 < 50 < round(0.28 * 255) = 71: noise
    expected[0, 0] = False     # the time code 10..21 is noise as well
    for t in range(4):
        assert torch.equal(mask[t, 0], expected)
    assert not mask[4].any() and not frames[4].any()     # the missing frame: zeros, masked out
    assert int(frames[0, 0, 2, 2]) == 0 and bool(mask[0, 0, 2, 2])   # clear sky is valid data
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"frames", "mask"} and batch["mask"].shape == (4, 5, 1, 8, 8)


def test_masks_reach_the_scores(root):
    dm = HKO7DataModule(str(root), batch_size=4, **SMALL)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    truth, mask = batch["frames"].float() / 255, batch["mask"]
    pred = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    scores = SkillScores(thresholds=[0.5, 2.0])
    scores.update(pred, truth, mask)
    counts = scores.compute()
    total = sum(counts[k] for k in SkillScores.COUNTS)
    assert torch.equal(total, mask.transpose(0, 1).reshape(5, -1).sum(1, keepdim=True).expand(5, 2))
    changed = pred.clone()
    changed[~mask] = 1.0 - changed[~mask]      # what the model says at masked pixels must not matter
    again = SkillScores(thresholds=[0.5, 2.0])
    again.update(changed, truth, mask)
    assert all(torch.equal(again.compute()[k], counts[k]) for k in SkillScores.COUNTS)


def reference_sequent(existing: set[int], length: int, stride: int, max_missing: int) -> list[int]:
    """The HKO-7 "sequent" iterator as its documentation states it, with sets and a plain loop."""
    out, times_ = [], sorted(existing)
    current = times_[0]
    while current <= times_[-1]:
        run, ok = 0, any(current + k in existing for k in range(length))
        for k in range(length):
            run = 0 if current + k in existing else run + 1
            ok = ok and run <= max_missing
        if ok:
            out.append(current)
            current += stride
        else:
            later = [t for t in times_ if t > current]
            if not later:
                break
            current = later[0]
    return out


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, 60), min_size=1), st.integers(1, 6), st.integers(1, 4), st.integers(0, 3))
def test_sequent_rule_matches_reference(existing, length, stride, max_missing):
    slots = np.array(sorted(existing), dtype=np.int64)
    assert sequent_starts(slots, length, 1, stride, max_missing) == reference_sequent(existing, length, stride,
                                                                                      max_missing)
    train = existing_starts(slots, length, 1, 1, max_missing)
    assert set(train) <= existing
    assert all(s in reference_sequent({t for t in existing if t >= s}, length, 10**6, max_missing)[:1]
               for s in train)


def test_day_specs_and_msrnn_protocol(root, tmp_path):
    dm = HKO7DataModule(str(root), train_days="2009-06-01:2009-06-01", val_days=["20090602"],
                        test_days=str(root / "hko7_rainy_test_days.txt"), masks=False, **SMALL)
    dm.setup("test")
    assert isinstance(dm.datasets["test"][0], torch.Tensor)       # no masks: plain frames
    # msrnn: every 6th frame; a constant 16x16 day resized to 4x4, 1 -> 1, non-overlapping windows
    other = tmp_path / "hko_msrnn"
    day = dt.date(2010, 7, 1)
    for t in times(day, range(30)):
        write_hko_frame(other, t, image=np.full((16, 16), hko_value(t), dtype=np.uint8))
    for k, name in enumerate(("train", "valid", "test")):
        write_hko_days(other, f"hko7_rainy_{name}_days.txt", [day if name == "test" else dt.date(2010, 1, 1 + k)])
    with pytest.warns(UserWarning, match="unverified"):
        ms = HKO7DataModule(str(other), "msrnn", in_len=1, out_len=2, size=4)
    ms.setup("test")
    # windows of 3 frames 6 slots apart (span 13 slots), stride 3 x 6 = 18: starts 0 (0, 6, 12), 18 (18, 24, 30:
    # missing, not allowed) -> 1 window
    assert len(ms.datasets["test"]) == 1
    window = ms.datasets["test"][0]
    assert window.shape == (3, 1, 4, 4) and slots_of(window) == [0, 6, 12]
    assert ms.protocol["unverified"].keys() == {"train_days", "test_days"}


def test_bad_folders_give_clear_errors(root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"no radarPNG/(.|\n)*sxjscience/HKO-7"):
        HKO7DataModule(str(tmp_path)).setup()
    partial = tmp_path / "partial"
    write_hko_frame(partial, T(2009, 6, 1))
    with pytest.raises(DatasetNotFoundError, match="hko7_rainy_train_days.txt is missing"):
        HKO7DataModule(str(partial)).setup()
    with pytest.raises(DatasetNotFoundError, match="mask_dat.npz"):
        HKO7DataModule(str(partial), train_days=["20090601"], val_days=["20090602"], test_days=["20090603"]).setup()
    with pytest.raises(DatasetNotFoundError, match="no radar frames under radarPNG/ for the 1 days of the val"):
        HKO7DataModule(str(partial), train_days=["20090601"], val_days=["20090602"], test_days=["20090603"],
                       masks=False).setup()
    with pytest.raises(ValueError, match="both the train and the test split"):
        HKO7DataModule(str(root), test_days="2009-06-01:2009-06-03").setup()
    with pytest.raises(DatasetFormatError, match="'June 1st' is not a date"):
        HKO7DataModule(str(root), test_days=["June 1st"]).setup()
