"""Writers of small files in each real dataset format, for the loader tests (tests/test_data_*.py).

Every writer follows the published format (see docs/data.md) and encodes where a frame came from in its
pixel values, so a test can read a window back and check which frames it holds:

- KTH: constant frames of value ``frame_value(number)`` (AVI via PyAV, lossless FFV1; JPEG tree at quality 100);
- TaxiBJ: .h5 files with ``data`` (N, 2, 32, 32) and byte-string ``date`` b"YYYYMMDDSS";
- HKO-7: 8-bit PNGs radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png, zlib-compressed boolean .mask files, mask_dat.npz;
- RADOLAN: binary RY composites, an ASCII header then little-endian uint16 with flag bits.
"""
from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

import numpy as np


# -- KTH ------------------------------------------------------------------------------------------
def frame_value(number: int) -> int:
    """The gray value of frame ``number`` (1-based) in the KTH test files: 10 + 3 * number."""
    return 10 + 3 * number


def frame_number(value: float) -> int:
    return int(round((float(value) - 10) / 3))


def write_avi(path: Path, numbers, size=(12, 16), codec: str = "ffv1") -> Path:
    """An AVI of constant gray frames of value frame_value(n) for n in ``numbers``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "gray" if codec in ("ffv1", "rawvideo") else "yuv420p"
        for n in numbers:
            image = np.full(size, frame_value(n), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_jpeg_video(folder: Path, numbers, size=(12, 16)) -> Path:
    """A PredRNN-release video folder: image_NNNN.jpg, RGB, constant frames whose first (red) channel is
    frame_value(n); green and blue differ (PredRNN reads the first channel)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        image = np.full(size + (3,), frame_value(n), dtype=np.uint8)
        image[..., 1], image[..., 2] = frame_value(n) + 60, frame_value(n) // 2
        Image.fromarray(image).save(folder / f"image_{n:04d}.jpg", quality=100)
    return folder


# -- TaxiBJ ---------------------------------------------------------------------------------------
def taxibj_value(day: dt.date, slot: int, channel: int) -> float:
    """Flow value of (day, slot 1..48, channel) in the TaxiBJ test files: encodes the time exactly."""
    return float(day.toordinal() % 1000) * 100 + slot + 0.25 * channel


def write_taxibj(path: Path, days: list[dt.date], drop: dict | None = None, negative: tuple | None = None,
                 spike: tuple | None = None) -> Path:
    """A BJxx_M32x32_T30_InOut.h5 with every slot of ``days`` except those in ``drop`` {day: [slots]};
    pixel (0, 0) of each frame holds taxibj_value; ``negative`` = (row index, value) writes a negative flow
    at pixel (5, 5) of the inflow, ``spike`` = (row index, value) a flow at pixel (7, 7) of the outflow."""
    import h5py

    dates, frames = [], []
    for day in days:
        for slot in range(1, 49):
            if slot in (drop or {}).get(day, []):
                continue
            dates.append(f"{day:%Y%m%d}{slot:02d}".encode())
            frame = np.full((2, 32, 32), 1.0)
            for c in range(2):
                frame[c, 0, 0] = taxibj_value(day, slot, c)
            frames.append(frame)
    data = np.stack(frames)
    if negative is not None:
        data[negative[0], 0, 5, 5] = negative[1]
    if spike is not None:
        data[spike[0], 1, 7, 7] = spike[1]
    with h5py.File(path, "w") as h5:
        h5["data"] = data
        h5["date"] = np.array(dates)
    return path


# -- HKO-7 ----------------------------------------------------------------------------------------
def hko_value(time: dt.datetime) -> int:
    """Pixel (0, 0) of the HKO-7 test frame at ``time``: the 6-minute slot of its day (0..239), + 10."""
    return 10 + (time.hour * 60 + time.minute) // 6


def write_hko_frame(root: Path, time: dt.datetime, size: int = 24, mask: np.ndarray | None = None,
                    image: np.ndarray | None = None) -> Path:
    """radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png (8-bit gray) and its radarPNG_mask/....mask (zlib of the
    boolean array's bytes, True = valid)."""
    from PIL import Image

    rel = Path(f"{time:%Y}", f"{time:%m}", f"{time:%d}")
    name = f"RAD{time:%y%m%d%H%M}00"
    if image is None:
        image = np.full((size, size), 100, dtype=np.uint8)
        image[0, 0] = hko_value(time)
    png = root / "radarPNG" / rel / f"{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(png)
    if mask is not None:
        path = root / "radarPNG_mask" / rel / f"{name}.mask"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zlib.compress(np.ascontiguousarray(mask, dtype=bool).tobytes()))
    return png


def write_hko_days(root: Path, name: str, days: list[dt.date]) -> Path:
    path = root / name
    path.write_text("".join(f"{d:%Y%m%d}\n" for d in days))
    return path


def write_hko_global_mask(root: Path, exclude: np.ndarray) -> Path:
    path = root / "mask_dat.npz"
    np.savez(path, exclude_mask=exclude.astype(np.uint8))
    return path


# -- RADOLAN --------------------------------------------------------------------------------------
NODATA, CLUTTER, SECONDARY = 0x2000, 0x8000, 0x1000


def radolan_name(time: dt.datetime, product: str = "ry") -> str:
    return f"raa01-{product}_10000-{time:%y%m%d%H%M}-dwd---bin"


def write_radolan(path: Path, time: dt.datetime, raw: np.ndarray, product: str = "RY") -> Path:
    """A RADOLAN composite: the ASCII header (product, DDhhmm, 10000, MMYY, BY total bytes, VS, SW, PR E-02,
    INT 5, GP rows x cols, MS), the ETX byte 0x03, then the raw uint16 values little-endian, row 0 = the
    southern edge.  ``raw``: uint16 (rows, cols), 12-bit values in 0.01 mm per 5 min plus flag bits."""
    rows, cols = raw.shape
    body = np.ascontiguousarray(raw, dtype="<u2").tobytes()
    tail = f"VS 3SW   2.21.0PR E-02INT   5GP{rows:4d}x{cols:4d}MS 10<boo,ros,emd>"
    head = f"{product}{time:%d%H%M}10000{time:%m%y}"
    size = len(head) + 2 + 7 + len(tail) + 1 + len(body)     # "BY" + 7 digits
    header = f"{head}BY{size:7d}{tail}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode("ascii") + b"\x03" + body)
    return path


# -- a small dataset of each kind, for the config runs (returns the DataModule overrides for the CLI) --------
TAXIBJ_FILES = tuple(f"BJ{y}_M32x32_T30_InOut.h5" for y in (13, 14, 15, 16))


def kth_root(root: Path) -> list[str]:
    """Three running videos of persons 1 (train), 15 (val), 17 (test); returns the CLI overrides."""
    for person in (1, 15, 17):
        write_avi(root / f"person{person:02d}_running_d1_uncomp.avi", range(1, 25))
    return ["--data.size", "16", "--data.cache_dir", str(root / "cache")]


def taxibj_root(root: Path) -> list[str]:
    """One complete day per file."""
    for name, day in zip(TAXIBJ_FILES, (dt.date(2013, 7, 1), dt.date(2014, 3, 1), dt.date(2015, 3, 1), dt.date(2016, 4, 9))):
        write_taxibj(root / name, [day])
    return ["--data.test_windows", "4"]


def hko7_root(root: Path) -> list[str]:
    """22 frames on one day per split, no masks."""
    for k, split in enumerate(("train", "valid", "test")):
        day = dt.date(2009, 6, 1 + k)
        for step in range(22):
            write_hko_frame(root, dt.datetime(day.year, day.month, day.day) + dt.timedelta(minutes=6 * step))
        write_hko_days(root, f"hko7_rainy_{split}_days.txt", [day])
    return ["--data.size", "16", "--data.frame_step", "1"]


def radolan_root(root: Path) -> list[str]:
    """10 composites (20x20) in each of 2014, 2015, 2016: frame k rains 6 k mm/h; 4 no-data cells."""
    for year in (2014, 2015, 2016):
        for k in range(10):
            t = dt.datetime(year, 5, 1) + dt.timedelta(minutes=5 * k)
            raw = np.full((20, 20), 50 * k, np.uint16)     # 0.5 k mm per 5 min = 6 k mm/h
            raw[19, :4] = NODATA                           # masked cells (row 0 north up, in the crop)
            write_radolan(root / radolan_name(t), t, raw)
    return ["--data.crop", "[0, 0, 16, 16]"]


def folder_root(root: Path) -> list[str]:
    """One 20-frame video per split folder."""
    for split in ("train", "val", "test"):
        write_avi(root / split / "a.avi", range(1, 21), size=(16, 16))
    return ["--data.size", "16", "--data.cache_dir", str(root / "cache")]


SMALL_DATASETS = {"kth": kth_root, "taxibj": taxibj_root, "hko7": hko7_root, "radolan": radolan_root,
                  "folder": folder_root}
