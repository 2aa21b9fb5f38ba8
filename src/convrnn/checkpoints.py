"""Checkpoints that survive a kill: atomic writes and an always-current ``last.ckpt``; reading a
checkpoint's saved hyperparameters with a clear error for a missing, truncated or foreign file."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that cannot be read: truncated, damaged, or not a checkpoint."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (the cause and any file left behind are named)."""


def _reason(error: BaseException) -> str:
    """The useful part of a load error: torch's "WeightsUnpickler error: ..." line, else its first line,
    without torch's advice to load with ``weights_only=False`` (unsafe for a file of unknown origin)."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    line = found.group(1) if found else next((ln for ln in text.splitlines() if ln.strip()), type(error).__name__)
    line = re.sub(r"[^.]*weights_only[^.]*\.?", "", line).split(". ")[0].strip(" .")
    return line if len(re.findall(r"[A-Za-z]", line)) >= 8 else f"{type(error).__name__} {line}".strip()


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents, loaded safely (``weights_only=True``; tensors memory-mapped, not read),
    or a clear error naming the file: missing, a folder, truncated, damaged or not a checkpoint."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt")) or sorted(p.name for p in path.glob("*/*.ckpt"))
        hint = f" (it holds {', '.join(inside[:4])})" if inside else ""
        raise UnreadableCheckpointError(f"checkpoint {path} is a folder, not a file{hint}: pass the .ckpt file "
                                        "itself, or --ckpt_path last|best")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass an existing .ckpt file, or --ckpt_path "
                                "last|best for the newest of this config's runs")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:   # the old (non-zip) format cannot be memory-mapped; a bad file fails again below
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        raise UnreadableCheckpointError(
            f"checkpoint {path} cannot be read ({_reason(e)}): it is truncated, damaged or not a plain "
            "convrnn/Lightning checkpoint; use another one (--ckpt_path best, or an earlier run's last.ckpt)"
        ) from None


def checkpoint_hparams(path: str | os.PathLike) -> dict[str, Any]:
    """The hyperparameters saved in a checkpoint (``PredictionTask``'s arguments; {} if none)."""
    return dict(read_checkpoint(path).get("hyper_parameters") or {})


def _discard(path: Path) -> bool:
    """Remove ``path`` if it exists; True if it is gone (never raises)."""
    try:
        path.unlink(missing_ok=True)
        return True
    except OSError:
        return False


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file in its own directory, flushes it to disk and
    renames it over the target (``os.replace``), so a kill at any moment leaves either the previous
    checkpoint or the new one under that name, never a truncated file.  (Lightning's default writes
    into a temporary file under the system temp directory and *moves* it, which is a copy when that
    is another file system.)  Remote paths (``s3://``...) go to Lightning's implementation."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            gone = _discard(tmp)     # a failed clean-up must not hide the error that caused it
            if not isinstance(e, OSError):
                raise
            left = "" if gone else f"; a partial file remains: delete {tmp}"
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {e.strerror or e}; make its folder "
                                       f"writable (or pass another --run_dir){left}") from e


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` current: every ``every_n_steps`` training steps (0/None: never),
    after each validation during fit, at the end of each training epoch, and when fit ends -- also
    when it stops at ``max_steps`` or ``max_time`` in the middle of an epoch -- so ``--ckpt_path last``
    resumes from where the run stopped. (Lightning's ``ModelCheckpoint(save_last=True)`` skips that
    final save once it has saved a last checkpoint earlier.) Written with ``trainer.save_checkpoint``
    (rank 0 writes; atomically with :class:`AtomicCheckpointIO`, which the CLI installs).

    It is a ``Checkpoint`` callback, so Lightning runs it after the ``ModelCheckpoint`` listed before
    it, and it saves again when the step or the best checkpoint changed since its last save: the
    last checkpoint always names the best file that exists (``ModelCheckpoint`` deletes the one it
    replaces), which a resumed fit tests at its end."""

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps or 0
        self._saved: tuple | None = None     # (global step, best path) of the last save

    def _save(self, trainer: L.Trainer) -> None:
        key = (trainer.global_step, getattr(trainer.checkpoint_callback, "best_model_path", None))
        if trainer.sanity_checking or key == self._saved:
            return
        trainer.save_checkpoint(self.path)
        self._saved = key

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)
