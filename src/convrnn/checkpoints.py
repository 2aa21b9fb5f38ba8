"""Checkpoints that survive a kill: atomic writes and an always-current ``last.ckpt``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


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
