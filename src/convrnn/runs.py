"""Run folders and checkpoint look-up: every command writes to a new
``<run_dir>/<config key>/<YYYYmmdd-HHMMSS>-<command>`` and never reuses one, where the config key is
unique per config path (:func:`run_key`); ``--ckpt_path last|best`` finds the newest checkpoint of a
config's runs that the caller accepts (the CLI accepts only checkpoints of the config's network)."""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

RUN_DIR_ENV = "CONVRNN_RUN_DIR"   # set by the launching process so DDP workers share its run directory


def run_key(config: str | os.PathLike | None) -> str:
    """The folder of a config's runs under ``--run_dir``: the config's path relative to the working
    directory without its suffix and without a leading ``configs/`` (``configs/openstl/predrnn.yaml``
    -> ``openstl/predrnn``, ``configs/msrnn/predrnn.yaml`` -> ``msrnn/predrnn``), so that two configs
    never share runs; for a config outside the working directory ``<stem>-<8 hex digits of its
    absolute path>``; ``run`` without a config."""
    if config is None:
        return "run"
    path = Path(os.path.abspath(config))
    try:
        parts = path.with_suffix("").relative_to(os.path.abspath(os.getcwd())).parts
    except ValueError:
        return f"{path.stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if len(parts) > 1 and parts[0] == "configs":
        parts = parts[1:]
    return "/".join(parts)


def new_run_dir(root: str | Path, key: str, command: str) -> Path:
    """Create and return a fresh ``root/key/<YYYYmmdd-HHMMSS>-<command>[-k]``; never reuses one.

    If the environment variable ``CONVRNN_RUN_DIR`` is set (the CLI sets it for the DDP worker
    processes it launches; set it yourself under torchrun/SLURM), that directory is used."""
    fixed = os.environ.get(RUN_DIR_ENV)
    parent = Path(root) / key
    try:
        if fixed:
            Path(fixed).mkdir(parents=True, exist_ok=True)
            return Path(fixed)
        parent.mkdir(parents=True, exist_ok=True)
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{command}"
        for k in range(1000):
            path = parent / (base if k == 0 else f"{base}-{k}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        where = fixed or parent
        raise OSError(f"cannot create the run folder under {where}: {e.strerror or e}; pass --run_dir a "
                      f"writable folder{' (or unset ' + RUN_DIR_ENV + ')' if fixed else ''}") from e
    raise RuntimeError(f"could not create a new run directory under {parent}")


def find_checkpoint(root: str | Path, key: str, which: str,
                    refuse: Callable[[Path], str | None] | None = None) -> tuple[Path, list[str]]:
    """``last`` -> the newest ``last.ckpt``, ``best`` -> the newest ``best-*.ckpt`` among the runs
    of one config (``root/key/*/checkpoints``) that ``refuse`` does not refuse (it returns the reason,
    or None to accept).  Returns the checkpoint and the newer ones passed over, with their reasons."""
    pattern = "last.ckpt" if which == "last" else "best-*.ckpt"
    folder = Path(root, key)
    found = sorted(folder.glob(f"*/checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise FileNotFoundError(f"--ckpt_path {which}: no {pattern} under {folder}/*/checkpoints; train first "
                                "with `convrnn fit --config ...` (same --config path and --run_dir) or pass a "
                                "checkpoint path")
    skipped = []
    for path in found:
        reason = refuse(path) if refuse is not None else None
        if reason is None:
            return path, skipped
        skipped.append(f"{path} ({reason})")
    raise FileNotFoundError(f"--ckpt_path {which}: none of the {len(found)} {pattern} under {folder} fits this "
                            f"config: {'; '.join(skipped)}")


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
