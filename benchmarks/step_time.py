"""Time of one forward + backward pass of a config's network, several configs side by side.

    python3 benchmarks/step_time.py configs/msrnn/ms_predrnn.yaml configs/msrnn/ms_preciplstm.yaml
    python3 benchmarks/step_time.py configs/openstl/*.yaml --batch 16 --device cuda

Each config's ``model.net`` is built with its own weights (seed 0) and run on random frames
(B, in_len + out_len, C, H, W) with a scheduled-sampling mask drawn at p = 0.5 (every step of the
time loop runs, as in training), then ``backward`` of the mean squared error of every emitted frame.
The configs take turns, round after round (one warm-up round first), so a machine whose load
changes during the run slows them alike; the table gives the median and the best round of each,
and each median over the first config's, in wall-clock seconds and in the process's CPU seconds
(``time.process_time``: on a shared machine with ``--threads 1`` the CPU time leaves out the time
other processes held the core, so it is the steadier number).  No optimizer step and no data
loading: this is the network's own cost.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import yaml

from convrnn.registry import model_from_config
from convrnn.schedules import sample_mask


def build(path: str, device: torch.device):
    net_cfg = yaml.safe_load(Path(path).read_text())["model"]["net"]
    torch.manual_seed(0)
    return model_from_config(net_cfg).to(device)


def one_pass(net, frames: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one forward + backward (device work finished)."""
    sync = torch.cuda.synchronize if frames.device.type == "cuda" else (lambda: None)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    pred = net(frames, mask)
    (pred.outputs - pred.targets).square().mean().backward()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="YAML configs with a model.net section")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nets = [build(p, device) for p in args.configs]
    inputs = []
    for net in nets:
        g = torch.Generator().manual_seed(1)
        frames = torch.rand(args.batch, net.seq_len, net.frame_channels, *net.frame_size, generator=g)
        mask = sample_mask(1.0, 0.5, args.batch, net.in_len, net.out_len, generator=g)
        inputs.append((frames.to(device), mask.to(device)))
    times: list[list[tuple[float, float]]] = [[] for _ in nets]
    for round_ in range(args.repeats + 1):
        this_round = []
        for net, (frames, mask) in zip(nets, inputs):
            this_round.append(one_pass(net, frames, mask))
            net.zero_grad(set_to_none=True)
        if round_:    # round 0 warms up
            for t, seconds in zip(times, this_round):
                t.append(seconds)
        print(f"round {round_}{' (warm-up)' if not round_ else ''}: " + ", ".join(
            f"{Path(p).stem} {w:.2f} s ({c:.2f} s CPU)" for p, (w, c) in zip(args.configs, this_round)), flush=True)
    wall = [[w for w, _ in t] for t in times]
    cpu = [[c for _, c in t] for t in times]
    print(f"\nforward + backward of the network, batch {args.batch}, device {args.device}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print("| config | median s | best s | median / first | median CPU s | best CPU s | CPU median / first |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for path, w, c in zip(args.configs, wall, cpu):
        print(f"| {path} | {statistics.median(w):.3f} | {min(w):.3f} | {statistics.median(w) / statistics.median(wall[0]):.2f} "
              f"| {statistics.median(c):.3f} | {min(c):.3f} | {statistics.median(c) / statistics.median(cpu[0]):.2f} |")


if __name__ == "__main__":
    main()
