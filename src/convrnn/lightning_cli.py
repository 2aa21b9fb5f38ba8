"""The Lightning command line behind ``convrnn fit|validate|test|predict``: a
:class:`lightning.pytorch.cli.LightningCLI` with run directories, default callbacks and loggers,
atomic checkpoints and fit-then-test.

Every Trainer flag works (``--trainer.accelerator gpu --trainer.precision bf16-mixed --trainer.devices 4
--trainer.strategy ddp``), ``--print_config`` shows the resolved config and ``--ckpt_path`` resumes
(``last``/``best`` = the newest checkpoint of this config's runs and network).  Each command writes to a
new directory ``<run_dir>/<config key>/<YYYYmmdd-HHMMSS>-<command>`` (:func:`convrnn.runs.run_key`:
unique per config path); ``fit`` ends by testing its best checkpoint, so one command leaves
checkpoints, logs, ``metrics.json`` and the per-lead-time plot (see :mod:`convrnn.outputs` and
docs/training.md).

Checks before anything is built: every ``--model.net.<key>`` is typed against the model builder's
signature (:func:`convrnn.netconfig.check_net`); a checkpoint must fit the config
(:func:`convrnn.train.checkpoint_conflicts`: same network; on a resume, same optimizer and scheduler;
other changed settings are applied and listed) instead of silently replacing the config's model
settings as LightningCLI does; ``validate``/``test``/``predict`` need a checkpoint and ``fit`` a
training step unless ``--untrained true`` says that untrained weights are meant.  Argument errors
raise :class:`jsonargparse.ArgumentError` (``exit_on_error=False``): :func:`cli_main` prints the error,
not the usage.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden

from .checkpoints import AtomicCheckpointIO, LastCheckpoint, checkpoint_hparams
from .netconfig import check_net, net_differences
from .outputs import RunOutputs
from .runs import RUN_DIR_ENV, existing_best, find_checkpoint, new_run_dir, run_key
from .train import CheckpointMismatchError, PredictionTask, checkpoint_conflicts


@rank_zero_only
def say(message: str) -> None:
    """One line for the user, from the first process only."""
    print(f"convrnn: {message}", flush=True)


class ConvRNNCLI(LightningCLI):
    """LightningCLI with typed network configs, checkpoint checks, run directories, default
    callbacks/loggers and fit-then-test."""

    def init_parser(self, **kwargs: Any):
        kwargs.setdefault("exit_on_error", False)     # cli_main prints the error, not a usage dump
        kwargs.setdefault("prog", "convrnn")
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str, default="runs",
                            help="root of the run directories: each command writes to a new "
                                 "RUN_DIR/<config path>/<YYYYmmdd-HHMMSS>-<command> (config path without "
                                 "configs/ and .yaml)")
        parser.add_argument("--checkpoint_every", type=int, default=500,
                            help="fit: also write checkpoints/last.ckpt every this many training steps "
                                 "(it is always written after each validation and when fit ends; 0 = only then)")
        parser.add_argument("--examples", type=int, default=4,
                            help="test and predict: number of sequences written as GIF + PNG strip")
        parser.add_argument("--untrained", type=bool, default=False,
                            help="evaluate untrained (randomly initialised) weights on purpose: validate/test/"
                                 "predict without --ckpt_path, or fit with no training step (max_steps 0)")

    def parse_arguments(self, parser, args) -> None:
        """Parse, then type the network config, refuse an evaluation of untrained weights, and resolve
        ``--ckpt_path last|best`` to the newest checkpoint of this config and network."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        cfg.model.net = check_net(cfg.model.net)
        self._refuse_untrained(sub, cfg)
        which = cfg.get("ckpt_path")
        if which in ("last", "best"):
            path, skipped = find_checkpoint(cfg.run_dir, self.run_key(), which,
                                            refuse=lambda p: self._refusal(p, cfg.model.net))
            cfg.ckpt_path = str(path)
            passed = f" (passed over newer: {'; '.join(skipped)})" if skipped else ""
            say(f"--ckpt_path {which} resolved to {path}{passed}")

    @staticmethod
    def _refusal(path: Path, net: dict) -> str | None:
        saved = checkpoint_hparams(path).get("net")
        diff = net_differences(saved, net) if saved is not None else []
        return f"another network: {'; '.join(diff)}" if diff else None

    @staticmethod
    def _refuse_untrained(sub: str, cfg) -> None:
        if cfg.untrained or cfg.get("ckpt_path"):
            return
        if sub != "fit":
            raise ValueError(f"`convrnn {sub}` without --ckpt_path would evaluate untrained (random) weights: pass "
                             "--ckpt_path best|last|FILE.ckpt, or --untrained true to do that on purpose")
        t = cfg.trainer
        if t.get("max_steps") == 0 or t.get("max_epochs") == 0 or t.get("limit_train_batches") == 0:
            raise ValueError("this fit trains no step (--trainer.max_steps 0, max_epochs 0 or limit_train_batches 0) "
                             "and would test untrained weights: give it a training budget, or --untrained true "
                             "to test untrained weights on purpose")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI replaces the config's model settings by the checkpoint's; here the checkpoint
        must fit the config instead (same network; on a resume, same optimizer and scheduler), and
        other settings that differ are the config's, listed (:func:`convrnn.train.checkpoint_conflicts`)."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not path or "://" in str(path):     # remote checkpoints: PredictionTask.on_load_checkpoint checks them
            return
        model = self.config[sub].model.as_dict()
        problems, changes = checkpoint_conflicts(checkpoint_hparams(path), model, fitting=sub == "fit")
        if problems:
            raise CheckpointMismatchError(f"--ckpt_path {path} does not fit the config: " + "; ".join(problems))
        if changes:
            say(f"resuming {path} with the config's settings: {', '.join(changes)}")

    def run_key(self) -> str:
        """This config's folder under --run_dir (:func:`convrnn.runs.run_key`)."""
        paths = self.config[self.config.subcommand].get("config") or []
        return run_key(str(paths[0]) if paths else None)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        sub = self.subcommand
        cfg = self.config[sub]
        self.run_dir = new_run_dir(cfg.run_dir, self.run_key(), sub)
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
        cfg = self.config[self.subcommand]
        if self.trainer.global_step == 0 and not cfg.get("ckpt_path") and not cfg.untrained:
            raise ValueError("fit took no training step (no training data, or a zero budget), so its test would "
                             "score untrained weights: check the training data and the trainer's limits, or pass "
                             "--untrained true to test untrained weights on purpose")
        ckpt = existing_best(getattr(self.trainer.checkpoint_callback, "best_model_path", "") or None)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    def before_predict(self) -> None:
        """A DataModule without ``predict_dataloader`` predicts its test set."""
        dm = self.datamodule
        if dm is not None and not is_overridden("predict_dataloader", dm):
            dm.predict_dataloader = dm.test_dataloader

    def _require_batches(self, counts, split: str) -> None:
        if not sum(counts or []):
            raise ValueError(f"`convrnn {self.subcommand}` found no {split} sequences, so it wrote no result: give "
                             f"the data module its {split} data (FramesDataModule: --data.init_args.{split} FILE)")

    def after_validate(self) -> None:
        self._require_batches(self.trainer.num_val_batches, "val")

    def after_test(self) -> None:
        self._require_batches(self.trainer.num_test_batches, "test")

    def after_predict(self) -> None:
        self._require_batches(self.trainer.num_predict_batches, "test")


def cli_main(argv: list[str]) -> int:
    """``convrnn fit|validate|test|predict --config FILE.yaml [--section.key value ...]``.

    Returns the exit status (0 = success; ``--help`` / ``--print_config`` return 0; argument errors
    print one message on stderr and return 2).  Other errors propagate as exceptions
    (:func:`convrnn.cli.main` turns those of convrnn's own checks into one line)."""
    from jsonargparse import ArgumentError

    previous = os.environ.get(RUN_DIR_ENV)
    command = argv[0] if argv else ""
    try:
        # From the `convrnn` command argv is sys.argv[1:]: let Lightning read sys.argv itself (as DDP
        # workers will), which also avoids its warning about receiving both.
        args = None if list(argv) == sys.argv[1:] else list(argv)
        cli = ConvRNNCLI(PredictionTask, L.LightningDataModule, subclass_mode_data=True, args=args,
                         auto_configure_optimizers=False, parser_kwargs={"parser_mode": "yaml"})
    except ArgumentError as e:
        print(f"convrnn {command}: error: {' '.join(str(e).split())}\n(`convrnn {command} --help` lists every "
              "option)", file=sys.stderr)
        return 2
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    say(f"{command} wrote {cli.run_dir}")
    return 0
