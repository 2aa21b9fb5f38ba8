"""Moving MNIST generation speed: sequences per second, in one process.

    python3 benchmarks/data_speed.py                      # CPU, 20x64x64, batches of 64
    python3 benchmarks/data_speed.py --device cuda        # render on a GPU
    python3 benchmarks/data_speed.py --loader             # through MovingMNIST + DataLoader (CPU)
    python3 benchmarks/data_speed.py --loader --workers 2 # ... with 2 worker processes
    python3 benchmarks/data_speed.py --dtype float32      # frames converted to float32 / 255 on the CPU

Reports the median (and best) rate over repeats of batches of ``--batch-size`` fresh sequences (initial conditions drawn,
trajectories bounced, digits pasted and max-composited).  ``--dtype uint8`` (default) is what
MovingMNISTDataModule hands to training (the division by 255 happens on the training device);
``float32`` adds the conversion on the CPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from convrnn.data import MovingMNIST, load_mnist_digits, render, sample_motion
from convrnn.data.moving_mnist import collate_sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where to render: cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--loader", action="store_true", help="time MovingMNIST through a DataLoader instead")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (with --loader)")
    parser.add_argument("--dtype", choices=["uint8", "float32"], default="uint8",
                        help="uint8 frames (what MovingMNISTDataModule sends) or float32 in [0, 1]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    digits = torch.as_tensor(load_mnist_digits("train")).to(args.device)
    generator = torch.Generator(args.device).manual_seed(0)   # initial conditions drawn where they are rendered
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    if args.loader:
        dataset = MovingMNIST(digits.cpu(), args.batch_size * (args.repeats + 3), args.seq_len, args.image_size,
                              dtype=args.dtype)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_sequences,
                                             num_workers=args.workers)
        rates, start = [], time.perf_counter()
        for batch in loader:
            rates.append(len(batch) / (time.perf_counter() - start))
            start = time.perf_counter()
        rates = rates[3:]  # warm-up (and worker start-up)
    else:
        rates = []
        for _ in range(args.repeats + 3):
            start = time.perf_counter()
            motion = sample_motion(args.batch_size, 2, len(digits), generator)
            render(digits, motion, args.seq_len, args.image_size, scale=args.dtype == "float32")
            sync()
            rates.append(args.batch_size / (time.perf_counter() - start))
        rates = rates[3:]  # warm-up
    where = f"DataLoader with {args.workers} workers, " if args.loader else ""
    print(f"{statistics.median(rates):.0f} sequences/s median, {max(rates):.0f} best "
          f"({where}{args.dtype} {args.seq_len}x{args.image_size}x{args.image_size}, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
