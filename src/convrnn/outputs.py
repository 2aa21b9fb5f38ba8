"""What a run leaves on disk besides checkpoints and logs.

- ``metrics.json`` (after ``test``): the model's scalars and per-lead-time lists, the same for the
  copy-last-frame baseline (``baseline_*``) and for an all-black frame (``blank_*``: on Moving MNIST a
  blank frame already beats copy-last), the SSIM convention, the data protocol (``data_protocol``: the
  DataModule's ``protocol``, see docs/data.md), the checkpoint and the config.  For radar data also the
  nowcasting scores of all three: ``pod``, ``far``, ``csi``, ``hss`` (one value per threshold of
  ``skill_thresholds_mmh``), their ``*_per_frame`` (lead time x threshold), the contingency counts,
  ``b_mse``, ``b_mae`` and their ``*_per_frame``.
- ``metrics_per_frame.png`` (after ``test``): MSE and SSIM against the predicted frame index,
  model vs baseline (the literature's standard figure); for radar data also CSI per threshold and
  B-MSE.
- ``examples/`` (after ``test``): an animated GIF and a PNG strip of input | truth | prediction for the
  first few test sequences (see :func:`write_examples`).
- ``predictions/`` (after ``predict``): ``predictions.npy`` (N, out_len, C, H, W) float32, with
  ``inputs.npy`` and ``targets.npy`` beside it, and for the first few sequences an animated GIF
  and a PNG strip of input | truth | prediction.

The functions are plain (usable on any arrays); :class:`RunOutputs` is the Lightning callback that
calls them at the end of ``test`` and ``predict`` on global rank 0.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

SCALARS = ("mse", "mae", "ssim", "psnr")


def _plain(value: Any) -> Any:
    """Tensors and numpy values -> floats / lists of floats (JSON cannot hold NaN: it becomes null)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist() if value.ndim else value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


PREFIXES = {"model": "", "baseline": "baseline_", "blank": "blank_"}
SKILLS = ("pod", "far", "csi", "hss")   # one value per threshold: always a list in metrics.json


def metrics_record(model: dict, baseline: dict, convention: str, checkpoint: str | None,
                   config: dict | None, num_sequences: int | None = None,
                   convention_text: str | None = None, blank: dict | None = None,
                   nowcast: dict | None = None, protocol: dict | None = None) -> dict:
    """Flatten the model's and the baseline's ``PredictionMetrics.compute()`` results into one dict:
    ``mse``, ``mse_per_frame``, ..., ``baseline_mse``, ``baseline_mse_per_frame``, ...
    ``convention`` is the SSIM convention's name, ``convention_text`` the metrics' full description;
    ``blank``, when given, the scores of an all-zero prediction (``blank_mse``, ...); ``nowcast`` the
    ``NowcastScores.compute()`` results of ``model``, ``baseline`` and ``blank`` with ``thresholds_mmh``
    and ``zr`` (``csi``, ``baseline_csi``, ..., ``skill_thresholds_mmh``); ``protocol`` the data's."""
    record: dict[str, Any] = {"ssim_convention": convention, "conventions": convention_text,
                              "checkpoint": checkpoint, "num_sequences": num_sequences,
                              "data_protocol": protocol}
    for name, results in (("model", model), ("baseline", baseline), ("blank", blank or {})):
        for key, value in results.items():
            record[PREFIXES[name] + key] = _plain(value)
    if nowcast:
        record["skill_thresholds_mmh"], record["zr"] = nowcast["thresholds_mmh"], nowcast["zr"]
        record["skill_thresholds_pixel"] = _plain(nowcast["model"]["thresholds"].reshape(-1))
        record["skill_convention"] = ("event: value >= threshold (rain rate converted with Z = a R^b, zr); "
                                      "counts summed over the masked-in pixels of the whole test set; "
                                      "B-MSE/B-MAE: HKO-7 weights 1, 1, 2, 5, 10, 30, pixels in [0, 1], "
                                      "summed per frame")
        for name, prefix in PREFIXES.items():
            for key, value in nowcast[name].items():
                if key != "thresholds":
                    record[prefix + key] = _plain(value.reshape(-1) if key in SKILLS else value)
    record["config"] = config
    return record


def write_metrics(run_dir: str | Path, record: dict) -> Path:
    """``run_dir/metrics.json``, written atomically (a temporary file renamed over it)."""
    path = Path(run_dir) / "metrics.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def plot_per_frame(run_dir: str | Path, record: dict) -> Path:
    """Per-lead-time curves of MSE and SSIM, model vs the copy-last-frame baseline (and the blank
    frame when the record has it) (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    radar = bool(record.get("csi_per_frame"))
    fig, axes = plt.subplots(2 if radar else 1, 2, figsize=(9, 6.8 if radar else 3.4), squeeze=False)
    if radar:
        _plot_nowcast(axes[1], record)
    for ax, name in zip(axes[0], ("mse", "ssim")):
        for prefix, label, style in (("", "model", "-o"), ("baseline_", "copy last frame", "--s"),
                                     ("blank_", "blank frame", ":^")):
            values = record.get(f"{prefix}{name}_per_frame")
            if values:
                ax.plot(range(1, len(values) + 1), [np.nan if v is None else v for v in values], style,
                        label=label, markersize=3)
        ax.set_xlabel("predicted frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{name.upper()}" + (" per frame" if name == "mse" else f" ({record['ssim_convention']})"))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / "metrics_per_frame.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_nowcast(axes, record: dict) -> None:
    """CSI per lead time at each threshold (model solid, copy-last dashed) and B-MSE per lead time."""
    from matplotlib.ticker import MaxNLocator

    ax = axes[0]
    for k, rate in enumerate(record["skill_thresholds_mmh"]):
        for prefix, style in (("", "-o"), ("baseline_", "--")):
            values = [row[k] for row in record[f"{prefix}csi_per_frame"]]
            ax.plot(range(1, len(values) + 1), [np.nan if v is None else v for v in values], style,
                    color=f"C{k}", markersize=3, label=f">= {rate:g} mm/h" if not prefix else None)
    ax.set_ylabel("CSI (solid: model, dashed: copy last)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for prefix, label, style in (("", "model", "-o"), ("baseline_", "copy last frame", "--s"),
                                 ("blank_", "blank frame", ":^")):
        values = record.get(f"{prefix}b_mse_per_frame")
        if values:
            ax.plot(range(1, len(values) + 1), values, style, label=label, markersize=3)
    ax.set_ylabel("B-MSE per frame")
    ax.legend()
    for ax in axes:
        ax.set_xlabel("predicted frame")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)


def _to_image(frame: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 (H, W) for C != 3 (first channel) or (H, W, 3) for C == 3."""
    frame = np.clip(np.nan_to_num(frame), 0.0, 1.0)
    img = frame.transpose(1, 2, 0) if frame.shape[0] == 3 else frame[0]
    return (img * 255).round().astype(np.uint8)


def _enlarge(img: np.ndarray, min_height: int = 128) -> np.ndarray:
    """Nearest-neighbour upscaling of small frames so a GIF is viewable."""
    k = max(1, min_height // img.shape[0])
    return img.repeat(k, 0).repeat(k, 1) if k > 1 else img


def _row(frames: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Panels side by side with a white gap."""
    pad = np.full((frames[0].shape[0], gap) + frames[0].shape[2:], 255, np.uint8)
    parts = []
    for i, f in enumerate(frames):
        parts += [pad, f] if i else [f]
    return np.concatenate(parts, axis=1)


def write_examples(out_dir: str | Path, inputs: np.ndarray, targets: np.ndarray | None,
                   predictions: np.ndarray, count: int = 4, fps: int = 4, first: int = 0) -> list[Path]:
    """For the first ``count`` sequences: ``example_<first + i>.gif`` (panels input | truth | prediction
    over t = 0 .. in_len + out_len - 1; the input panel holds its last frame once the
    prediction starts, the truth and prediction panels show the observed frames first) and
    ``example_<i>.png`` (rows input, truth, prediction, one column per frame)."""
    import imageio.v2 as imageio
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    in_len, out_len = inputs.shape[1], predictions.shape[1]
    for i in range(min(count, len(predictions))):
        x = [_to_image(f) for f in inputs[i]]
        y = [_to_image(f) for f in targets[i]] if targets is not None else None
        p = [_to_image(f) for f in predictions[i]]
        truth = x + (y if y is not None else [np.zeros_like(x[0])] * out_len)
        model = x + p
        held = x + [x[-1]] * out_len
        gif = [_row([_enlarge(f) for f in (held[t], truth[t], model[t])]) for t in range(in_len + out_len)]
        gif_path = out_dir / f"example_{first + i:03d}.gif"
        imageio.mimsave(gif_path, gif, duration=1000 / fps, loop=0)

        rows = [("input", x), ("truth", y), ("prediction", p)]
        rows = [(name, r) for name, r in rows if r is not None]
        cols = max(len(r) for _, r in rows)
        fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.0), squeeze=False)
        for r, (name, frames) in enumerate(rows):
            for c in range(cols):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_frame_on(False)
                if c < len(frames):
                    ax.imshow(frames[c], cmap=None if frames[c].ndim == 3 else "gray", vmin=0, vmax=255)
            axes[r][0].set_ylabel(name, fontsize=8)
        fig.tight_layout(pad=0.2)
        png_path = out_dir / f"example_{first + i:03d}.png"
        fig.savefig(png_path, dpi=80)
        plt.close(fig)
        written += [gif_path, png_path]
    return written


class RunOutputs(Callback):
    """Writes ``metrics.json``, the per-lead-time plot and example GIF/PNGs of the first test
    sequences after ``test``, and the predictions + example GIF/PNGs after ``predict``, into
    ``run_dir`` (global rank 0; with several predict processes each rank writes its own
    ``predictions_rank<r>.npy``).

    Reads ``pl_module.test_results`` (set by :class:`convrnn.train.PredictionTask` at the end of the
    test epoch) and the dicts that ``predict_step`` returns.
    """

    def __init__(self, run_dir: str | Path, config: dict | None = None, examples: int = 4):
        self.run_dir = Path(run_dir)
        self.config = config
        self.examples = examples
        self._predicted: list[dict] = []
        self._examples: dict | None = None
        self.last_record: dict | None = None

    # -- test ------------------------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        self._examples = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and isinstance(outputs, dict):
            self._examples = {k: v[:self.examples].detach().float().cpu().numpy() for k, v in outputs.items()}

    def on_test_end(self, trainer, pl_module) -> None:
        results = getattr(pl_module, "test_results", None)
        if not trainer.is_global_zero or results is None:
            return
        if self._examples is not None and self.examples > 0:
            out = self.run_dir / "examples"
            out.mkdir(parents=True, exist_ok=True)
            write_examples(out, self._examples["inputs"], self._examples["targets"],
                           self._examples["predictions"], self.examples)
        record = metrics_record(results["model"], results["baseline"], results["convention"],
                                trainer.ckpt_path, self.config, results.get("num_sequences"),
                                results.get("convention_text"), results.get("blank"), results.get("nowcast"),
                                getattr(trainer.datamodule, "protocol", None))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(self.run_dir, record)
        plot_per_frame(self.run_dir, record)
        self.last_record = record

    # -- predict ---------------------------------------------------------------------------
    def on_predict_start(self, trainer, pl_module) -> None:
        self._predicted = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._predicted.append({k: (v.detach().float().cpu().numpy() if v is not None else None)
                                for k, v in outputs.items()})

    def on_predict_end(self, trainer, pl_module) -> None:
        if not self._predicted:
            return
        out = self.run_dir / "predictions"
        out.mkdir(parents=True, exist_ok=True)
        suffix = "" if trainer.world_size == 1 else f"_rank{trainer.global_rank}"
        arrays = {}
        for key in ("inputs", "targets", "predictions"):
            parts = [b[key] for b in self._predicted]
            if all(p is not None for p in parts):
                arrays[key] = np.concatenate(parts)
                np.save(out / f"{key}{suffix}.npy", arrays[key])
        if trainer.is_global_zero and self.examples > 0:
            write_examples(out, arrays["inputs"], arrays.get("targets"), arrays["predictions"], self.examples)
        self._predicted = []
