"""German weather radar: DWD RADOLAN RY (or YW) composites, read with wradlib, as windows of 5-minute frames.

RADOLAN composites (Deutscher Wetterdienst): a 900x900 km grid (RY; YW: 1100x900) at 1 km, polar
stereographic, one file every 5 minutes, ``raa01-ry_10000-YYMMDDhhmm-dwd---bin`` (``.gz`` / ``.bz2`` too):
an ASCII header, then little-endian uint16 values whose 12 low bits are the precipitation in 0.01 mm per
5 min and whose flag bits mark secondary data (0x1000), no data (0x2000) and clutter (0x8000).
:func:`wradlib.io.read_radolan_composite` reads them (mm per 5 min, header attributes, the flagged cells);
install it with ``pip install 'convrnn[radar]'``.

The conversion is MS-RNN's (util/load_DWD.py, the data of Ma et al., "MS-RNN: a flexible multi-scale
framework for spatiotemporal predictive learning"): R (mm/h) = 12 x mm per 5 min, dBZ = 10 log10(256 R^1.42),
pixel = (dBZ + 10) / 70 clipped to [0, 1] (R = 0 gives 0).  Cells flagged no-data or clutter are masked out
(False in the mask, 0 in the frame), never taken as dry.  Rows are flipped so row 0 is the northern edge
(RADOLAN stores the southern row first).  Splits by year (MS-RNN: train 2006-2014, val 2015, test
2016-2017); a window is ``in_len + out_len`` consecutive 5-minute frames of one split (a missing file ends
a run), ``stride`` apart (default: non-overlapping, as MS-RNN's loader cuts them), read file by file.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import torch

from ..metrics import ZR_DWD, rain_to_pixel
from .windows import Protocol, WindowDataModule, Windows, as_size, resize_frames, runs, window_index

NAME = re.compile(r"^raa01-(ry|yw)[^_]*_10000-(\d{10})-dwd---bin(?:\.gz|\.bz2)?$")
EPOCH = dt.datetime(1970, 1, 1)
STEP_MINUTES = 5

PROTOCOLS = {
    "msrnn": Protocol(
        "msrnn",
        "MS-RNN code (config.py, util/load_DWD.py): RADOLAN RY, mm/h = 12 x mm/5 min, dBZ = 10 log10(256 R^1.42), "
        "pixel = (dBZ + 10) / 70; train 2006-2014, val 2015, test 2016-2017; 124x124, 5 -> 5",
        {"train_years": (2006, 2014), "val_years": (2015, 2015), "test_years": (2016, 2017), "in_len": 5,
         "out_len": 5, "crop": (388, 388, 124, 124), "size": None, "stride": None},
        {"crop": "MS-RNN's frames are 124x124, but where its data was cropped (or resized) from is unpublished; "
                 "the centre of the grid is used"}),
}


def slot_of(time: dt.datetime) -> int:
    return int((time - EPOCH).total_seconds()) // 60 // STEP_MINUTES


def find_files(root: Path) -> dict[int, Path]:
    """RADOLAN RY / YW files anywhere under ``root``, by 5-minute slot (the time in the file name, UTC)."""
    found = {}
    for path in sorted(root.rglob("raa01-*")):
        match = NAME.match(path.name)
        if match and path.is_file():
            time = dt.datetime.strptime(match.group(2), "%y%m%d%H%M")
            found[slot_of(time)] = path
    return found


def _wradlib_io():
    try:
        import wradlib.io as wio
    except ImportError as err:
        raise ImportError("reading RADOLAN files needs wradlib: pip install 'convrnn[radar]' (or pip install "
                          f"wradlib); cause: {err}") from err
    return wio


def read_composite(path: Path) -> tuple[np.ndarray, np.ndarray, dt.datetime]:
    """One composite: (precipitation in mm per 5 min, valid mask, time), rows north first."""
    data, attrs = _wradlib_io().read_radolan_composite(str(path), missing=-9999)
    if attrs.get("producttype") not in ("RY", "YW"):
        raise ValueError(f"{path} is a RADOLAN {attrs.get('producttype')} product, not RY or YW "
                         "(precipitation in 0.01 mm per 5 min)")
    invalid = np.zeros(data.size, dtype=bool)
    for key in ("nodatamask", "cluttermask"):
        invalid[np.asarray(attrs.get(key, []), dtype=np.int64).ravel()] = True
    invalid = invalid.reshape(data.shape)
    values = np.where(invalid, 0.0, data)
    return values[::-1], ~invalid[::-1], attrs["datetime"]


def to_pixel(mm_per_5min: np.ndarray) -> np.ndarray:
    """MS-RNN's conversion: R = 12 x mm/5 min (mm/h), then (10 log10(256 R^1.42) + 10) / 70 clipped to [0, 1]."""
    rate = torch.from_numpy(12.0 * np.asarray(mm_per_5min, dtype=np.float64))
    return rain_to_pixel(rate, ZR_DWD).clamp_(0.0, 1.0).numpy()


class RadolanFrames:
    """Windows of one split, read file by file: float32 frames (T, 1, h, w) in [0, 1] and bool masks."""

    def __init__(self, paths: list[Path], segments: list[tuple[int, int]], crop, size):
        self.paths, self.segments, self.crop, self.size = paths, segments, crop, size

    def window(self, segment: int, start: int, length: int):
        first = self.segments[segment][0] + start
        frames, masks = [], []
        for path in self.paths[first:first + length]:
            values, valid, _ = read_composite(path)
            if self.crop is not None:
                top, left, h, w = self.crop
                if top + h > values.shape[0] or left + w > values.shape[1]:
                    raise ValueError(f"crop {list(self.crop)} does not fit the {values.shape[0]}x{values.shape[1]} "
                                     f"grid of {path}")
                values, valid = values[top:top + h, left:left + w], valid[top:top + h, left:left + w]
            frames.append(to_pixel(values).astype(np.float32))
            masks.append(valid)
        frames, masks = np.stack(frames)[:, None], np.stack(masks)[:, None]
        if self.size is not None:
            frames = resize_frames(frames, self.size)
            masks = resize_frames(masks.astype(np.float32), self.size) >= 0.5
        return frames, masks


class RadolanDataModule(WindowDataModule):
    """German radar (DWD RADOLAN RY composites) as ``{"frames", "mask"}`` batches: float32 (B, T, 1, H, W)
    pixels (dBZ + 10) / 70 in [0, 1] and bool masks (False = no data or clutter).

    Protocol ``"msrnn"`` (MS-RNN's German radar setting): years 2006-2014 train, 2015 val, 2016-2017 test;
    5 -> 5; 124x124 crops (where from is unpublished: the centre, flagged unverified).  See the module
    docstring and docs/data.md, section 'radolan'.

    Args:
        root: a folder holding ``raa01-ry_10000-YYMMDDhhmm-dwd---bin[.gz|.bz2]`` files (any sub-folders).
        train_years, val_years, test_years: (first, last) years, inclusive.
        in_len, out_len; crop: [top, left, height, width] on the north-up grid (None: the whole grid);
        size: resize after the crop (None: keep); stride: between window starts (None: non-overlapping).

    ``zr`` = (256, 1.42): the Z-R relation of the conversion, for the skill-score thresholds.
    """

    NAME = "radolan"
    PROTOCOLS = PROTOCOLS
    LAYOUT = """
        raa01-ry_10000-1605010000-dwd---bin  raa01-ry_10000-1605010005-dwd---bin ...
        (RADOLAN RY composites, one every 5 minutes, in any sub-folders; .gz / .bz2 are read too)
    """
    GET = ("DWD open data: recent RY files at https://opendata.dwd.de/weather/radar/radolan/ry/ ; the archive "
           "(reprocessed YW, 2001 on) at https://opendata.dwd.de/climate_environment/CDC/grids_germany/5_minutes/"
           "radolan/ (free, no registration)")
    zr = ZR_DWD

    def __init__(self, root: str, protocol: str = "msrnn", batch_size: int = 4, num_workers: int = 0,
                 train_years: tuple[int, int] | None = None, val_years: tuple[int, int] | None = None,
                 test_years: tuple[int, int] | None = None, in_len: int | None = None, out_len: int | None = None,
                 crop: tuple[int, int, int, int] | None = None, size: int | tuple[int, int] | None = None,
                 stride: int | None = None):
        super().__init__(root, protocol, batch_size, num_workers, train_years=train_years, val_years=val_years,
                         test_years=test_years, in_len=in_len, out_len=out_len, crop=crop, size=size, stride=stride)
        self.save_hyperparameters()
        years = {split: tuple(self.settings[f"{split}_years"]) for split in ("train", "val", "test")}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if years[a][0] <= years[b][1] and years[b][0] <= years[a][1]:
                raise ValueError(f"{a}_years {list(years[a])} and {b}_years {list(years[b])} overlap; the splits "
                                 "must not share a year")
        self.years = years

    def build(self, splits: tuple[str, ...]) -> dict:
        _wradlib_io()
        files = find_files(self.root)
        if not files:
            raise self.not_found("no RADOLAN files (raa01-ry_10000-YYMMDDhhmm-dwd---bin) in it or its sub-folders")
        years = {s: (EPOCH + dt.timedelta(minutes=STEP_MINUTES * s)).year for s in files}
        out = {}
        for split in splits:
            first, last = self.years[split]
            slots = np.array(sorted(s for s, year in years.items() if first <= year <= last), dtype=np.int64)
            if not len(slots):
                raise self.not_found(f"no RADOLAN file of the years {first}-{last} ({split} split)")
            segments = [(a, b - a) for a, b in runs(slots)]
            index = window_index([n for _, n in segments], self.seq_len, self.settings["stride"] or self.seq_len)
            source = RadolanFrames([files[int(s)] for s in slots], segments, self.settings["crop"] or None,
                                   as_size(self.settings["size"]))
            out[split] = Windows(source, index, self.seq_len)
        self._check_first(out)
        return out

    def _check_first(self, datasets: dict) -> None:
        """Read one file now, so a file wradlib cannot read or a product that is not RY fails at setup."""
        for dataset in datasets.values():
            if dataset.source.paths:
                path = dataset.source.paths[0]
                try:
                    values, _, time = read_composite(path)
                except (OSError, ValueError, KeyError, EOFError) as err:
                    raise self.bad_format(f"cannot read {path} as a RADOLAN composite: {err}") from err
                if slot_of(time.replace(tzinfo=None)) != slot_of(_name_time(path)):
                    raise self.bad_format(f"{path.name} says {_name_time(path)} but its header {time}")
                crop, (rows, cols) = self.settings["crop"] or None, values.shape
                if crop is not None and (crop[0] + crop[2] > rows or crop[1] + crop[3] > cols):
                    raise self.bad_format(f"crop {list(crop)} (top, left, height, width) does not fit the "
                                          f"{rows}x{cols} grid of {path.name}; give crop=[top, left, h, w] inside it")
                return


def _name_time(path: Path) -> dt.datetime:
    return dt.datetime.strptime(NAME.match(path.name).group(2), "%y%m%d%H%M")
