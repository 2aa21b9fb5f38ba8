"""Training with Lightning: :class:`PredictionTask` and the ``convrnn fit|validate|test|predict`` CLI.

``PredictionTask`` wraps any network of the registry (built from the ``net`` dict of a config by
:func:`convrnn.registry.model_from_config`):

- training: scheduled sampling. At every step the schedule gives (p_input, p_output) for
  ``self.global_step`` and :func:`convrnn.schedules.sample_mask` draws the boolean step mask with
  torch's RNG; the network only ever sees that mask. The loss is over ``Prediction.outputs`` vs
  ``Prediction.targets`` (every emitted frame), in the literature's convention: the per-pixel loss
  is **summed over C x H x W of a frame and averaged over frames and sequences**, plus
  ``sum(Prediction.aux.values())``.

  ====== ===========================================================================
  mse    sum_{c,h,w} (y - x)^2
  l1     sum_{c,h,w} |y - x|
  l1+l2  sum_{c,h,w} (|y - x| + (y - x)^2)            (MS-RNN)
  bce    sum_{c,h,w} -(x log y + (1 - x) log(1 - y))    (needs out_activation: sigmoid)
  ====== ===========================================================================

- validation / test / predict: free running -- the network gets only the ``in_len`` observed
  frames, so nothing of the future can leak in -- and
  :class:`convrnn.metrics.PredictionMetrics` compares ``Prediction.future`` with the true future,
  next to the copy-last-frame baseline. ``val/mse`` selects the best checkpoint.

A non-finite loss raises :class:`NonFiniteLossError`. To avoid a host synchronisation every step,
the first bad step is recorded on the device (``torch.where``, no sync) and checked every
``finite_check_every`` steps and at the end of each epoch; the error names the first bad step.
(Lightning's ``detect_anomaly`` is the other tool: it finds the backward op that produced a NaN,
at a large cost per step -- ``--trainer.detect_anomaly true`` when debugging.)

The CLI is :class:`lightning.pytorch.cli.LightningCLI`, so every Trainer flag works
(``--trainer.accelerator gpu --trainer.precision bf16-mixed --trainer.devices 4 --trainer.strategy
ddp``), ``--print_config`` shows the resolved config and ``--ckpt_path`` resumes. Each command
writes to a new directory ``<run_dir>/<config stem>/<YYYYmmdd-HHMMSS>-<command>``; ``fit`` ends by
testing its best checkpoint, so one command leaves checkpoints, logs, ``metrics.json`` and the
per-lead-time plot (see :mod:`convrnn.outputs` and docs/training.md).
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from .metrics import PredictionMetrics, copy_last_baseline
from .outputs import SCALARS, RunOutputs
from .registry import model_from_config
from .schedules import create_schedule, sample_mask

LOSSES = ("mse", "l1", "l1+l2", "bce")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = (None, "onecycle", "cosine")
DEFAULT_SCHEDULE = {"name": "linear", "iterations": 50_000}   # OpenSTL / PredRNN / MS-RNN
RUN_DIR_ENV = "CONVRNN_RUN_DIR"   # set by the launching process so DDP workers share its run directory


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def frame_loss(outputs: Tensor, targets: Tensor, kind: str = "mse") -> Tensor:
    """Loss summed over C x H x W of each frame, averaged over frames and sequences.

    outputs, targets: (B, N, C, H, W). Computed in float32 whatever the autocast dtype."""
    y, x = outputs.float(), targets.float()
    if kind == "mse":
        per_pixel = (y - x).square()
    elif kind == "l1":
        per_pixel = (y - x).abs()
    elif kind == "l1+l2":
        per_pixel = (y - x).abs() + (y - x).square()
    elif kind == "bce":
        eps = 1e-6
        y = y.clamp(eps, 1 - eps)
        per_pixel = -(x * y.log() + (1 - x) * (1 - y).log())
    else:
        raise ValueError(f"loss={kind!r}; choose one of {LOSSES}")
    return per_pixel.flatten(2).sum(-1).mean()


def _frames_of(batch: Any) -> Tensor:
    """A batch is a (B, T, C, H, W) tensor, or a tuple/list whose first item is, or a dict with
    ``'frames'``: float in [0, 1], or uint8 in 0..255, divided by 255 here, on the device (what
    :class:`convrnn.data.MovingMNISTDataModule` sends: a quarter of the bytes to copy)."""
    if isinstance(batch, dict):
        batch = batch["frames"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.dim() != 5:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"expected a batch of frames (B, T, C, H, W), got {shape}; the DataModule must "
                         "yield float tensors in [0, 1] or uint8 tensors (0..255) of that shape")
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


class PredictionTask(L.LightningModule):
    """Trains and evaluates a sequence-to-sequence frame predictor.

    Args:
        net: network config, ``{'name': 'stack', 'cell': 'convlstm', 'layers': 2, ...}`` (any
            registered model; see :func:`convrnn.registry.model_from_config`).
        loss: ``mse`` | ``l1`` | ``l1+l2`` | ``bce`` (summed per frame, see the module docstring).
        optimizer: ``adam`` | ``adamw``; lr, weight_decay: its settings.
        scheduler: None (constant lr) | ``onecycle`` (OneCycleLR, max_lr = lr, over all training
            steps, OpenSTL) | ``cosine`` (cosine annealing to 0 over all training steps); both step
            every iteration and need a finite budget (``max_steps`` or ``max_epochs``).
        schedule: scheduled sampling, ``{'name': ..., **kwargs}`` for
            :func:`convrnn.schedules.create_schedule`; default linear 1 -> 0 over 50,000 iterations.
        per_sample_mask: one coin per sequence and step (PredRNN) or one per step for the batch.
        ssim: SSIM convention of the metrics, ``standard`` or ``openstl`` (recorded in metrics.json).
        finite_check_every: check for a non-finite loss every this many steps (0: never).
        compile: ``torch.compile`` the network: ``True`` (defaults) or the keyword arguments of
            :func:`torch.compile` (``{mode: max-autotune, fullgraph: true}``...).  Compiled in place
            (``nn.Module.compile``), so checkpoints keep their parameter names and load either way.
            Every network is one graph (no breaks: tests/test_compile.py traces each with
            ``fullgraph=True``); training and evaluation each compile once per batch shape.
    """

    def __init__(self, net: dict, loss: Literal["mse", "l1", "l1+l2", "bce"] = "mse",
                 optimizer: Literal["adam", "adamw"] = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                 scheduler: Literal["onecycle", "cosine"] | None = None, schedule: dict | None = None,
                 per_sample_mask: bool = True, ssim: Literal["standard", "openstl"] = "standard",
                 finite_check_every: int = 50, compile: bool | dict = False):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; choose one of {LOSSES}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r}; choose one of {SCHEDULERS}")
        if finite_check_every < 0:
            raise ValueError(f"finite_check_every must be >= 0 (0 = never), got {finite_check_every}")
        self.save_hyperparameters()
        self.net = model_from_config(net)
        if compile:
            self.net.compile(**({} if compile is True else dict(compile)))
        codec = getattr(self.net, "codec", None)
        if loss == "bce" and codec is not None and getattr(codec, "out_activation", None) != "sigmoid":
            raise ValueError("loss='bce' needs predictions in (0, 1): add out_activation: sigmoid to the net config")
        sched = dict(schedule or DEFAULT_SCHEDULE)
        if "name" not in sched:
            raise ValueError(f"schedule needs a 'name' key, e.g. {DEFAULT_SCHEDULE}")
        self.schedule = create_schedule(sched.pop("name"), **sched)
        self.val_metrics = PredictionMetrics(ssim=ssim)
        self.val_baseline = PredictionMetrics(ssim=ssim)
        self.test_metrics = PredictionMetrics(ssim=ssim)
        self.test_baseline = PredictionMetrics(ssim=ssim)
        self.test_blank = PredictionMetrics(ssim=ssim)     # the all-zero (black) frame, test only
        self.test_results: dict | None = None
        self._first_bad: Tensor | None = None    # first step with a non-finite loss, -1 = none
        self._test_count = 0

    @property
    def in_len(self) -> int:
        return self.net.in_len

    @property
    def out_len(self) -> int:
        return self.net.out_len

    def forward(self, frames: Tensor, mask: Tensor | None = None):
        return self.net(frames, mask)

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        frames = _frames_of(batch)
        self._check_length(frames)
        p_in, p_out = self.schedule.probs(self.global_step)
        mask = sample_mask(p_in, p_out, frames.shape[0], self.in_len, self.out_len, frames.device,
                           per_sample=self.hparams.per_sample_mask)
        pred = self.net(frames, mask)
        loss = frame_loss(pred.outputs, pred.targets, self.hparams.loss)
        if pred.aux:
            aux = sum(pred.aux.values())
            self.log("train/aux", aux)
            loss = loss + aux
        self._record_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ss_prob", float(p_out))
        if p_in < 1:
            self.log("train/ss_prob_input", float(p_in))
        return loss

    def _record_finite(self, loss: Tensor) -> None:
        every = self.hparams.finite_check_every
        if not every:
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & (self._first_bad < 0), self.global_step, self._first_bad)
        if (self.global_step + 1) % every == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        if self._first_bad is None:
            return
        first = self._first_bad
        if self._trainer is not None and self.trainer.world_size > 1:   # every rank stops together
            never = torch.iinfo(torch.long).max
            first = self.trainer.strategy.reduce(torch.where(first < 0, never, first), reduce_op="min")
            first = torch.where(first == never, -1, first)
        step = int(first.item())   # the one host sync, every `finite_check_every` steps
        if step >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or inf at global step {step} (found at step {self.global_step}, "
                f"checked every {self.hparams.finite_check_every} steps); the weights are no longer usable. "
                f"Lower the learning rate (--model.lr, now {self.hparams.lr:g}), clip gradients "
                "(--trainer.gradient_clip_val 1.0), use --trainer.precision bf16-mixed or 32-true instead of "
                "16-mixed, and check the data for NaN; resume from an earlier checkpoint with --ckpt_path.")

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()

    def on_train_end(self) -> None:
        self._raise_if_nonfinite()

    # -- evaluation ------------------------------------------------------------------------
    def _check_length(self, frames: Tensor) -> None:
        need = self.in_len + self.out_len
        if frames.shape[1] < need:
            raise ValueError(f"sequences have {frames.shape[1]} frames but the network needs in_len + out_len = "
                             f"{self.in_len} + {self.out_len} = {need}; set the data's seq_len to {need} or "
                             "change net.in_len / net.out_len")

    def _free_run(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Observed frames only -> (predicted future, true future, copy-last baseline) in float32."""
        self._check_length(frames)
        observed = frames[:, :self.in_len]
        future = frames[:, self.in_len:self.in_len + self.out_len].float()
        pred = self.net(observed).future.float()
        return pred, future, copy_last_baseline(observed.float(), future)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pred, future, base = self._free_run(_frames_of(batch))
        self.val_metrics.update(pred, future)
        self.val_baseline.update(base, future)

    def on_validation_epoch_end(self) -> None:
        model, baseline = self.val_metrics.compute(), self.val_baseline.compute()
        self.val_metrics.reset()
        self.val_baseline.reset()
        self.log("val/mse", model["mse"], prog_bar=True)
        self.log_dict({f"val/{k}": model[k] for k in SCALARS if k != "mse"})
        self.log_dict({f"val/baseline_{k}": baseline[k] for k in SCALARS})

    def on_test_epoch_start(self) -> None:
        self.test_results = None
        self._test_count = 0

    def test_step(self, batch: Any, batch_idx: int) -> dict | None:
        frames = _frames_of(batch)
        pred, future, base = self._free_run(frames)
        self.test_metrics.update(pred, future)
        self.test_baseline.update(base, future)
        self.test_blank.update(torch.zeros_like(future), future)
        self._test_count += pred.shape[0]
        if batch_idx == 0:  # the first sequences, for the example GIF/PNGs that RunOutputs writes
            return {"inputs": frames[:, :self.in_len], "targets": future, "predictions": pred}
        return None

    def on_test_epoch_end(self) -> None:
        model, baseline, blank = (m.compute() for m in (self.test_metrics, self.test_baseline, self.test_blank))
        for m in (self.test_metrics, self.test_baseline, self.test_blank):
            m.reset()
        self.log_dict({f"test/{k}": model[k] for k in SCALARS})
        self.log_dict({f"test/baseline_{k}": baseline[k] for k in SCALARS})
        self.log_dict({f"test/blank_{k}": blank[k] for k in SCALARS})
        self.test_results = {"model": {k: v.detach().cpu() for k, v in model.items()},
                             "baseline": {k: v.detach().cpu() for k, v in baseline.items()},
                             "blank": {k: v.detach().cpu() for k, v in blank.items()},
                             "convention": getattr(self.test_metrics, "ssim_convention", self.hparams.ssim),
                             "convention_text": getattr(self.test_metrics, "convention", None),
                             "num_sequences": self._test_count * self.trainer.world_size}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        frames = _frames_of(batch)
        observed = frames[:, :self.in_len]
        seq = self.in_len + self.out_len
        return {"inputs": observed, "predictions": self.net(observed).future,
                "targets": frames[:, self.in_len:seq] if frames.shape[1] >= seq else None}

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        opt = OPTIMIZERS[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler is None:
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(f"scheduler={hp.scheduler!r} needs a finite number of training steps; set "
                             "--trainer.max_steps or --trainer.max_epochs (max_time alone is not enough)")
        total = int(total)
        if hp.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ----------------------------------------------------------------------------------------------
# Run directories and checkpoint look-up
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------
class ConvRNNCLI(LightningCLI):
    """LightningCLI with run directories, default callbacks/loggers and fit-then-test."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str, default="runs",
                            help="root of the run directories: each command writes to a new "
                                 "RUN_DIR/<config stem>/<YYYYmmdd-HHMMSS>-<command>")
        parser.add_argument("--checkpoint_every", type=int, default=500,
                            help="fit: also write checkpoints/last.ckpt every this many training steps "
                                 "(it is always written after each validation and when fit ends; 0 = only then)")
        parser.add_argument("--examples", type=int, default=4,
                            help="test and predict: number of sequences written as GIF + PNG strip")

    # `--ckpt_path last|best` -> the newest run's checkpoint of this config, before Lightning reads it
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        if cfg.get("ckpt_path") in ("last", "best"):
            cfg.ckpt_path = str(find_checkpoint(cfg.run_dir, self.config_stem(), cfg.ckpt_path))
            print(f"convrnn: --ckpt_path resolved to {cfg.ckpt_path}")

    def config_stem(self) -> str:
        paths = self.config[self.config.subcommand].get("config") or []
        return Path(str(paths[0])).stem if paths else "run"

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        sub = self.subcommand
        cfg = self.config[sub]
        self.run_dir = new_run_dir(cfg.run_dir, self.config_stem(), sub)
        os.environ[RUN_DIR_ENV] = str(self.run_dir)      # DDP workers re-run this command: same directory
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        kwargs["default_root_dir"] = str(self.run_dir)
        logger = trainer_cfg.get("logger")
        if logger is None or logger is True:
            kwargs["logger"] = logger = [CSVLogger(self.run_dir, name="", version=""),
                                         TensorBoardLogger(self.run_dir, name="tensorboard", version="")]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if sub == "fit":
            callbacks += self._fit_callbacks(callbacks, trainer_cfg, logger, cfg.checkpoint_every)
        else:   # test/validate/predict write no checkpoints (so the fit's ModelCheckpoint state is not needed)
            kwargs["enable_checkpointing"] = False
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks")
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(pl, CheckpointIO) for pl in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]
        config = yaml.safe_load(self._parser(sub).dump(cfg, skip_none=False))
        self.outputs = RunOutputs(self.run_dir, config, examples=cfg.examples)
        kwargs["callbacks"] = callbacks + [self.outputs]
        return super().instantiate_trainer(**kwargs)

    def _fit_callbacks(self, given: list, trainer_cfg: dict, logger: Any, every: int) -> list:
        """Best-by-val/mse and last checkpoints, and the learning-rate monitor, unless configured."""
        extra: list = []
        if trainer_cfg.get("enable_checkpointing") is not False:
            if not any(isinstance(c, ModelCheckpoint) for c in given):
                extra.append(ModelCheckpoint(dirpath=self.run_dir / "checkpoints", filename="best-{epoch}-{step}",
                                             monitor="val/mse", mode="min", save_top_k=1))
            extra.append(LastCheckpoint(self.run_dir / "checkpoints", every_n_steps=every))
        if logger is not False and not any(isinstance(c, LearningRateMonitor) for c in given):
            extra.append(LearningRateMonitor(logging_interval="step"))
        return extra

    def after_fit(self) -> None:
        """Test the best checkpoint (the last weights when there is none) so the run is complete."""
        if self.trainer.interrupted or not is_overridden("test_dataloader", self.datamodule):
            return
        ckpt = existing_best(getattr(self.trainer.checkpoint_callback, "best_model_path", "") or None)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    def before_predict(self) -> None:
        """A DataModule without ``predict_dataloader`` predicts its test set."""
        dm = self.datamodule
        if dm is not None and not is_overridden("predict_dataloader", dm):
            dm.predict_dataloader = dm.test_dataloader


def cli_main(argv: list[str]) -> int:
    """``convrnn fit|validate|test|predict --config FILE.yaml [--section.key value ...]``.

    Returns the exit status (0 = success; ``--help`` / ``--print_config`` return 0, argument errors 2).
    Errors during training propagate as exceptions."""
    previous = os.environ.get(RUN_DIR_ENV)
    try:
        # From the `convrnn` command argv is sys.argv[1:]: let Lightning read sys.argv itself (as DDP
        # workers will), which also avoids its warning about receiving both.
        args = None if list(argv) == sys.argv[1:] else list(argv)
        ConvRNNCLI(PredictionTask, L.LightningDataModule, subclass_mode_data=True, args=args,
                   auto_configure_optimizers=False, parser_kwargs={"parser_mode": "yaml"})
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    return 0
