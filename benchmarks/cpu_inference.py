"""CPU inference speed of the light cells: one streaming step at batch 1, eager PyTorch,
torch.compile (inductor, CPU) and ONNX Runtime, next to the multiplication saving `convrnn cost` predicts.

    python benchmarks/cpu_inference.py                       # everything (about 15-25 minutes on 2 cores)
    python benchmarks/cpu_inference.py --settings cell --backends eager onnxruntime --cells convlstm

Settings:
- ``stack``: a 2-layer x 64-channel stack, k5, patch 4, 64x64 one-channel frames (16x16 states); one
  step = codec + 2 cells + readout (``RecurrentStack.step``), frames/s = steps/s.
- ``cell``: the cells.md §4 counting setting, one cell alone: C_x = C = 64, k3, 16x16 state,
  per-position Hadamard weights.

For each cell family the three variants (conv, indconv, ind) are timed in interleaved rounds (every
round times each variant once, in a rotating order, so that a change of load on a shared machine hits
them alike); the time is the best round's mean step time (other processes only ever add time).  "saving" is
1 - t_variant / t_conv; "mults saving" is 1 - mults_variant / mults_conv from convrnn.cost (per step,
batch 1).  Results go to stdout as a markdown table and to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convrnn import create_cell, create_model  # noqa: E402
from convrnn.cost import cell_cost, model_cost  # noqa: E402
from convrnn.export import export_onnx, flatten_state, rebuild_state  # noqa: E402

CELLS = ("convlstm", "convgru", "convjanet", "gem")
VARIANTS = ("conv", "indconv", "ind")
BACKENDS = ("eager", "compile", "onnxruntime")
SETTINGS = ("stack", "cell")


# -- the networks ------------------------------------------------------------------------------
class CellStep(nn.Module):
    """One cell step with its state as flat tensors: (x, *state) -> (h, *state) (h is also state.h)."""

    def __init__(self, cell: nn.Module, template):
        super().__init__()
        self.cell, self.template = cell, template

    def forward(self, x, *state):
        h, new, _ = self.cell(x, rebuild_state(self.template, iter(state)))
        return (h, *[t for _, t in flatten_state(new)])


class StackStep(nn.Module):
    """One stack step with its state as flat tensors: (frame, *state) -> (prediction, *state)."""

    def __init__(self, model: nn.Module, template):
        super().__init__()
        self.model, self.template = model, template

    def forward(self, frame, *state):
        layers, m = rebuild_state(self.template, iter(state))
        pred, new = self.model.step(frame, (layers, m, None))
        return (pred, *[t for _, t in flatten_state([new.layers, new.m])])


def build(setting: str, cell: str, variant: str):
    """(module taking (input, *state) -> (output, *state), input, initial state, mults per step)."""
    torch.manual_seed(0)
    if setting == "stack":
        model = create_model("stack", cell=cell, layers=2, channels=64, kernel=5, patch=4, frame_size=(64, 64),
                             in_len=1, out_len=1, cell_kw={"recurrent": variant}).eval()
        x = torch.rand(1, 1, 64, 64)
        with torch.no_grad():
            _, state = model.step(x, None)
        template = [state.layers, state.m]
        mults = model_cost(model)["mults"]              # in_len + out_len - 1 = 1 step, codec included
        step = StackStep(model, template)
    else:
        c = create_cell(cell, in_channels=64, channels=64, kernel=3, recurrent=variant, size=(16, 16)).eval()
        x = torch.rand(1, 64, 16, 16)
        with torch.no_grad():
            _, template, _ = c(x)
        mults = cell_cost(c, 16, 16)["mults"]
        step = CellStep(c, template)
    state = [torch.rand_like(t) * 0.5 for _, t in flatten_state(template)]
    return step.eval(), x, state, mults


# -- the backends ------------------------------------------------------------------------------
def eager_runner(step, x, state):
    def run(n):
        s = state
        with torch.inference_mode():
            for _ in range(n):
                out = step(x, *s)
                s = out[1:]
    return run


def compile_runner(step, x, state):
    # every variant is another module through the same forward: let dynamo keep one graph per module
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 512))
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        for _ in range(3):
            compiled(x, *state)                          # compile and warm up
    return eager_runner(compiled, x, state)


def onnx_runner(step, x, state, threads):
    import onnxruntime as ort
    path = Path(tempfile.mkdtemp()) / "step.onnx"
    names = [f"s{i}" for i in range(len(state))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, (x, *state), str(path), input_names=["x", *names],
                          output_names=["y", *[f"n{i}" for i in range(len(state))]], opset_version=18, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    read = {i.name for i in session.get_inputs()}          # the exporter drops state the step never reads
    feed0 = {"x": x.numpy(), **{n: t.numpy() for n, t in zip(names, state) if n in read}}
    with torch.inference_mode():
        want = step(x, *state)
    got = session.run(None, feed0)
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))
    if diff > 1e-4:
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {diff:.2e}: the timing would be meaningless")

    def run(n):
        feed = dict(feed0)
        for _ in range(n):
            out = session.run(None, feed)
            feed.update((k, v) for k, v in zip(names, out[1:]) if k in read)
    return run


# -- timing ------------------------------------------------------------------------------------
def time_group(runners: dict, steps: int, rounds: int) -> dict:
    """Best (minimum) over interleaved rounds of the mean step time (seconds) of each runner: on a
    shared machine the other processes only ever add time, so the fastest round is the closest to
    the cost of the step itself."""
    for run in runners.values():
        run(max(2, steps // 4))                          # warm up
    times = {k: [] for k in runners}
    keys = list(runners)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            runners[k](steps)
            times[k].append((time.perf_counter() - t0) / steps)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results = []
    for setting in a.settings:
        for cell in a.cells:
            built = {v: build(setting, cell, v) for v in VARIANTS}
            row = {v: {"mults": built[v][3]} for v in VARIANTS}
            for backend in a.backends:
                runners = {}
                for v, (step, x, state, _) in built.items():
                    if backend == "eager":
                        runners[v] = eager_runner(step, x, state)
                    elif backend == "compile":
                        runners[v] = compile_runner(step, x, state)
                    else:
                        runners[v] = onnx_runner(step, x, state, a.threads)
                for v, t in time_group(runners, a.steps, a.rounds).items():
                    row[v][backend] = t
            for v in VARIANTS:
                results.append({"setting": setting, "cell": cell, "variant": v, **row[v]})
            print_rows(results[-3:], a.backends)
    print(f"# load at the end {os.getloadavg()}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


def print_rows(rows: list[dict], backends: list[str]) -> None:
    """One line per variant; the last column compares each variant in its fastest backend with the
    conv variant in its fastest backend (what a deployment would pick)."""
    base = rows[0]
    best_base = min(base[b] for b in backends)
    for r in rows:
        ms = 1 - r["mults"] / base["mults"]
        parts = [f"{r['setting']:5s} {r['cell']:9s} {r['variant']:7s} mults {r['mults'] / 1e6:7.2f} M "
                 f"(saving {ms:6.1%})"]
        parts += [f"{b} {r[b] * 1e3:6.2f} ms ({1 - r[b] / base[b]:6.1%})" for b in backends]
        fastest = min(backends, key=lambda b: r[b])
        saving = 1 - r[fastest] / best_base
        parts.append(f"fastest {fastest} {saving:6.1%}" + (f", {saving / ms:4.2f}x mults saving" if ms > 0 else ""))
        print(" | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
