"""Your own data: one folder of frames (PNG, JPEG, ...) or one video file (any container FFmpeg reads) per
sequence, as windows of uint8 frames.

Layouts:

- ``root/train/``, ``root/val/``, ``root/test/`` holding sequences: the split is by folder (val and test are
  optional);
- sequences directly in ``root``: the split is by ``split`` ratios over the sequences in name order (train
  the first ones, then val, then test), so a sequence is never divided between splits.

A sequence is a folder of images (frames in natural name order: ``2.png`` before ``10.png``) or a video
file (decoded once with PyAV into a .npy cache).  Windows are ``in_len + out_len`` consecutive frames of one
sequence, ``stride`` apart (default: non-overlapping).  Frames are grayscale (``channels=1``) or RGB (3),
resized bilinearly to ``size`` when given (else every frame must have one size).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .windows import (
    SPLITS,
    Protocol,
    WindowDataModule,
    Windows,
    as_size,
    build_caches,
    cache_path,
    resize_frames,
    window_index,
)

IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEOS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".gif",
          ".3gp", ".ts", ".mxf")
PROTOCOLS = {"default": Protocol("default", "your own data: windows of consecutive frames of one sequence",
                                 {"in_len": 10, "out_len": 10, "size": None, "channels": 1, "stride": None,
                                  "split": (0.8, 0.1, 0.1)})}


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: frame2 < frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def find_sequences(folder: Path) -> list[Path]:
    """Image folders and video files directly in ``folder``, in natural name order."""
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and any(p.suffix.lower() in IMAGES for p in entry.iterdir()):
            found.append(entry)
        elif entry.is_file() and entry.suffix.lower() in VIDEOS:
            found.append(entry)
    return sorted(found, key=lambda p: natural_key(p.name))


def image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGES and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def read_image(path: Path, channels: int) -> np.ndarray:
    """uint8 (H, W) for channels=1 (Pillow's "L"), (H, W, 3) for 3 ("RGB")."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L" if channels == 1 else "RGB"))


def decode_video(path: Path, channels: int) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W) gray or (T, H, W, 3) RGB (FFmpeg's conversion, via PyAV)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        fmt = "gray" if channels == 1 else "rgb24"
        frames = [frame.to_ndarray(format=fmt) for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no decodable frame")
    return np.stack(frames)


class FolderFrames:
    """Windows of a list of sequences: images read per window, videos from their cached arrays; uint8
    frames (T, C, H, W)."""

    def __init__(self, sequences: list, channels: int, size):
        self.sequences, self.channels, self.size = sequences, channels, size   # list of paths or arrays

    def window(self, segment: int, start: int, length: int) -> np.ndarray:
        seq = self.sequences[segment]
        if isinstance(seq, list):
            frames = np.stack([read_image(p, self.channels) for p in seq[start:start + length]])
        else:
            frames = np.asarray(seq[start:start + length])
        frames = frames[:, None] if frames.ndim == 3 else frames.transpose(0, 3, 1, 2)
        return resize_frames(frames, self.size)


class FolderDataModule(WindowDataModule):
    """Your own sequences: folders of frames or video files, as uint8 batches (B, T, C, H, W).

    Args:
        root: ``train/`` (and ``val/``, ``test/``) folders of sequences, or the sequences themselves.
        in_len, out_len: frames in and out (default 10 and 10); stride between windows (default the window
            length: non-overlapping); size (h, w) or an int to resize to; channels 1 (gray) or 3 (RGB).
        split: (train, val, test) ratios when ``root`` holds the sequences directly (default 0.8, 0.1, 0.1).
        cache_dir: where decoded videos are cached (default ``$CONVRNN_DATA/cache`` or ``~/.cache/convrnn/cache``).
    """

    NAME = "folder"
    PROTOCOLS = PROTOCOLS
    LAYOUT = """
        train/<sequence>/0001.png ...   val/<sequence>/...   test/<sequence>/...   (split by folder)
      or <sequence>/0001.png ...  <video>.mp4 ...   (split by ratio, in name order)
        a sequence: a folder of images (.png .jpg ...) or one video file (.mp4 .avi .mov .mkv ...)
    """
    GET = "your own recordings: one folder of frames, or one video file, per sequence"

    def __init__(self, root: str, protocol: str = "default", batch_size: int = 16, num_workers: int = 0,
                 in_len: int | None = None, out_len: int | None = None, size: int | tuple[int, int] | None = None,
                 channels: int | None = None, stride: int | None = None,
                 split: tuple[float, float, float] | None = None, cache_dir: str | None = None):
        super().__init__(root, protocol, batch_size, num_workers, in_len=in_len, out_len=out_len, size=size,
                         channels=channels, stride=stride, split=split)
        self.save_hyperparameters()
        if self.settings["channels"] not in (1, 3):
            raise ValueError(f"channels={self.settings['channels']}; use 1 (grayscale) or 3 (RGB)")
        ratios = self.settings["split"]
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(f"split={list(ratios)}: give three ratios (train, val, test) >= 0 that sum to 1")
        self.cache_dir = cache_dir

    def _sequences(self) -> dict[str, list[Path]]:
        if (self.root / "train").is_dir():
            out = {split: find_sequences(self.root / split) if (self.root / split).is_dir() else []
                   for split in SPLITS}
            if not out["train"]:
                raise self.not_found("train/ holds no sequence (a folder of images or a video file)")
            return out
        found = find_sequences(self.root)
        if not found:
            raise self.not_found("no sequences: neither train/ val/ test/ folders nor folders of images or "
                                 "video files")
        n = len(found)
        n_val, n_test = (round(r * n) for r in self.settings["split"][1:])
        n_train = n - n_val - n_test
        if n_train < 1:
            raise self.bad_format(f"{n} sequences leave none for training with split={list(self.settings['split'])}")
        return {"train": found[:n_train], "val": found[n_train:n_train + n_val], "test": found[n_train + n_val:]}

    def build(self, splits: tuple[str, ...]) -> dict:
        sequences = self._sequences()
        channels, size = self.settings["channels"], as_size(self.settings["size"])
        out = {}
        for split in splits:
            items = self._load([p for p in sequences[split]], channels)
            lengths = [len(item) for item in items]
            if size is None:
                self._check_sizes(sequences[split], items, channels)
            index = window_index(lengths, self.seq_len, self.settings["stride"] or self.seq_len)
            out[split] = Windows(FolderFrames(items, channels, size), index, self.seq_len)
        return out

    def _load(self, paths: list[Path], channels: int) -> list:
        """Image folders -> their sorted file lists; videos -> cached arrays (decoded once)."""
        videos = [p for p in paths if p.is_file()]

        def job(path: Path):
            def build():
                try:
                    return decode_video(path, channels)
                except Exception as err:   # PyAV raises its own FFmpeg errors
                    raise self.bad_format(f"cannot decode {path}: {err}") from err
            return cache_path(self.cache_dir, "folder", path, channels), build

        decoded = dict(zip(videos, build_caches([job(p) for p in videos], "decoding videos once")))
        return [decoded[p] if p in decoded else image_files(p) for p in paths]

    def _check_sizes(self, paths: list[Path], items: list, channels: int) -> None:
        """Without ``size`` every sequence must have one frame size (the first frame of each is checked)."""
        from PIL import Image

        seen = {}
        for path, item in zip(paths, items):
            if isinstance(item, list):
                with Image.open(item[0]) as img:
                    hw = (img.height, img.width)
            else:
                hw = tuple(item.shape[1:3])
            seen.setdefault(hw, path)
        if len(seen) > 1:
            (a, pa), (b, pb) = list(seen.items())[:2]
            raise self.bad_format(f"frames of different sizes ({pa.name}: {a[0]}x{a[1]}, {pb.name}: {b[0]}x{b[1]}); "
                                  "give size=[h, w] to resize them all")
