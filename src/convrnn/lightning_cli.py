"""The Lightning command line behind ``convrnn fit|validate|test|predict``: a
:class:`lightning.pytorch.cli.LightningCLI` with run directories, default callbacks and loggers,
atomic checkpoints and fit-then-test.

Every Trainer flag works (``--trainer.accelerator gpu --trainer.precision bf16-mixed --trainer.devices 4
--trainer.strategy ddp``), ``--print_config`` shows the resolved config and ``--ckpt_path`` resumes
(``last``/``best`` = the newest checkpoint of this config's runs).  Each command writes to a new
directory ``<run_dir>/<config stem>/<YYYYmmdd-HHMMSS>-<command>``; ``fit`` ends by testing its best
checkpoint, so one command leaves checkpoints, logs, ``metrics.json`` and the per-lead-time plot (see
:mod:`convrnn.outputs` and docs/training.md).
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from .checkpoints import AtomicCheckpointIO, LastCheckpoint
from .outputs import RunOutputs
from .runs import RUN_DIR_ENV, existing_best, find_checkpoint, new_run_dir
from .train import PredictionTask


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
        trainer = super().instantiate_trainer(**kwargs)
        evaluate_each_sequence_once(self.datamodule, trainer)
        return trainer

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


def evaluate_each_sequence_once(datamodule: L.LightningDataModule | None, trainer: L.Trainer) -> None:
    """Validation and test data split over the processes without repeats.

    With several processes Lightning gives each evaluation loader a ``DistributedSampler``, which pads
    the shares to equal length by repeating sequences: 9 test sequences on 2 processes are scored as
    10.  Here each process gets every ``world_size``-th sequence instead
    (``UnrepeatedDistributedSamplerWrapper``, as Lightning's own ``predict`` does), so the metrics,
    summed over the processes, count every sequence exactly once.  Evaluation runs no collective per
    batch, so shares that differ by one batch are safe.  Loaders Lightning would not re-sample anyway
    (a distributed sampler already, an iterable dataset, a batch sampler) or with fewer sequences than
    processes are left as they are."""
    if datamodule is None:
        return
    for hook in ("val_dataloader", "test_dataloader"):
        if is_overridden(hook, datamodule):
            setattr(datamodule, hook, _unrepeated(getattr(datamodule, hook), trainer))


def _unrepeated(make_loader: Callable[[], Any], trainer: L.Trainer) -> Callable[[], Any]:
    @functools.wraps(make_loader)       # keeps `is_overridden` true for the datamodule's hook
    def loader():
        dl = make_loader()
        world = trainer.world_size
        if (world == 1 or type(dl) is not DataLoader or dl.batch_size is None
                or isinstance(dl.sampler, DistributedSampler) or isinstance(dl.dataset, IterableDataset)
                or len(dl.dataset) < world):
            return dl
        sampler = UnrepeatedDistributedSamplerWrapper(dl.sampler, num_replicas=world,
                                                      rank=trainer.global_rank, shuffle=False)
        return DataLoader(dl.dataset, batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers,
                          collate_fn=dl.collate_fn, pin_memory=dl.pin_memory, drop_last=dl.drop_last,
                          timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
                          multiprocessing_context=dl.multiprocessing_context, generator=dl.generator,
                          prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers)
    return loader


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
