"""Your own frames: sequences from .npy / .npz / .h5 files as (T, C, H, W) items: uint8 frames stay uint8
(0..255, divided by 255 on the device by :class:`convrnn.train.PredictionTask`), others become float32.

Each file is checked once, when it is loaded (:func:`check_frames_array`, on a sample of its sequences):
finite values, in [0, 1] after ``scale``, and a time axis that looks like time.  Every error names the
file, what is wrong and the fix."""
from __future__ import annotations

import math
import os

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

LAYOUTS = {"NTCHW": 5, "NTHW": 4, "TNHW": 4}


def require_file(path: str, what: str = "frames file") -> None:
    """A FileNotFoundError (or IsADirectoryError for a folder) naming ``path`` unless it is a file."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not a file: name the .npy / .npz / .h5 file in it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")


def read_array(path, key: str | None = None):
    """The frames array in ``path``: .npy (memory-mapped), .npz or .h5/.hdf5 (``key``, or the only array / "frames")."""
    path = os.fspath(path)
    require_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz", ".h5", ".hdf5"):
        raise ValueError(f"{path}: unsupported file type {ext!r}; use .npy, .npz or .h5")
    try:
        if ext == ".npy":
            return np.load(path, mmap_mode="r")
        if ext == ".npz":
            with np.load(path) as archive:
                return archive[_pick_key(path, list(archive.keys()), key)]
        import h5py
        with h5py.File(path, "r") as h5:
            names = [name for name, item in h5.items() if isinstance(item, h5py.Dataset)]
            return h5[_pick_key(path, names, key)][()]
    except KeyError as e:   # our own message for a missing key
        raise ValueError(e.args[0]) from None
    except Exception as e:  # numpy / zipfile / h5py errors of a truncated or foreign file
        reason = " ".join(str(e).split()).split(". ")[0].rstrip(".") or type(e).__name__   # not numpy's advice
        raise ValueError(f"frames file {path} cannot be read as {ext} ({reason}): it is truncated or not a "
                         f"{ext} array file; write it again (numpy.save / numpy.savez / h5py)") from None


def _pick_key(path: str, keys: list[str], key: str | None) -> str:
    if key is not None:
        if key not in keys:
            raise KeyError(f"{path} has no array {key!r}; it holds {keys}")
        return key
    if len(keys) == 1:
        return keys[0]
    if "frames" in keys:
        return "frames"
    raise KeyError(f"{path} holds several arrays {keys}; name one with key=...")


def _sample(array, layout: str, index: int) -> np.ndarray:
    """Sequence ``index`` of ``array`` as float64 (T, ...)."""
    return np.asarray(array[:, index] if layout == "TNHW" else array[index], dtype=np.float64)


def check_frames_array(array, layout: str, scale: float | None = None, source: str = "frames",
                       budget: int = 64 << 20) -> None:
    """Checks, on about ``budget`` bytes of evenly spaced sequences (every sequence of a small file), that
    the values are finite and lie in [0, 1] after division by ``scale`` (uint8 without ``scale``: 0..255,
    always valid), and that the time axis of ``layout`` is time: consecutive frames of a sequence must not
    differ much more than the same frame of consecutive sequences (a time-major file read as
    sequence-major fails this).  Raises ValueError naming ``source``, the problem and the fix."""
    n, t = (array.shape[1], array.shape[0]) if layout == "TNHW" else array.shape[:2]
    if n == 0 or t == 0:
        raise ValueError(f"{source} holds no frames (shape {tuple(array.shape)})")
    per_sequence = max(1, array.nbytes // max(n, 1))
    count = int(min(n, max(2, budget // per_sequence)))
    picked = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
    divisor = 1.0 if scale is None else float(scale)
    in_range = scale is None and array.dtype == np.uint8
    lo, hi = math.inf, -math.inf
    for i in ([] if in_range else picked):      # uint8 without scale: 0..255, nothing to check
        seq = _sample(array, layout, i) / divisor
        bad = ~np.isfinite(seq)
        if bad.any():
            raise ValueError(f"{source}: sequence {i} holds {int(bad.sum())} NaN or infinite values: clean the file "
                             "(numpy.nan_to_num, or drop those sequences)")
        lo, hi = min(lo, float(seq.min())), max(hi, float(seq.max()))
    of = f"{len(picked)} of {n} sequences" if len(picked) < n else f"all {n} sequences"
    after = "" if scale is None else f" after dividing by scale={scale:g}"
    if not in_range and hi > 1 + 1e-3:
        fix = (f"0..255 pixel values? set scale: 255" if hi <= 255 and lo >= 0 and scale is None else
               f"set scale to the value that maps to 1.0 (at least {hi * divisor:g} here)")
        raise ValueError(f"{source}: values reach {hi:g}{after} ({of} checked), but frames must lie in [0, 1] "
                         f"(the loss and the metrics assume it): {fix}")
    if not in_range and lo < -1e-3:
        raise ValueError(f"{source}: values go down to {lo:g}{after} ({of} checked), but frames must lie in "
                         "[0, 1] (the loss and the metrics assume it): shift and rescale the data, e.g. "
                         "(x - min) / (max - min)")
    _check_time_axis(array, layout, n, t, source)


def _check_time_axis(array, layout: str, n: int, t: int, source: str) -> None:
    if n < 2 or t < 2:
        return
    k, m = min(n, 8), min(t, 8)
    block = np.stack([_sample(array, layout, i)[:m] for i in range(k)])        # (k sequences, m frames, ...)
    d_time = float(np.abs(np.diff(block, axis=1)).mean())
    d_seq = float(np.abs(np.diff(block, axis=0)).mean())
    if d_time > 2 * d_seq and d_time > 0:
        other = {"NTHW": "layout: TNHW", "TNHW": "layout: NTHW"}.get(
            layout, "a sequence-major array (transpose it: numpy.swapaxes(array, 0, 1))")
        raise ValueError(f"{source}: consecutive frames differ {d_time / max(d_seq, 1e-12):.1f}x more than the same "
                         f"frame of consecutive sequences, so layout {layout} reads sequences as time: the file "
                         f"looks time-major the other way round; use {other} (or checks: false if these "
                         "sequences really change that fast)")


class ArrayFrames(Dataset):
    """Sequences of an array of frames as (T, C, H, W) tensors: uint8 (0..255) for a uint8 array and no
    ``scale``, else float32 divided by ``scale``.

    Args:
        array: frames, laid out as ``layout``: "NTCHW", "NTHW" (grayscale) or "TNHW" (time-major,
            like mnist_test_seq.npy). May be a memory map; items are read lazily.
        seq_len: None = whole sequences; an int = windows of ``seq_len`` frames: non-overlapping ones
            (``windows=True``, so one long recording gives many samples) or only the first.
        scale: values are divided by it (float32 items); None = uint8 kept as uint8 (it means 0..255 ->
            [0, 1], a quarter of the bytes to load and copy), floats kept as they are.
        source: the file name, for error messages.
        checks: run :func:`check_frames_array` (values finite and in [0, 1], a plausible time axis).
    """

    def __init__(self, array, layout: str = "NTCHW", seq_len: int | None = None, scale: float | None = None,
                 windows: bool = True, source: str = "frames", checks: bool = True):
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale) or scale <= 0):
            raise ValueError(f"{source}: scale={scale!r}; give a positive number, the value that maps to 1.0 "
                             "(255 for 8-bit pixels), or leave it unset for uint8 or [0, 1] float files")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if array.ndim != LAYOUTS[layout]:
            raise ValueError(f"{source}: layout {layout} needs a {LAYOUTS[layout]}-d array, got shape "
                             f"{tuple(array.shape)}; set layout= to match your file (NTCHW, NTHW or TNHW)")
        if scale is None and array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{source}: frames of dtype {array.dtype}: give scale= (the value that maps to 1.0)")
        self.keep_uint8 = scale is None and array.dtype == np.uint8
        self.array, self.layout, self.scale = array, layout, 1.0 if scale is None else float(scale)
        n, t = (array.shape[1], array.shape[0]) if layout == "TNHW" else array.shape[:2]
        self.seq_len = t if seq_len is None else seq_len
        if not 1 <= self.seq_len <= t:
            raise ValueError(f"seq_len={seq_len} but the sequences hold {t} frames; use 1 <= seq_len <= {t}")
        self.per_sequence = t // self.seq_len if windows else 1
        self.num_sequences = n
        if checks:
            check_frames_array(array, layout, scale, source)

    def __len__(self) -> int:
        return self.num_sequences * self.per_sequence

    def __getitem__(self, index: int) -> Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sequences")
        n, w = divmod(index % len(self), self.per_sequence)
        time = slice(w * self.seq_len, (w + 1) * self.seq_len)
        if self.layout == "TNHW":
            frames = np.asarray(self.array[time, n])[:, None]
        else:
            frames = np.asarray(self.array[n, time])
            frames = frames[:, None] if self.layout == "NTHW" else frames
        if self.keep_uint8:
            return torch.from_numpy(np.array(frames, dtype=np.uint8))
        frames = torch.from_numpy(np.array(frames, dtype=np.float32))
        return frames if self.scale == 1.0 else frames.div_(self.scale)


class FramesDataModule(L.LightningDataModule):
    """Your own frame sequences for Lightning; batches are (B, T, C, H, W): uint8 files give uint8
    batches (unless ``scale`` is set), which :class:`convrnn.train.PredictionTask` divides by 255 on the
    device; float files give float32.

    Args:
        train, val, test: paths of .npy / .npz / .h5 files (val and test optional; predict uses test).
        batch_size, num_workers: DataLoader settings (train is shuffled).
        seq_len: None = whole sequences; an int = non-overlapping windows of that many frames.
        layout: "NTCHW", "NTHW" (grayscale) or "TNHW" (time-major).
        scale: divide values by it (float32 batches); None = uint8 kept (means / 255), floats kept.
        key: the array inside .npz / .h5 files (default: the only one, or "frames").
        checks: check each file once when it is loaded (:func:`check_frames_array`: finite values in
            [0, 1] after ``scale``, a plausible time axis); False skips that.
    """

    def __init__(self, train: str, val: str | None = None, test: str | None = None, batch_size: int = 16,
                 num_workers: int = 0, seq_len: int | None = None, layout: str = "NTCHW",
                 scale: float | None = None, key: str | None = None, checks: bool = True):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        for split, path in (("train", train), ("val", val), ("test", test)):
            if path is not None:
                require_file(path, f"{split} frames file")
        self.save_hyperparameters()
        self.datasets: dict[str, ArrayFrames] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for split in ("train", "val", "test"):
            path = getattr(hp, split)
            if path is not None and split not in self.datasets:
                self.datasets[split] = ArrayFrames(read_array(path, hp.key), hp.layout, hp.seq_len, hp.scale,
                                                   source=path, checks=hp.checks)

    def _loader(self, split: str, shuffle: bool = False):
        if split not in self.datasets:
            return []  # Lightning skips a stage whose loader is empty
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("test")
