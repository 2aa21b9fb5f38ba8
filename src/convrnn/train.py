"""Training with Lightning: :class:`PredictionTask`, the LightningModule.

``PredictionTask`` wraps any network of the registry (built from the ``net`` dict of a config by
:func:`convrnn.registry.model_from_config`); the network stays a plain ``nn.Module``.

- training: scheduled sampling. At every step the schedule gives (p_input, p_output) for
  ``self.global_step`` (and ``self.current_epoch``, for per-epoch schedules) and :func:`convrnn.schedules.sample_mask` draws the boolean step mask with
  torch's RNG; the network only ever sees that mask. The loss is
  :func:`convrnn.losses.frame_loss` over ``Prediction.outputs`` vs ``Prediction.targets`` (every
  emitted frame; summed over C x H x W of a frame, averaged over frames and sequences), plus
  ``sum(Prediction.aux.values())``.
- validation / test / predict: free running -- the network gets only the ``in_len`` observed
  frames, so nothing of the future can leak in -- and
  :class:`convrnn.metrics.PredictionMetrics` compares ``Prediction.future`` with the true future,
  next to the copy-last-frame baseline. ``val/mse`` selects the best checkpoint.
- radar data (a DataModule with a Z-R relation ``zr``: HKO-7, RADOLAN): the test epoch also scores the
  model, the copy-last and the blank forecasts with :class:`convrnn.metrics.NowcastScores` (POD, FAR,
  CSI, HSS per rain-rate threshold, B-MSE, B-MAE), over the pixels the batch's mask keeps
  (:func:`convrnn.losses.mask_of`); MSE/MAE/SSIM/PSNR stay over all pixels, as the literature's tables.

A non-finite loss raises :class:`NonFiniteLossError`, non-finite input frames (training or
evaluation) :class:`NonFiniteInputError`. To avoid a host synchronisation every step, the first bad
step (or evaluation batch) is recorded on the device (``torch.where``, no sync) and checked every
``finite_check_every`` steps and at the end of each epoch; the error names the first bad step.
(Lightning's ``detect_anomaly`` is the other tool: it finds the backward op that produced a NaN,
at a large cost per step -- ``--trainer.detect_anomaly true`` when debugging.)

``fast=True`` (``--model.fast true``) is the fast training path: the training objective compiled
(:func:`torch.compile`, inductor, no max-autotune) and, on a GPU, captured in CUDA graphs (mode
``reduce-overhead``; the scheduled-sampling mask is an input tensor, shapes are static, nothing in the
step syncs with the host), Adam/AdamW fused, and the step's metrics logged only on the steps whose
logs the Trainer writes (every ``log_every_n_steps``).  ``scope: step`` (default) compiles the
network's one-time-step function once and reuses it for every step of the sequence (a short
warm-up); ``scope: sequence`` compiles the whole unrolled forward and loss (one graph per pass,
a longer warm-up).  Precision stays the Trainer's (``--trainer.precision bf16-mixed``); see
docs/training.md.

Checkpoints (:meth:`PredictionTask.on_load_checkpoint`): a checkpoint whose network differs from
``net`` is refused, naming the keys (:func:`checkpoint_conflicts`).  A resumed fit continues the
saved optimizer and scheduler, so ``optimizer`` and ``scheduler`` must match the checkpoint; a new
``lr`` / ``weight_decay`` is applied to the restored optimizer (refused with a scheduler, whose saved
state sets the learning rate); every other setting (loss, schedule, ...) is the task's own.

The command line (``convrnn fit|validate|test|predict``) is :mod:`convrnn.lightning_cli`; run
directories are :mod:`convrnn.runs`, checkpoint writing :mod:`convrnn.checkpoints`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from .losses import LOSSES, frame_loss, frames_of, mask_of
from .metrics import NowcastScores, PredictionMetrics, copy_last_baseline
from .netconfig import check_net, net_differences
from .outputs import SCALARS
from .registry import model_from_config
from .schedules import create_schedule, sample_mask

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
FAST = {"scope": "step", "fullgraph": True, "dynamic": False}   # fast=True; a dict overrides keys
SCOPES = ("step", "sequence")
SCHEDULERS = (None, "onecycle", "cosine")
DEFAULT_SCHEDULE = {"name": "linear", "iterations": 50_000}   # OpenSTL / PredRNN / MS-RNN


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteInputError(ValueError):
    """A batch of input frames held NaN or infinite values."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this task's network or optimizer settings."""


RESUME_FIXED = ("optimizer", "scheduler")   # a resumed fit continues their saved state
NOT_SETTINGS = ("net", "_instantiator", "_class_path")


def checkpoint_conflicts(saved: Mapping, hparams: Mapping, fitting: bool) -> tuple[list[str], list[str]]:
    """``(problems, changes)`` between a checkpoint's saved hyperparameters and a task's.

    problems (the checkpoint is refused): a different network (any argument it is built with); when
    ``fitting`` (a resume), a different optimizer or scheduler, or a different lr / weight_decay under
    a scheduler.  changes (applied): every other setting that differs, as ``key: saved -> now``."""
    problems, changes = [], []
    if saved.get("net") is not None:
        diff = net_differences(saved["net"], hparams["net"])
        if diff:
            problems.append(f"its network differs from the config's ({'; '.join(diff)}, checkpoint vs config): "
                            "use the config it was trained with (config.yaml in its run folder) or a "
                            "checkpoint of this network")
    if not fitting:
        return problems, changes
    for key in sorted(set(saved) | set(hparams)):
        if key in NOT_SETTINGS or saved.get(key) == hparams.get(key):
            continue
        was, now = saved.get(key), hparams.get(key)
        if key in RESUME_FIXED:
            problems.append(f"{key}: {was!r} in the checkpoint, {now!r} now; a resumed fit continues the saved "
                            f"{key} state: keep {key}: {was!r}, or start a new fit without --ckpt_path")
        elif key in ("lr", "weight_decay") and hparams.get("scheduler") is not None:
            problems.append(f"{key}: {was!r} in the checkpoint, {now!r} now; the saved {hparams['scheduler']} "
                            f"schedule sets the learning rate: keep {key}: {was!r}, or start a new fit")
        else:
            changes.append(f"{key}: {was!r} -> {now!r}")
    return problems, changes


class PredictionTask(L.LightningModule):
    """Trains and evaluates a sequence-to-sequence frame predictor.

    Args:
        net: network config, ``{'name': 'stack', 'cell': 'convlstm', 'layers': 2, ...}`` (any
            registered model; see :func:`convrnn.registry.model_from_config`), each key checked against
            and converted to the type its builder declares (:func:`convrnn.netconfig.check_net`).
        loss: ``mse`` | ``l1`` | ``l1+l2`` | ``bce`` (summed per frame, see :mod:`convrnn.losses`).
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
            Every network is one graph (no breaks: tests/test_contract.py traces each with
            ``fullgraph=True``); training and evaluation each compile once per batch shape.
        fast: the fast training path (module docstring): ``True`` or a dict over :data:`FAST`:
            ``scope`` (``step`` | ``sequence``) and keyword arguments of :func:`torch.compile`
            (``backend``, ``mode``...; ``mode`` defaults to ``reduce-overhead`` on a CUDA device with
            inductor).  Not together with ``compile``.
    """

    def __init__(self, net: dict[str, Any], loss: Literal["mse", "l1", "l1+l2", "bce"] = "mse",
                 optimizer: Literal["adam", "adamw"] = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                 scheduler: Literal["onecycle", "cosine"] | None = None, schedule: dict | None = None,
                 per_sample_mask: bool = True, ssim: Literal["standard", "openstl"] = "standard",
                 finite_check_every: int = 50, compile: bool | dict = False, fast: bool | dict = False):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; choose one of {LOSSES}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r}; choose one of {SCHEDULERS}")
        if finite_check_every < 0:
            raise ValueError(f"finite_check_every must be >= 0 (0 = never), got {finite_check_every}")
        if compile and fast:
            raise ValueError("fast compiles the training step itself; set either compile or fast, not both")
        scope = {**FAST, **(fast if isinstance(fast, dict) else {})}["scope"]
        if scope not in SCOPES:
            raise ValueError(f"fast scope={scope!r}; choose one of {SCOPES}")
        net = check_net(net)     # typed (before save_hyperparameters, which reads the arguments' values)
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
        self.test_nowcast: torch.nn.ModuleDict | None = None   # radar data only, see setup()
        self.test_results: dict | None = None
        # first training step with a non-finite loss, with non-finite input frames, and first evaluation
        # batch with non-finite input frames (-1 = none), kept on the device
        self._first_bad: Tensor | None = None
        self._test_count = 0
        self._fast_loss = None                   # the compiled training objective (fast=...)

    @property
    def in_len(self) -> int:
        return self.net.in_len

    @property
    def out_len(self) -> int:
        return self.net.out_len

    def forward(self, frames: Tensor, mask: Tensor | None = None):
        return self.net(frames, mask)

    # -- training --------------------------------------------------------------------------
    def training_objective(self, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """The loss of one batch: :func:`convrnn.losses.frame_loss` over every emitted frame plus the
        network's auxiliary terms; returns (loss, auxiliary sum or None).  What ``fast`` compiles."""
        pred = self.net(frames, mask)
        loss = frame_loss(pred.outputs, pred.targets, self.hparams.loss)
        if not pred.aux:
            return loss, None
        aux = sum(pred.aux.values())
        return loss + aux, aux

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        frames = frames_of(batch)
        self._check_length(frames)
        p_in, p_out = self.schedule.probs(self.global_step, self.current_epoch)
        mask = sample_mask(p_in, p_out, frames.shape[0], self.in_len, self.out_len, frames.device,
                           per_sample=self.hparams.per_sample_mask)
        self._begin_step(frames.device)
        loss, aux = self._objective(frames.device)(frames, mask)
        self._record_finite(loss, frames)
        if self._log_now():     # clones: a CUDA graph's outputs are overwritten by its next replay
            if aux is not None:
                self.log("train/aux", aux.detach().clone())
            self.log("train/loss", loss.detach().clone(), prog_bar=True)
            self.log("train/ss_prob", float(p_out))
            if p_in < 1:
                self.log("train/ss_prob_input", float(p_in))
        return loss

    # -- the fast path -----------------------------------------------------------------------
    def configure_model(self) -> None:
        """Lightning's hook before fit / validate / test / predict: with ``fast``, compile for the
        Trainer's device (torch.compile is lazy: the first step compiles)."""
        if self.hparams.fast and self._fast_loss is None:
            self._fast_loss = self._compile_fast(self.trainer.strategy.root_device)

    def _compile_fast(self, device: torch.device):
        """The compiled training objective (``scope: sequence``), or the plain one over a network whose
        one-time-step function is compiled (``scope: step``: one small graph, reused for every step)."""
        options = {**FAST, **(self.hparams.fast if isinstance(self.hparams.fast, dict) else {})}
        scope = options.pop("scope")
        if device.type == "cuda" and options.get("backend", "inductor") == "inductor" and "options" not in options:
            options.setdefault("mode", "reduce-overhead")        # CUDA graphs
        if scope == "sequence":
            return torch.compile(self.training_objective, **options)
        if not callable(getattr(self.net, "step", None)):
            raise ValueError(f"fast scope 'step' needs a network with a step(frame, state) method (stack, msrnn "
                             f"and the presets), not {type(self.net).__name__}; use fast: {{scope: sequence}}")
        self.net.step = torch.compile(self.net.step, **options)
        return self.training_objective

    def _objective(self, device: torch.device):
        if not self.hparams.fast:
            return self.training_objective
        if self._fast_loss is None:     # used without a Trainer (configure_model not called)
            self._fast_loss = self._compile_fast(device)
        return self._fast_loss

    def _begin_step(self, device: torch.device) -> None:
        """A new iteration for CUDA graph trees: the outputs of the previous pass may be reused."""
        if self.hparams.fast and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()

    def _log_now(self) -> bool:
        """Every step, or with ``fast`` only on the steps whose logs the Trainer writes."""
        if not self.hparams.fast or self._trainer is None:
            return True
        every = self.trainer.log_every_n_steps
        return bool(every) and ((self.global_step + 1) % every == 0 or self.trainer.should_stop)

    def _note_bad(self, slot: int, bad: Tensor, index: int) -> None:
        """Record ``index`` in ``slot`` of ``_first_bad`` if ``bad`` and nothing is recorded there yet
        (on the device: no host sync)."""
        if self._first_bad is None or self._first_bad.device != bad.device:
            self._first_bad = torch.full((3,), -1, dtype=torch.long, device=bad.device)
        first = self._first_bad[slot]
        self._first_bad[slot] = torch.where(bad & (first < 0), index, first)

    def _record_finite(self, loss: Tensor, frames: Tensor | None = None) -> None:
        every = self.hparams.finite_check_every
        if not every:
            return
        self._note_bad(0, ~torch.isfinite(loss.detach()), self.global_step)
        if frames is not None:
            self._note_bad(1, ~torch.isfinite(frames).all(), self.global_step)
        if (self.global_step + 1) % every == 0:
            self._raise_if_nonfinite()

    def _first_bad_indices(self) -> list[int]:
        """[loss step, training input step, evaluation input batch], -1 = none: the one host sync."""
        if not self.hparams.finite_check_every:
            return [-1, -1, -1]
        if self._first_bad is None:   # (every rank joins the reduction below, even one that saw no batch)
            self._first_bad = torch.full((3,), -1, dtype=torch.long, device=self.device)
        first = self._first_bad
        if self._trainer is not None and self.trainer.world_size > 1:   # every rank stops together
            never = torch.iinfo(torch.long).max
            first = self.trainer.strategy.reduce(torch.where(first < 0, never, first), reduce_op="min")
            first = torch.where(first == never, -1, first)
        return first.tolist()

    def _raise_if_nonfinite(self) -> None:
        step, input_step, _ = self._first_bad_indices()   # every `finite_check_every` steps
        if input_step >= 0:
            raise NonFiniteInputError(
                f"the input frames of the training batch at global step {input_step} hold NaN or inf: the data, "
                "not the model, is broken; find and fix those values (FramesDataModule checks each file when it "
                "loads it; a DataModule of your own should too)")
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another network (or, when resuming a fit, of another optimizer or
        scheduler: :func:`checkpoint_conflicts`); on a resume without a scheduler, apply this task's lr and
        weight_decay to the restored optimizer (Lightning restores the optimizer after this hook)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        problems, _ = checkpoint_conflicts(checkpoint.get("hyper_parameters") or {}, self.hparams, fitting)
        if problems:
            path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            raise CheckpointMismatchError(f"checkpoint {path or ''} does not fit: " + "; ".join(problems))
        if fitting and self.hparams.scheduler is None:
            for state in checkpoint.get("optimizer_states", []):
                for group in state.get("param_groups", []):
                    group["lr"], group["weight_decay"] = self.hparams.lr, self.hparams.weight_decay

    # -- non-finite input in evaluation: one check per epoch ------------------------------------
    def _note_eval_input(self, frames: Tensor, batch_idx: int) -> None:
        if self.hparams.finite_check_every:
            self._note_bad(2, ~torch.isfinite(frames).all(), batch_idx)

    def _raise_if_bad_eval_input(self, stage: str) -> None:
        batch = self._first_bad_indices()[2]
        if self._first_bad is not None:
            self._first_bad[2] = -1     # the next evaluation starts clean
        if batch >= 0:
            raise NonFiniteInputError(
                f"the {stage} data hold NaN or inf (first in batch {batch}): the metrics or predictions would be "
                "NaN; find and fix those values (FramesDataModule checks each file when it loads it)")

    # -- evaluation ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Radar data -- a DataModule with a Z-R relation ``zr`` (a, b of Z = a R^b) -- also gets the
        nowcasting scores at test time, for the model and the copy-last and blank forecasts (built here,
        before Lightning moves the module to its device; they hold no checkpointed state)."""
        zr = getattr(self.trainer.datamodule, "zr", None) if self._trainer is not None else None
        if zr is not None and self.test_nowcast is None:
            self.test_nowcast = torch.nn.ModuleDict({name: NowcastScores(zr=tuple(zr))
                                                     for name in ("model", "baseline", "blank")})

    def _check_length(self, frames: Tensor) -> None:
        need = self.in_len + self.out_len
        if frames.shape[1] < need:
            raise ValueError(f"sequences have {frames.shape[1]} frames but the network needs in_len + out_len = "
                             f"{self.in_len} + {self.out_len} = {need}; set the data's seq_len to {need} or "
                             "change net.in_len / net.out_len")

    def _free_run(self, frames: Tensor, batch_idx: int) -> tuple[Tensor, Tensor, Tensor]:
        """Observed frames only -> (predicted future, true future, copy-last baseline) in float32."""
        self._check_length(frames)
        self._note_eval_input(frames, batch_idx)
        observed = frames[:, :self.in_len]
        future = frames[:, self.in_len:self.in_len + self.out_len].float()
        pred = self.net(observed).future.float()
        return pred, future, copy_last_baseline(observed.float(), future)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        frames = frames_of(batch)
        self._begin_step(frames.device)
        pred, future, base = self._free_run(frames, batch_idx)
        self.val_metrics.update(pred, future)
        self.val_baseline.update(base, future)

    def on_validation_epoch_end(self) -> None:
        self._raise_if_bad_eval_input("validation")
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
        frames = frames_of(batch)
        self._begin_step(frames.device)
        pred, future, base = self._free_run(frames, batch_idx)
        blank = torch.zeros_like(future)
        self.test_metrics.update(pred, future)
        self.test_baseline.update(base, future)
        self.test_blank.update(blank, future)
        if self.test_nowcast is not None:
            mask = mask_of(batch)
            mask = None if mask is None else mask[:, self.in_len:self.in_len + self.out_len]
            for name, forecast in (("model", pred), ("baseline", base), ("blank", blank)):
                self.test_nowcast[name].update(forecast, future, mask)
        self._test_count += pred.shape[0]
        if batch_idx == 0:  # the first sequences, for the example GIF/PNGs that RunOutputs writes
            return {"inputs": frames[:, :self.in_len], "targets": future, "predictions": pred}
        return None

    def on_test_epoch_end(self) -> None:
        self._raise_if_bad_eval_input("test")
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
                             "num_sequences": self._sequences_tested()}
        if self.test_nowcast is not None:
            self.test_results["nowcast"] = self._nowcast_results()

    def _nowcast_results(self) -> dict:
        """The nowcasting scores of model, copy-last and blank forecasts (logged: CSI and HSS per
        threshold, B-MSE, B-MAE), and the thresholds in mm/h and in pixel values."""
        results = {}
        for name, metric in self.test_nowcast.items():
            out = {k: v.detach().cpu() for k, v in metric.compute().items()}
            metric.reset()
            prefix = "test/" if name == "model" else f"test/{name}_"
            for k, rate in enumerate(metric.skill.rain_thresholds):
                for score in ("csi", "hss"):
                    self.log(f"{prefix}{score}_{rate:g}mmh", out[score].reshape(-1)[k])
            self.log_dict({f"{prefix}{score}": out[score] for score in ("b_mse", "b_mae")})
            results[name] = out
        metric = self.test_nowcast["model"]
        results["thresholds_mmh"], results["zr"] = list(metric.skill.rain_thresholds), list(metric.skill.zr)
        return results

    def _sequences_tested(self) -> int:
        """Test sequences scored by all processes together (their shares may differ by a batch)."""
        count = torch.tensor(self._test_count, device=self.device)
        return int(self.trainer.strategy.reduce(count, reduce_op="sum"))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        frames = frames_of(batch)
        self._begin_step(frames.device)
        self._note_eval_input(frames, batch_idx)
        observed = frames[:, :self.in_len]
        seq = self.in_len + self.out_len
        return {"inputs": observed, "predictions": self.net(observed).future,
                "targets": frames[:, self.in_len:seq] if frames.shape[1] >= seq else None}

    def on_predict_epoch_end(self) -> None:
        self._raise_if_bad_eval_input("predict")

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        fused = {"fused": True} if hp.fast else {}     # one kernel for all parameters
        opt = OPTIMIZERS[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, **fused)
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
