"""Run directories and checkpoint look-up: every command writes to a new
``<run_dir>/<config stem>/<YYYYmmdd-HHMMSS>-<command>`` and never reuses one; ``--ckpt_path last|best``
finds the newest checkpoint of a config's runs."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

RUN_DIR_ENV = "CONVRNN_RUN_DIR"   # set by the launching process so DDP workers share its run directory


def new_run_dir(root: str | Path, stem: str, command: str) -> Path:
    """Create and return a fresh ``root/stem/<YYYYmmdd-HHMMSS>-<command>[-k]``; never reuses one.

    If the environment variable ``CONVRNN_RUN_DIR`` is set (the CLI sets it for the DDP worker
    processes it launches; set it yourself under torchrun/SLURM), that directory is used."""
    fixed = os.environ.get(RUN_DIR_ENV)
    if fixed:
        Path(fixed).mkdir(parents=True, exist_ok=True)
        return Path(fixed)
    parent = Path(root) / stem
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{command}"
    for k in range(1000):
        path = parent / (base if k == 0 else f"{base}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {parent}")


def find_checkpoint(root: str | Path, stem: str, which: str) -> Path:
    """``last`` -> the newest ``last.ckpt``, ``best`` -> the newest ``best-*.ckpt`` among the runs
    of one config (``root/stem/*/checkpoints``)."""
    pattern = "last.ckpt" if which == "last" else "best-*.ckpt"
    found = sorted(Path(root, stem).glob(f"*/checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--ckpt_path {which}: no {pattern} under {Path(root, stem)}/*/checkpoints; train "
                                f"first with `convrnn fit --config ...` (same --run_dir) or pass a checkpoint path")
    return found[-1]


def existing_best(path: str | None) -> str | None:
    """The best checkpoint to test after fit: ``path`` if it exists.  A resumed fit that has not
    validated yet inherits the best path of the run it resumed; if that run was killed after its
    ``ModelCheckpoint`` replaced that file by a better one, the newest ``best-*.ckpt`` beside it is that
    better one.  None (test the current weights) when there is no best checkpoint at all."""
    if path is None or "://" in path or os.path.isfile(path):
        return path
    found = sorted(Path(path).parent.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    replacement = str(found[-1]) if found else None
    warnings.warn(f"the best checkpoint {path} recorded in the resumed checkpoint no longer exists; "
                  f"testing {replacement or 'the final weights'} instead")
    return replacement
