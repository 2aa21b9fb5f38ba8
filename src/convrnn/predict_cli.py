"""``convrnn predict --ckpt_path CKPT --input FILE_OR_FOLDER``: forecast your own frames with a trained
network, no training config needed (the config-based ``convrnn predict --config ...`` is Lightning's).

Inputs (every sequence's frames must have the network's size and channels):

- ``.npy`` / ``.npz`` / ``.h5``: an array of sequences, laid out as ``--layout`` says (default: from the
  rank: 5-d NTCHW, 3-d THW, 4-d TCHW when axis 1 matches the network's channels, else NTHW);
- a folder of images (``.png``, ``.jpg`` ...): one sequence, frames in natural name order;
- a video (``.mp4``, ``.avi``, ``.gif`` ...; PyAV: ``pip install av``): one sequence;
- a folder of such files or of image folders: one sequence each.

uint8 frames are 0..255, float frames [0, 1]; colour frames become grey for a 1-channel network (images
and videos are read as :mod:`convrnn.data.folder` reads them for training: Pillow's "L" and FFmpeg's gray).
Written to ``--output`` (default ``runs/<input name>/<time>-predict``): ``predictions.npy`` (N, out_len,
C, H, W) float32 in [0, 1], ``sequences.txt`` (the name of each sequence), and ``example_<i>.gif`` /
``.png`` (input | truth | prediction) for the first ``--examples`` sequences.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data.folder import IMAGES, VIDEOS, decode_video, image_files, natural_key, read_image

ARRAYS = (".npy", ".npz", ".h5", ".hdf5")
LAYOUTS = ("NTCHW", "NTHW", "TNHW", "TCHW", "THW")


# -- reading (images and videos as convrnn.data.folder reads them for training) -----------------
def read_images(folder: Path, channels: int) -> np.ndarray:
    """The image files of a folder, in natural name order (2.png before 10.png), as (T, C, H, W) uint8."""
    files = image_files(folder)
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGES)})")
    frames = [read_image(f, channels) for f in files]
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"{folder}: images of different sizes {sorted({f.shape[:2] for f in frames})}; every "
                         "frame of a sequence must have one size")
    return _tchw(np.stack(frames))


def read_video(path: Path, channels: int) -> np.ndarray:
    """Every frame of a video (PyAV: pip install av) as (T, C, H, W) uint8."""
    try:
        return _tchw(decode_video(path, channels))
    except ImportError as e:
        raise ValueError(f"{path}: reading video needs PyAV: pip install av ({e})") from None


def _tchw(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) grey or (T, H, W, 3) RGB -> (T, C, H, W)."""
    return frames[:, None] if frames.ndim == 3 else frames.transpose(0, 3, 1, 2)


def _check_channels(channels: int, name: Path) -> None:
    if channels not in (1, 3):
        raise ValueError(f"{name}: images and videos give 1- or 3-channel frames, the network takes {channels}; "
                         "save the frames as a .npy array (T, C, H, W) instead")


def _layout(array, layout: str | None, channels: int) -> str:
    if layout is None:
        if array.ndim == 5:
            return "NTCHW"
        if array.ndim == 3:
            return "THW"
        if array.ndim == 4:
            return "TCHW" if array.shape[1] == channels else "NTHW"
        raise ValueError(f"an array of shape {tuple(array.shape)}: expected 3 to 5 axes (THW, TCHW, NTHW, NTCHW)")
    if array.ndim != len(layout):
        raise ValueError(f"--layout {layout} needs a {len(layout)}-d array, got shape {tuple(array.shape)}")
    return layout


def read_arrays(path: Path, channels: int, layout: str | None = None, key: str | None = None
                ) -> Iterator[tuple[str, np.ndarray]]:
    """Sequences of an array file as (name, (T, C, H, W)) pairs; .npy files are memory-mapped."""
    from .data.frames import read_array
    array = read_array(path, key)
    layout = _layout(array, layout, channels)
    if layout in ("THW", "TCHW"):
        seq = np.asarray(array)
        yield path.stem, seq[:, None] if layout == "THW" else seq
        return
    n = array.shape[1] if layout == "TNHW" else array.shape[0]
    for i in range(n):
        seq = np.asarray(array[:, i] if layout == "TNHW" else array[i])
        yield f"{path.stem}[{i}]", seq[:, None] if layout in ("NTHW", "TNHW") else seq


def read_input(path: Path, channels: int, layout: str | None = None, key: str | None = None
               ) -> Iterator[tuple[str, np.ndarray]]:
    """Every sequence under ``path`` (see the module docstring) as (name, (T, C, H, W))."""
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in VIDEOS:
        _check_channels(channels, path)
    if path.is_file():
        if suffix in ARRAYS:
            yield from read_arrays(path, channels, layout, key)
        elif suffix in VIDEOS:
            yield path.stem, read_video(path, channels)
        else:
            raise ValueError(f"--input {path}: unsupported file type {suffix!r}; use {', '.join(ARRAYS + VIDEOS)}, "
                             "or a folder of images")
        return
    entries = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    if any(p.suffix.lower() in IMAGES for p in entries):
        yield path.name, read_images(path, channels)
        return
    found = False
    for p in entries:
        if p.is_dir() and any(q.suffix.lower() in IMAGES for q in p.iterdir()):
            found = True
            yield p.name, read_images(p, channels)
        elif p.is_file() and p.suffix.lower() in ARRAYS + VIDEOS:
            found = True
            yield from read_input(p, channels, layout, key)
    if not found:
        raise ValueError(f"--input {path}: found no images, image folders, arrays ({', '.join(ARRAYS)}) or videos")


# -- the command ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convrnn predict",
        description="Forecast your own frames with a trained network (no training config). "
                    "With --config instead, `convrnn predict` is the Lightning command on a config's data.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", metavar="CKPT",
                   help="a .ckpt written by `convrnn fit`, a directory of Forecaster.save_pretrained, or a shipped name")
    p.add_argument("--input", required=True, type=Path, metavar="FILE_OR_FOLDER", help="the frames (see below)")
    p.add_argument("--out_len", type=int, metavar="N", help="frames to forecast (default: the trained out_len)")
    p.add_argument("--in_len", type=int, metavar="N",
                   help="observe only the first N frames of each sequence; the next ones are shown as truth in the "
                        "GIFs (default: observe every frame)")
    p.add_argument("--output", type=Path, metavar="DIR", help="where to write (default runs/<input>/<time>-predict)")
    p.add_argument("--layout", choices=LAYOUTS, help="axes of an array input (default: from its rank)")
    p.add_argument("--key", help="the array inside a .npz / .h5 file (default: the only one, or 'frames')")
    p.add_argument("--batch_size", type=int, default=16, metavar="N", help="sequences per forward pass (default 16)")
    p.add_argument("--examples", type=int, default=16, metavar="N",
                   help="write a GIF and a PNG strip for the first N sequences (default 16; -1 = every one)")
    return p


def _output_dir(a) -> Path:
    """A new run directory, or ``--output`` (created) unless it already holds predictions."""
    from .runs import new_run_dir
    if a.output is None:
        return new_run_dir("runs", a.input.stem or "input", "predict")
    a.output.mkdir(parents=True, exist_ok=True)
    return a.output


def main(argv: list[str]) -> int:
    """``convrnn predict --ckpt_path CKPT --input FILE_OR_FOLDER [--out_len N] [--output DIR]``."""
    p = _parser()
    a = p.parse_args(argv)
    if a.ckpt_path is None:
        p.error("--ckpt_path is required: a trained network (a .ckpt of `convrnn fit` or a save_pretrained "
                "directory); predict never runs random weights")
    for flag in ("out_len", "in_len", "batch_size"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(a, flag)}")
    if a.output is not None and (a.output / "predictions.npy").exists():
        p.error(f"{a.output} already holds predictions.npy; choose another --output (nothing was overwritten)")
    try:
        return _predict(a)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        p.error(str(e))
    return 2


def _predict(a) -> int:
    from .forecaster import load_forecaster
    from .outputs import write_examples
    fc = load_forecaster(a.ckpt_path)
    out_len = a.out_len or fc.out_len
    c, size = fc.frame_channels, fc.frame_size
    names, predictions, shown = [], [], 0
    examples = float("inf") if a.examples < 0 else a.examples
    out: Path | None = None
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        nonlocal out, shown
        if not batch:
            return
        if out is None:
            out = _output_dir(a)
        observed = np.stack([f[:a.in_len] if a.in_len else f for _, f in batch])
        pred = fc.predict(observed, out_len)
        pred = pred.astype(np.float32) / 255 if pred.dtype == np.uint8 else pred.astype(np.float32)
        names.extend(name for name, _ in batch)
        predictions.append(pred)
        if shown < examples:
            count = int(min(examples - shown, len(batch)))
            inputs = _unit(observed[:count])
            truth = _truth(batch[:count], a.in_len, out_len)
            write_examples(out, inputs, truth, pred[:count], count, first=shown)
            shown += count
        batch.clear()

    for name, frames in read_input(a.input, c, a.layout, a.key):
        _check_sequence(name, frames, c, size, a.in_len)
        if batch and batch[0][1].shape[0] != frames.shape[0]:
            flush()
        batch.append((name, frames))
        if len(batch) == a.batch_size:
            flush()
    flush()
    if out is None:
        raise ValueError(f"--input {a.input}: no sequences found")
    result = np.concatenate(predictions)
    np.save(out / "predictions.npy", result)
    (out / "sequences.txt").write_text("".join(f"{n}\n" for n in names))
    print(f"convrnn predict: {len(names)} sequence(s), {out_len} frames each -> {out / 'predictions.npy'} "
          f"{tuple(result.shape)} float32 in [0, 1]; names in {out / 'sequences.txt'}")
    if shown:
        print(f"  GIF + PNG strip (input | truth | prediction) for {shown} sequence(s): "
              f"{out / 'example_000.gif'} ...")
    return 0


def _check_sequence(name: str, frames: np.ndarray, channels: int, size: tuple[int, int], in_len: int | None) -> None:
    if frames.ndim != 4 or frames.shape[1] != channels or tuple(frames.shape[2:]) != tuple(size):
        raise ValueError(f"{name}: frames of shape {tuple(frames.shape)} (T, C, H, W), but the network takes "
                         f"{channels}x{size[0]}x{size[1]} frames; resize or crop them to {size[0]}x{size[1]}"
                         + (" (or set --layout)" if frames.ndim == 4 else ""))
    if in_len is not None and frames.shape[0] < in_len:
        raise ValueError(f"{name}: {frames.shape[0]} frames, fewer than --in_len {in_len}")


def _unit(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 255 if frames.dtype == np.uint8 else frames.astype(np.float32)


def _truth(batch: list, in_len: int | None, out_len: int) -> np.ndarray | None:
    """The frames after the observed ones, when every sequence of the batch has out_len of them."""
    if in_len is None or any(f.shape[0] < in_len + out_len for _, f in batch):
        return None
    return _unit(np.stack([f[in_len:in_len + out_len] for _, f in batch]))


def command(argv: list[str]) -> int:
    """``convrnn predict``: with ``--input`` (or ``--ckpt_path`` and no ``--config``) this module's
    config-free forecast; otherwise the Lightning command on a config's data."""
    config = any(x in ("--config", "-c") or x.startswith("--config=") for x in argv)
    if any(x == "--input" or x.startswith("--input=") for x in argv) or (
            not config and any(x == "--ckpt_path" or x.startswith("--ckpt_path=") for x in argv)):
        return main(argv)
    from .lightning_cli import cli_main
    return cli_main(["predict", *argv])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
