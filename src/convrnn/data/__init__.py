"""Datasets: Moving MNIST (generated on the fly from real MNIST digits, or the standard test file), the real
datasets of the seeds (KTH, TaxiBJ, HKO-7, German radar RADOLAN), your own frame folders or videos, and
arrays, as LightningDataModules whose batches are tensors (B, T, C, H, W): uint8 (0..255) for 8-bit data,
which :class:`convrnn.train.PredictionTask` divides by 255 on the device, else float32 in [0, 1]; radar
batches are dicts ``{"frames", "mask"}``.  ``convrnn data NAME --root DIR`` checks a dataset folder."""
from .folder import FolderDataModule
from .frames import ArrayFrames, FramesDataModule, read_array
from .hko7 import HKO7DataModule
from .kth import KTHDataModule
from .radolan import RadolanDataModule
from .taxibj import TaxiBJDataModule
from .windows import DatasetFormatError, DatasetNotFoundError, Protocol, WindowDataModule, Windows
from .mnist import default_mnist_dir, download_mnist, load_mnist_digits
from .moving_mnist import (
    MOVING_MNIST_URL,
    DeviceMovingMNIST,
    Motion,
    MovingMNIST,
    MovingMNISTDataModule,
    bounce_trajectory,
    generate_moving_mnist,
    load_moving_mnist_npy,
    render,
    sample_motion,
)

__all__ = [
    "MOVING_MNIST_URL",
    "ArrayFrames",
    "DeviceMovingMNIST",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FolderDataModule",
    "FramesDataModule",
    "HKO7DataModule",
    "KTHDataModule",
    "Motion",
    "MovingMNIST",
    "MovingMNISTDataModule",
    "Protocol",
    "RadolanDataModule",
    "TaxiBJDataModule",
    "WindowDataModule",
    "Windows",
    "bounce_trajectory",
    "default_mnist_dir",
    "download_mnist",
    "generate_moving_mnist",
    "load_mnist_digits",
    "load_moving_mnist_npy",
    "read_array",
    "render",
    "sample_motion",
]
