"""HKO-7: Hong Kong Observatory radar echoes 2009-2015, the PNG tree with its masks, as windows.

Shi, Gao, Lausen, Wang, Yeung, Wong & Woo, "Deep learning for precipitation nowcasting: a benchmark and a new
model" (NeurIPS 2017); code and formats: https://github.com/sxjscience/HKO-7.  One 480x480 8-bit PNG every
6 minutes, ``radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png``; pixel p / 255 = (dBZ + 10) / 70.  Validity masks:
``radarPNG_mask/.../RADyymmddHHMM00.mask`` per frame (zlib-compressed bytes of a 480x480 boolean array,
True = use), the global ``mask_dat.npz`` (``exclude_mask``, 1 = never use), and pixels with
0 < p < round(0.28 x 255) = 71 are treated as noise (``noise_threshold``).  The official splits are day
lists, ``hko7_rainy_train_days.txt`` (812 days, 2009-2014), ``hko7_rainy_valid_days.txt`` (50) and
``hko7_rainy_test_days.txt`` (131 days of 2015).

Windows follow the HKO-7 iterator: a window is ``in_len + out_len`` frames ``frame_step`` x 6 min apart;
it may contain up to ``max_missing`` consecutive missing frames (zeros, masked out), never only missing ones;
validation and test windows start at the first frame of the split and move ``eval_stride`` steps after a
valid window, or to the next existing frame after an invalid one (its "sequent" mode); training windows
start at every existing frame whose window is valid (the support of its "random" mode), ``train_stride``
apart.  Frames of days outside a split are never read for it (they count as missing).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import zlib
from pathlib import Path

import numpy as np

from ..metrics import ZR_HKO7
from .windows import Protocol, WindowDataModule, Windows, as_size, resize_frames

EPOCH = dt.datetime(1970, 1, 1)
STEP_MINUTES = 6
FRAME = re.compile(r"^RAD(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})00\.png$")
DAY = re.compile(r"^\s*(\d{4})[-/]?(\d{2})[-/]?(\d{2})")
DAY_FILES = {"train": "hko7_rainy_train_days.txt", "val": "hko7_rainy_valid_days.txt",
             "test": "hko7_rainy_test_days.txt"}

PROTOCOLS = {
    "hko7": Protocol(
        "hko7",
        "HKO-7 benchmark (Shi et al. 2017; nowcasting/config.py, hko_iterator.py): official rainy-day splits, "
        "480x480, 5 -> 20, evaluation stride 5, up to 2 consecutive missing frames, masks",
        {"train_days": None, "val_days": None, "test_days": None, "in_len": 5, "out_len": 20, "size": None,
         "crop": None, "frame_step": 1, "train_stride": 1, "eval_stride": 5, "max_missing": 2, "masks": True,
         "noise_threshold": 0.28}),
    "msrnn": Protocol(
        "msrnn",
        "MS-RNN code (config.py, util/load_hko.py): 128x128, every 6th frame (36 min apart), 10 -> 10, "
        "non-overlapping windows, masks ignored",
        {"train_days": None, "val_days": None, "test_days": None, "in_len": 10, "out_len": 10, "size": (128, 128),
         "crop": None, "frame_step": 6, "train_stride": None, "eval_stride": None, "max_missing": 0,
         "masks": False, "noise_threshold": 0.28},
        {"train_days": "MS-RNN read its own unpublished train/test folders ('HKO-7-180-with-mask'); the official "
                       "day lists are used here",
         "test_days": "as train_days"}),
}


def slot_of(time: dt.datetime) -> int:
    """6-minute slot number since 1970-01-01."""
    minutes = int((time - EPOCH).total_seconds()) // 60
    return minutes // STEP_MINUTES


def time_of(slot: int) -> dt.datetime:
    return EPOCH + dt.timedelta(minutes=STEP_MINUTES * int(slot))


def frame_path(root: Path, slot: int, mask: bool = False) -> Path:
    t = time_of(slot)
    name = f"RAD{t:%y%m%d%H%M}00" + (".mask" if mask else ".png")
    return root / ("radarPNG_mask" if mask else "radarPNG") / f"{t:%Y}" / f"{t:%m}" / f"{t:%d}" / name


def parse_days(spec, where: str = "") -> list[dt.date]:
    """Days from a day-list file (first token of each line: YYYYMMDD or YYYY-MM-DD), a range
    "YYYY-MM-DD:YYYY-MM-DD" (inclusive), or a list of such dates."""
    if isinstance(spec, (list, tuple)):
        return sorted({_day(str(s), where) for s in spec})
    text = str(spec)
    if ":" in text and not Path(text).exists():
        first, last = (_day(part, where) for part in text.split(":", 1))
        if last < first:
            raise ValueError(f"{where}day range {text!r} ends before it starts")
        return [first + dt.timedelta(days=k) for k in range((last - first).days + 1)]
    lines = Path(text).read_text().splitlines()
    days = sorted({_day(line, where) for line in lines if DAY.match(line)})
    if not days:
        raise ValueError(f"{where}{text} lists no day (expected one YYYYMMDD or YYYY-MM-DD per line)")
    return days


def _day(text: str, where: str) -> dt.date:
    match = DAY.match(text)
    try:
        return dt.date(*(int(g) for g in match.groups()))
    except (AttributeError, ValueError):
        raise ValueError(f"{where}{text!r} is not a date YYYYMMDD or YYYY-MM-DD (or a range FIRST:LAST, or "
                         "a day-list file)") from None


def list_frames(root: Path, days: list[dt.date]) -> np.ndarray:
    """Sorted slots of the PNG frames of ``days`` under root/radarPNG."""
    slots = []
    for day in days:
        folder = root / "radarPNG" / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
        if not folder.is_dir():
            continue
        for name in os.listdir(folder):
            match = FRAME.match(name)
            if match:
                yy, mm, dd, hh, mi = (int(g) for g in match.groups())
                slots.append(slot_of(dt.datetime(2000 + yy, mm, dd, hh, mi)))
    return np.unique(np.array(slots, dtype=np.int64))


def present(slots: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Which entries of ``clips`` (any shape) are in the sorted array ``slots``."""
    i = np.minimum(np.searchsorted(slots, clips), len(slots) - 1)
    return slots[i] == clips


def valid_clips(found: np.ndarray, max_missing: int) -> np.ndarray:
    """The HKO-7 rule per row of ``found`` (N, L): no more than ``max_missing`` consecutive missing frames,
    and not all missing."""
    run = np.zeros(len(found), dtype=np.int64)
    ok = found.any(1)
    for column in found.T:
        run = np.where(column, 0, run + 1)
        ok &= run <= max_missing
    return ok


def sequent_starts(slots: np.ndarray, length: int, step: int, stride: int, max_missing: int) -> list[int]:
    """The HKO-7 iterator's "sequent" mode: from the first frame, take the window at the current time if
    valid and move ``stride`` steps on, else move to the next existing frame."""
    starts = []
    if not len(slots):
        return starts
    offsets = step * np.arange(length)
    current, last = int(slots[0]), int(slots[-1])
    while current <= last:
        if valid_clips(present(slots, current + offsets)[None], max_missing)[0]:
            starts.append(current)
            current += stride * step
        else:
            i = int(np.searchsorted(slots, current, side="right"))
            if i >= len(slots):
                break
            current = int(slots[i])
    return starts


def existing_starts(slots: np.ndarray, length: int, step: int, stride: int, max_missing: int) -> list[int]:
    """Every ``stride``-th existing frame whose window is valid (the HKO-7 "random" mode's support)."""
    if not len(slots):
        return []
    found = present(slots, slots[:, None] + step * np.arange(length))
    return slots[valid_clips(found, max_missing)][::stride].tolist()


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img if img.mode == "L" else img.convert("L"))


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A .mask file: zlib-compressed bytes of a boolean array of ``shape`` (True = valid)."""
    data = np.frombuffer(zlib.decompress(path.read_bytes()), dtype=bool)
    if data.size != shape[0] * shape[1]:
        raise ValueError(f"{path} holds {data.size} values, not a {shape[0]}x{shape[1]} mask")
    return data.reshape(shape)


class HKO7Frames:
    """Windows of one split: frames uint8 (T, 1, H, W) [and masks bool (T, 1, H, W)]; slots not in the
    split are zeros and masked out."""

    def __init__(self, root: Path, slots: np.ndarray, step: int, masks: bool, exclude: np.ndarray | None,
                 noise: int, crop, size, shape):
        self.root, self.slots, self.step, self.masks = root, slots, step, masks
        self.exclude, self.noise, self.crop, self.size, self.shape = exclude, noise, crop, size, shape

    def window(self, segment: int, start: int, length: int):
        clip = start + self.step * np.arange(length)
        frames = np.zeros((length,) + self.shape, dtype=np.uint8)
        valid = np.zeros((length,) + self.shape, dtype=bool)
        for k, slot in enumerate(clip):
            if not present(self.slots, slot):
                continue
            frames[k] = self._read(frame_path(self.root, slot))
            if self.masks:
                valid[k] = self._valid(slot, frames[k])
        frames, valid = self._shape(frames), self._shape(valid)
        return (frames, valid) if self.masks else frames

    def _read(self, path: Path) -> np.ndarray:
        image = read_png(path)
        if image.shape != self.shape:
            raise ValueError(f"{path} is {image.shape[0]}x{image.shape[1]}, the other frames "
                             f"{self.shape[0]}x{self.shape[1]}")
        return image

    def _valid(self, slot: int, image: np.ndarray) -> np.ndarray:
        path = frame_path(self.root, slot, mask=True)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: with masks=True every PNG needs its .mask file "
                                    "(radarPNG_mask/ of the HKO-7 data); masks=False ignores masks")
        valid = read_mask(path, self.shape)
        if self.exclude is not None:
            valid = valid & ~self.exclude
        return valid & ~((image > 0) & (image < self.noise))

    def _shape(self, frames: np.ndarray) -> np.ndarray:
        """Crop, then resize (a resized mask keeps the pixels whose bilinear mask value is >= 0.5)."""
        if self.crop is not None:
            top, left, h, w = self.crop
            frames = frames[:, top:top + h, left:left + w]
        if frames.dtype == bool:
            return resize_frames(frames[:, None].astype(np.float32), self.size) >= 0.5
        return resize_frames(frames[:, None], self.size)


class HKO7DataModule(WindowDataModule):
    """HKO-7 radar echoes (Shi et al., NeurIPS 2017) as uint8 batches (B, T, 1, H, W), with the validity
    masks as ``{"frames", "mask"}`` dicts (bool, same shape) when ``masks`` is on.

    Protocols (see the module docstring and docs/data.md, section 'hko7'):

    - ``"hko7"``: the benchmark -- official rainy-day splits, 480x480, 5 -> 20, evaluation stride 5, up to
      2 consecutive missing frames, per-frame, global and noise masks;
    - ``"msrnn"``: MS-RNN -- 128x128, every 6th frame (36 minutes apart), 10 -> 10, non-overlapping windows,
      no masks; its own day split is unpublished (the official day lists are used, flagged unverified).

    Args:
        root: the HKO-7 data folder (``hko_data``): ``radarPNG/``, ``radarPNG_mask/``, ``mask_dat.npz`` and the
            three day lists.
        train_days, val_days, test_days: a day-list file, a range ``"2009-01-01:2014-12-31"`` or a list of
            dates; None = the official list in ``root``.
        in_len, out_len; size (h, w) or int (None: as stored); crop [top, left, height, width] (before the
        resize; the benchmark's central region is [120, 120, 240, 240]); frame_step (6-minute steps between
        frames); train_stride, eval_stride (None = non-overlapping); max_missing; masks; noise_threshold.

    ``zr`` = (58.53, 1.56): the Z-R relation of the HKO-7 scores (:class:`convrnn.metrics.SkillScores`).
    """

    NAME = "hko7"
    PROTOCOLS = PROTOCOLS
    LAYOUT = """
        radarPNG/2009/01/01/RAD090101000000.png ...   (480x480 8-bit PNG every 6 minutes)
        radarPNG_mask/2009/01/01/RAD090101000000.mask ...   (zlib-compressed boolean masks)
        mask_dat.npz   (exclude_mask)
        hko7_rainy_train_days.txt  hko7_rainy_valid_days.txt  hko7_rainy_test_days.txt
    """
    GET = ("sign the HKO-7 undertaking and request the data from the Hong Kong Observatory, as "
           "https://github.com/sxjscience/HKO-7 explains (the day lists and mask_dat.npz come with it)")
    zr = ZR_HKO7

    def __init__(self, root: str, protocol: str = "hko7", batch_size: int = 4, num_workers: int = 0,
                 train_days: str | list[str] | None = None, val_days: str | list[str] | None = None,
                 test_days: str | list[str] | None = None, in_len: int | None = None, out_len: int | None = None,
                 size: int | tuple[int, int] | None = None, crop: tuple[int, int, int, int] | None = None,
                 frame_step: int | None = None, train_stride: int | None = None, eval_stride: int | None = None,
                 max_missing: int | None = None, masks: bool | None = None, noise_threshold: float | None = None):
        super().__init__(root, protocol, batch_size, num_workers, train_days=train_days, val_days=val_days,
                         test_days=test_days, in_len=in_len, out_len=out_len, size=size, crop=crop,
                         frame_step=frame_step, train_stride=train_stride, eval_stride=eval_stride,
                         max_missing=max_missing, masks=masks, noise_threshold=noise_threshold)
        self.save_hyperparameters()

    def _days(self) -> dict[str, list[dt.date]]:
        days = {}
        for split in ("train", "val", "test"):
            spec = self.settings[f"{split}_days"]
            if spec is None:
                spec = self.root / DAY_FILES[split]
                if not spec.is_file():
                    raise self.not_found(f"the official day list {spec.name} is missing (or give {split}_days= "
                                         "a file, a range FIRST:LAST or a list of days)")
            try:
                days[split] = parse_days(spec, where=f"{split}_days: ")
            except (OSError, ValueError) as err:
                raise self.bad_format(str(err)) from None
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(days[a]) & set(days[b]))
            if shared:
                raise ValueError(f"{len(shared)} days are in both the {a} and the {b} split (first {shared[0]}); "
                                 "the splits must not share a day")
        return days

    def build(self, splits: tuple[str, ...]) -> dict:
        s = self.settings
        if not (self.root / "radarPNG").is_dir():
            raise self.not_found("there is no radarPNG/ folder")
        days = self._days()
        exclude = self._exclude() if s["masks"] else None
        step, length = int(s["frame_step"]), self.seq_len
        out = {}
        for split in splits:
            slots = list_frames(self.root, days[split])
            if not len(slots):
                raise self.not_found(f"no radar frames under radarPNG/ for the {len(days[split])} days of the "
                                     f"{split} split ({days[split][0]} ... {days[split][-1]})")
            stride = s["train_stride" if split == "train" else "eval_stride"] or length
            find = existing_starts if split == "train" else sequent_starts
            starts = np.array(find(slots, length, step, stride, int(s["max_missing"])), dtype=np.int64)
            shape = read_png(frame_path(self.root, int(slots[0]))).shape
            noise = round(float(s["noise_threshold"]) * 255)
            source = HKO7Frames(self.root, slots, step, bool(s["masks"]), exclude, noise, s["crop"] or None,
                                as_size(s["size"]), shape)
            out[split] = Windows(source, np.stack([np.zeros_like(starts), starts], 1), length)
        return out

    def _exclude(self) -> np.ndarray:
        path = self.root / "mask_dat.npz"
        if not path.is_file():
            raise self.not_found("mask_dat.npz (the global exclude mask) is missing; masks=False ignores masks")
        if not (self.root / "radarPNG_mask").is_dir():
            raise self.not_found("there is no radarPNG_mask/ folder (per-frame masks); masks=False ignores masks")
        with np.load(path) as data:
            if "exclude_mask" not in data:
                raise self.bad_format(f"{path.name} holds {list(data)}, not 'exclude_mask'")
            return data["exclude_mask"].astype(bool)
