"""TaxiBJ: crowd flows in Beijing from the four ST-ResNet HDF5 files, as windows of consecutive half hours.

Zhang, Zheng & Qi, "Deep spatio-temporal residual networks for citywide crowd flows prediction", AAAI 2017.
Files ``BJ13_M32x32_T30_InOut.h5`` ... ``BJ16_M32x32_T30_InOut.h5``: dataset ``data`` (N, 2, 32, 32) float
(channel 0 inflow, 1 outflow), dataset ``date`` of byte strings ``YYYYMMDDSS`` with slot SS = 01..48
(30 minutes each, slot 01 = 00:00-00:30).  Read with h5py, window by window (nothing is loaded whole).

The protocol (ST-ResNet's ``load_data``, which OpenSTL's and MS-RNN's files come from):

1. days without all 48 slots are dropped (a repeated slot is an error, never silently merged);
2. the remaining slots, in time order, are cut into runs of consecutive half hours (a dropped day or the
   months between two files end a run); a window is ``in_len + out_len`` consecutive slots of one run,
   one per slot (stride 1), frames in time order (MS-RNN's loader feeds them newest first: not repeated);
3. the test set is the last ``test_windows`` windows (48 x 7 x 4 = 1,344: the last four weeks); validation
   the last ``val_fraction`` of the windows before them (ST-ResNet's 10 %); a window that would share a
   slot with a later split is dropped, so no frame is in two splits;
4. negative flows become 0, then values are min-max scaled into [0, 1] with the minimum and maximum of
   every slot before the test windows (both channels; ST-ResNet's fit on ``data[:-len_test]``; OpenSTL's
   [-1, 1] followed by (x + 1) / 2 is the same map).  :meth:`TaxiBJDataModule.denormalize` maps back to
   flow units.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import re
from pathlib import Path

import numpy as np

from .windows import Protocol, WindowDataModule, Windows, runs, window_index

FILES = tuple(f"BJ{y}_M32x32_T30_InOut.h5" for y in (13, 14, 15, 16))
SLOTS_PER_DAY = 48
DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})$")
CHANNELS = {"both": (0, 1), "inflow": (0,), "outflow": (1,)}

_SOURCE = ("ST-ResNet (Zhang et al. 2017) load_data, as OpenSTL and MS-RNN use it: incomplete days dropped, "
           "negatives clipped, min-max over the slots before the test windows, 4 -> 4, last 1,344 windows test")
PROTOCOLS = {
    "openstl": Protocol("openstl", _SOURCE + "; both channels",
                        {"files": FILES, "channels": "both", "in_len": 4, "out_len": 4, "test_windows": 1344,
                         "val_fraction": 0.1}),
    "msrnn": Protocol("msrnn", _SOURCE + "; inflow only (MS-RNN util/load_taxibj.py)",
                      {"files": FILES, "channels": "inflow", "in_len": 4, "out_len": 4, "test_windows": 1344,
                       "val_fraction": 0.1}),
}


def read_dates(values, path: Path) -> np.ndarray:
    """``date`` entries (bytes or str ``YYYYMMDDSS``) -> int64 half-hour numbers since 1970-01-01."""
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        match = DATE.match(text.strip())
        slot = int(match.group(4)) if match else 0
        try:
            day = dt.date(*(int(g) for g in match.groups()[:3])) if match else None
        except ValueError:
            day = None
        if day is None or not 1 <= slot <= SLOTS_PER_DAY:
            raise ValueError(f"{path}: date[{i}] = {text!r} is not YYYYMMDDSS with a valid day and slot 01..48")
        out[i] = (day - dt.date(1970, 1, 1)).days * SLOTS_PER_DAY + slot - 1
    return out


def complete_days(slots: np.ndarray) -> np.ndarray:
    """Boolean: which entries of ``slots`` (half-hour numbers) belong to a day that has all 48."""
    days = slots // SLOTS_PER_DAY
    unique, counts = np.unique(days, return_counts=True)
    full = unique[counts == SLOTS_PER_DAY]
    return np.isin(days, full)


class TaxiBJFrames:
    """Frames of the kept slots, read from the .h5 files window by window: float32 (T, C, 32, 32) in
    [0, 1] (values beyond the fitted range fall outside).  Files open lazily in each process."""

    def __init__(self, paths: list[str], file_of: np.ndarray, row_of: np.ndarray, segments: list[tuple[int, int]],
                 channels: tuple[int, ...], low: float, high: float):
        self.paths, self.file_of, self.row_of, self.segments = paths, file_of, row_of, segments
        self.channels, self.low, self.high = list(channels), low, high
        self._files, self._pid = None, None

    def _data(self, f: int):
        if self._files is None or self._pid != os.getpid():
            import h5py
            self._files, self._pid = [h5py.File(p, "r") for p in self.paths], os.getpid()
        return self._files[f]["data"]

    def __getstate__(self):
        return {**self.__dict__, "_files": None, "_pid": None}

    def window(self, segment: int, start: int, length: int) -> np.ndarray:
        first = self.segments[segment][0] + start
        f, rows = int(self.file_of[first]), self.row_of[first:first + length]
        data = self._data(f)
        if np.all(np.diff(rows) == 1):
            frames = data[int(rows[0]):int(rows[-1]) + 1]
        else:
            frames = np.stack([data[int(r)] for r in rows])
        frames = np.maximum(np.asarray(frames, dtype=np.float64)[:, self.channels], 0.0)
        return ((frames - self.low) / (self.high - self.low)).astype(np.float32)


class TaxiBJDataModule(WindowDataModule):
    """TaxiBJ crowd flows (Zhang et al., AAAI 2017) as float32 batches (B, T, C, 32, 32) in [0, 1].

    Protocols (see the module docstring and docs/data.md, section 'taxibj'):

    - ``"openstl"``: ST-ResNet's processing, both channels (inflow, outflow), 4 -> 4;
    - ``"msrnn"``: the same windows, inflow only.

    Args:
        root: the folder holding the four ``BJ1x_M32x32_T30_InOut.h5`` files.
        files: which files, in the protocol's order (default all four).
        channels: ``"both"``, ``"inflow"`` or ``"outflow"``.
        in_len, out_len: half hours in and out; test_windows: the last windows that form the test set;
        val_fraction: the share of the remaining windows (the latest) used for validation.

    After :meth:`setup`, ``flow_min`` / ``flow_max`` hold the scaling statistics and :meth:`denormalize`
    returns flows in their units (for errors in flow units).
    """

    NAME = "taxibj"
    PROTOCOLS = PROTOCOLS
    LAYOUT = "\n".join(FILES) + "\n(HDF5: 'data' (N, 2, 32, 32) inflow/outflow, 'date' byte strings YYYYMMDDSS)"
    GET = ("the TaxiBJ files of ST-ResNet (Zhang et al. 2017): links in https://github.com/lucktroy/DeepST "
           "(data/TaxiBJ/README)")

    def __init__(self, root: str, protocol: str = "openstl", batch_size: int = 16, num_workers: int = 0,
                 files: list[str] | None = None, channels: str | None = None, in_len: int | None = None,
                 out_len: int | None = None, test_windows: int | None = None, val_fraction: float | None = None):
        super().__init__(root, protocol, batch_size, num_workers, files=files, channels=channels, in_len=in_len,
                         out_len=out_len, test_windows=test_windows, val_fraction=val_fraction)
        self.save_hyperparameters()
        if self.settings["channels"] not in CHANNELS:
            raise ValueError(f"channels={self.settings['channels']!r}; choose one of {list(CHANNELS)}")
        if not 0 <= self.settings["val_fraction"] < 1 or self.settings["test_windows"] < 1:
            raise ValueError("val_fraction must be in [0, 1) and test_windows >= 1")
        self.flow_min = self.flow_max = None

    def denormalize(self, frames):
        """Scaled frames -> flows (the inverse of the min-max map), tensor or array."""
        if self.flow_min is None:
            raise RuntimeError("call setup() first: the scaling statistics come from the training slots")
        return frames * (self.flow_max - self.flow_min) + self.flow_min

    def _index(self):
        """Paths, and for every kept slot in time order: its half-hour number, file and row."""
        import h5py

        paths = [self.root / name for name in self.settings["files"]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise self.not_found(f"missing {', '.join(missing)}")
        slots, file_of, row_of = [], [], []
        for f, path in enumerate(paths):
            try:
                with h5py.File(path, "r") as h5:
                    if "data" not in h5 or "date" not in h5:
                        raise self.bad_format(f"{path.name} has no 'data' and 'date' datasets (it holds {list(h5)})")
                    shape, dates = h5["data"].shape, h5["date"][()]
            except OSError as err:
                raise self.bad_format(f"{path} is not a readable HDF5 file ({err})") from err
            if len(shape) != 4 or shape[1] != 2 or shape[0] != len(dates):
                raise self.bad_format(f"{path.name}: 'data' has shape {shape} for {len(dates)} dates; expected "
                                      f"({len(dates)}, 2, 32, 32)")
            try:
                numbers = read_dates(dates, path)
            except ValueError as err:
                raise self.bad_format(str(err)) from None
            keep = complete_days(numbers)
            slots.append(numbers[keep])
            file_of.append(np.full(int(keep.sum()), f))
            row_of.append(np.flatnonzero(keep))
        slots, file_of, row_of = (np.concatenate(a) for a in (slots, file_of, row_of))
        order = np.argsort(slots, kind="stable")
        slots, file_of, row_of = slots[order], file_of[order], row_of[order]
        repeated = slots[1:][np.diff(slots) == 0]
        if len(repeated):
            raise self.bad_format(f"time slot {_slot_text(repeated[0])} appears twice; each half hour must be "
                                  "stored once")
        return [str(p) for p in paths], slots, file_of, row_of

    def build(self, splits: tuple[str, ...]) -> dict:
        paths, slots, file_of, row_of = self._index()
        segments = [(a, b - a) for a, b in runs(slots)]
        index = window_index([n for _, n in segments], self.seq_len, 1)
        first = np.array([segments[s][0] + st for s, st in index], dtype=np.int64)
        parts = self._split(first)
        if self.flow_min is None:
            test_start = first[parts["test"][0]] if len(parts["test"]) else len(slots)
            self.flow_min, self.flow_max = self._statistics(paths, file_of[:test_start], row_of[:test_start])
        channels = CHANNELS[self.settings["channels"]]
        source = TaxiBJFrames(paths, file_of, row_of, segments, channels, self.flow_min, self.flow_max)
        return {split: Windows(source, index[parts[split]], self.seq_len) for split in splits}

    def _split(self, first: np.ndarray) -> dict[str, np.ndarray]:
        """Window numbers per split: test the last ``test_windows``, val the latest ``val_fraction`` of the
        rest; a window overlapping the next split's first slot is dropped."""
        n, length = len(first), self.seq_len
        n_test = self.settings["test_windows"]
        if n <= n_test:
            raise self.bad_format(f"the files give {n} windows of {length} consecutive half hours, but the "
                                  f"test set alone takes the last {n_test}; give all four files or lower "
                                  "test_windows")
        test = np.arange(n - n_test, n)
        before = np.flatnonzero(first + length <= first[test[0]])
        n_val = math.ceil(self.settings["val_fraction"] * len(before))
        val = before[len(before) - n_val:]
        train = before[first[before] + length <= first[val[0]]] if n_val else before
        return {"train": train, "val": val, "test": test}

    @staticmethod
    def _statistics(paths, file_of, row_of) -> tuple[float, float]:
        """Min and max of the flows (negatives as 0) over the given slots, read file by file in chunks."""
        import h5py

        low, high = math.inf, -math.inf
        for f, path in enumerate(paths):
            rows = np.sort(row_of[file_of == f])
            if not len(rows):
                continue
            with h5py.File(path, "r") as h5:
                data = h5["data"]
                for lo in range(0, int(rows[-1]) + 1, 1024):
                    chunk = rows[(rows >= lo) & (rows < lo + 1024)]
                    if len(chunk):
                        values = np.maximum(data[lo:lo + 1024][chunk - lo], 0.0)
                        low, high = min(low, float(values.min())), max(high, float(values.max()))
        if not high > low:
            raise ValueError(f"the training flows are constant ({low}); min-max scaling needs a range")
        return low, high


def _slot_text(number: int) -> str:
    day, slot = divmod(int(number), SLOTS_PER_DAY)
    return f"{dt.date(1970, 1, 1) + dt.timedelta(days=day):%Y%m%d}{slot + 1:02d}"
