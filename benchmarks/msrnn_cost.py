"""MS-RNN cost benchmark: every flat / multi-scale pair of configs/msrnn/ at several frame sizes.

For each cell with both ``configs/msrnn/<cell>.yaml`` (flat stack) and ``configs/msrnn/ms_<cell>.yaml``
(MS-RNN pyramid), and each frame size (the configs' ``frame_size`` overridden), reports from
:func:`convrnn.cost.model_cost` (batch 1, one whole 10 -> 10 sequence = 19 steps, teacher forcing):
parameters, MACs, activation memory (bytes saved for backward), and the MS / flat ratios; on CUDA
also the peak training memory (``torch.cuda.max_memory_allocated`` over one forward + backward step,
batch 1, parameters and gradients included) and the median step time.

reference/msrnn.md §2 expects identical parameters, MACs ratio ~0.44 (0.4375 for the recurrent
layers alone) and memory ratio 0.45-0.55.

    python benchmarks/msrnn_cost.py                                  # print the markdown table
    python benchmarks/msrnn_cost.py --sizes 64 --cells convlstm      # a subset
    python benchmarks/msrnn_cost.py --out docs/benchmarks.md         # append a dated section
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from convrnn import model_from_config

ROOT = Path(__file__).resolve().parents[1]


def find_pairs(folder: Path, cells: list[str] | None = None) -> list[tuple[str, Path, Path]]:
    """(cell, flat config, ms config) for every ``<cell>.yaml`` that has an ``ms_<cell>.yaml``."""
    pairs = []
    for flat in sorted(folder.glob("*.yaml")):
        ms = folder / f"ms_{flat.name}"
        if flat.stem.startswith("ms_") or not ms.exists():
            continue
        if cells is None or flat.stem in cells:
            pairs.append((flat.stem, flat, ms))
    return pairs


def load_net(path: Path, size: int) -> torch.nn.Module:
    cfg = yaml.safe_load(path.read_text())
    net = dict(cfg["model"]["net"] if "net" in cfg.get("model", {}) else cfg["model"])
    net["frame_size"] = [size, size]
    return model_from_config(net)


def static_cost(model) -> dict:
    from convrnn.cost import model_cost  # params, macs, mults, activation_bytes (docs/cost.md)
    return model_cost(model, batch=1)


def cuda_train_step(model, steps: int = 5) -> dict:
    """Peak memory (GB) and median time (ms) of one forward + backward training step, batch 1."""
    model = model.cuda().train()
    h, w = model.frame_size
    x = torch.rand(1, model.seq_len, model.frame_channels, h, w, device="cuda")
    mask = torch.ones(1, model.seq_len - 1, dtype=torch.bool, device="cuda")

    def step():
        pred = model(x, mask)
        loss = F.mse_loss(pred.outputs, pred.targets) + sum(pred.aux.values())
        loss.backward()
        model.zero_grad(set_to_none=False)

    step()  # warm-up: allocator, cuDNN autotuning, gradient buffers
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 1e9
    model.cpu()
    torch.cuda.empty_cache()
    return {"peak_gb": peak, "step_ms": 1e3 * statistics.median(times)}


def measure(path: Path, size: int, cuda: bool) -> dict:
    model = load_net(path, size)
    out = dict(static_cost(model))
    if cuda:
        out.update(cuda_train_step(model))
    del model
    gc.collect()
    return out


def ratio(a, b) -> str:
    return f"{b / a:.3f}" if a else "-"


def table(rows: list[dict], cuda: bool) -> str:
    head = ["cell", "size", "params flat", "params MS", "MACs flat (G)", "MACs MS (G)", "MACs MS/flat",
            "act. mem flat (MB)", "act. mem MS (MB)", "mem MS/flat"]
    if cuda:
        head += ["peak train flat (GB)", "peak train MS (GB)", "peak MS/flat", "step flat (ms)", "step MS (ms)",
                 "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['cell']} | {r['size']} | failed: {r['error']} |" + " |" * (len(head) - 3))
            continue
        f, m = r["flat"], r["ms"]
        cells = [r["cell"], f"{r['size']}x{r['size']}", f"{f['params']:,}", f"{m['params']:,}",
                 f"{f['macs'] / 1e9:.2f}", f"{m['macs'] / 1e9:.2f}", ratio(f["macs"], m["macs"]),
                 f"{f['activation_bytes'] / 1e6:.0f}", f"{m['activation_bytes'] / 1e6:.0f}",
                 ratio(f["activation_bytes"], m["activation_bytes"])]
        if cuda:
            cells += [f"{f['peak_gb']:.2f}", f"{m['peak_gb']:.2f}", ratio(f["peak_gb"], m["peak_gb"]),
                      f"{f['step_ms']:.1f}", f"{m['step_ms']:.1f}", f"{f['step_ms'] / m['step_ms']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.system()})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=Path, default=ROOT / "configs" / "msrnn", help="folder of flat/ms_ pairs")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="frame sizes (square)")
    p.add_argument("--cells", nargs="+", default=None, help="only these config stems (default: every pair)")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA training-step measurement")
    p.add_argument("--out", type=Path, default=None, help="append the table, command and machine to this file")
    args = p.parse_args(argv)
    pairs = find_pairs(args.configs, args.cells)
    if not pairs:
        p.error(f"no <cell>.yaml + ms_<cell>.yaml pairs in {args.configs}")
    cuda = torch.cuda.is_available() and not args.no_cuda
    rows = []
    for cell, flat, ms in pairs:
        for size in args.sizes:
            t0 = time.perf_counter()
            try:
                rows.append({"cell": cell, "size": size, "flat": measure(flat, size, cuda),
                             "ms": measure(ms, size, cuda)})
            except (RuntimeError, ValueError, MemoryError) as e:  # report and go on with the other cells
                rows.append({"cell": cell, "size": size, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
            print(f"[{cell} {size}x{size}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    text = table(rows, cuda)
    print(text)
    if args.out is not None:
        command = "python benchmarks/msrnn_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
        section = (f"\n## MS-RNN vs flat stack: cost ({datetime.date.today().isoformat()})\n\n"
                   f"Command: `{command.strip()}`  \nMachine: {machine()}  \n"
                   "Per sequence (10 -> 10, 19 steps), batch 1, teacher forcing; MACs = multiply-accumulates of "
                   "convolutions (1 MAC = 2 FLOPs); activation memory = bytes saved for backward (each storage once, "
                   "parameters excluded); measured by convrnn.cost.model_cost."
                   + (" Peak training memory: torch.cuda.max_memory_allocated over one forward + backward step"
                      " (parameters and gradients included); step time: median of 5." if cuda else "")
                   + f"\n\n{text}\n")
        with args.out.open("a") as fh:
            fh.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
