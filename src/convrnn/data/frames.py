"""Your own frames: sequences from .npy / .npz / .h5 files as (T, C, H, W) items: uint8 frames stay uint8
(0..255, divided by 255 on the device by :class:`convrnn.train.PredictionTask`), others become float32."""
from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

LAYOUTS = {"NTCHW": 5, "NTHW": 4, "TNHW": 4}


def read_array(path, key: str | None = None):
    """The frames array in ``path``: .npy (memory-mapped), .npz or .h5/.hdf5 (``key``, or the only array / "frames")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frames file {path} not found")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return np.load(path, mmap_mode="r")
    if ext == ".npz":
        with np.load(path) as archive:
            return archive[_pick_key(path, list(archive.keys()), key)]
    if ext in (".h5", ".hdf5"):
        import h5py
        with h5py.File(path, "r") as h5:
            names = [name for name, item in h5.items() if isinstance(item, h5py.Dataset)]
            return h5[_pick_key(path, names, key)][()]
    raise ValueError(f"{path}: unsupported file type {ext!r}; use .npy, .npz or .h5")


def _pick_key(path: str, keys: list[str], key: str | None) -> str:
    if key is not None:
        if key not in keys:
            raise ValueError(f"{path} has no array {key!r}; it holds {keys}")
        return key
    if len(keys) == 1:
        return keys[0]
    if "frames" in keys:
        return "frames"
    raise ValueError(f"{path} holds several arrays {keys}; name one with key=...")


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
    """

    def __init__(self, array, layout: str = "NTCHW", seq_len: int | None = None, scale: float | None = None,
                 windows: bool = True):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if array.ndim != LAYOUTS[layout]:
            raise ValueError(f"layout {layout} needs a {LAYOUTS[layout]}-d array, got shape {tuple(array.shape)}; "
                             "set layout= to match your file (NTCHW, NTHW or TNHW)")
        if scale is None and array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"frames of dtype {array.dtype}: give scale= (the value that maps to 1.0)")
        self.keep_uint8 = scale is None and array.dtype == np.uint8
        self.array, self.layout, self.scale = array, layout, 1.0 if scale is None else float(scale)
        n, t = (array.shape[1], array.shape[0]) if layout == "TNHW" else array.shape[:2]
        self.seq_len = t if seq_len is None else seq_len
        if not 1 <= self.seq_len <= t:
            raise ValueError(f"seq_len={seq_len} but the sequences hold {t} frames; use 1 <= seq_len <= {t}")
        self.per_sequence = t // self.seq_len if windows else 1
        self.num_sequences = n

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
    """

    def __init__(self, train: str, val: str | None = None, test: str | None = None, batch_size: int = 16,
                 num_workers: int = 0, seq_len: int | None = None, layout: str = "NTCHW",
                 scale: float | None = None, key: str | None = None):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        for path in (train, val, test):
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"frames file {path} not found")
        self.save_hyperparameters()
        self.datasets: dict[str, ArrayFrames] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for split in ("train", "val", "test"):
            path = getattr(hp, split)
            if path is not None and split not in self.datasets:
                self.datasets[split] = ArrayFrames(read_array(path, hp.key), hp.layout, hp.seq_len, hp.scale)

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
