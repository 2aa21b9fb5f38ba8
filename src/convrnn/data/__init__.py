"""Datasets: Moving MNIST (generated on the fly from real MNIST digits, or the standard test file) and your
own frames, as LightningDataModules whose batches are tensors (B, T, C, H, W): uint8 (0..255) for 8-bit data,
which :class:`convrnn.train.PredictionTask` divides by 255 on the device, else float32 in [0, 1]."""
from .frames import ArrayFrames, FramesDataModule, read_array
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
    "FramesDataModule",
    "Motion",
    "MovingMNIST",
    "MovingMNISTDataModule",
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
