"""Moving MNIST generation speed: sequences per second, in one process.

    python3 benchmarks/data_speed.py                      # CPU, 20x64x64, batches of 64
    python3 benchmarks/data_speed.py --device cuda        # render on a GPU
    python3 benchmarks/data_speed.py --loader             # through MovingMNIST + DataLoader (CPU)

Reports the median (and best) rate over repeats of batches of ``--batch-size`` fresh sequences (initial conditions drawn,
trajectories bounced, digits pasted and max-composited, float32 / 255).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from convrnn.data import MovingMNIST, generate_moving_mnist, load_mnist_digits
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    digits = torch.as_tensor(load_mnist_digits("train")).to(args.device)
    generator = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    if args.loader:
        dataset = MovingMNIST(digits.cpu(), args.batch_size * args.repeats, args.seq_len, args.image_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_sequences)
        rates, start = [], time.perf_counter()
        for batch in loader:
            rates.append(len(batch) / (time.perf_counter() - start))
            start = time.perf_counter()
    else:
        rates = []
        for _ in range(args.repeats + 3):
            start = time.perf_counter()
            generate_moving_mnist(digits, args.batch_size, args.seq_len, args.image_size, generator=generator)
            sync()
            rates.append(args.batch_size / (time.perf_counter() - start))
        rates = rates[3:]  # warm-up
    where = "DataLoader, " if args.loader else ""
    print(f"{statistics.median(rates):.0f} sequences/s median, {max(rates):.0f} best "
          f"({where}{args.seq_len}x{args.image_size}x{args.image_size}, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
