"""Helpers shared by the test modules (imported as ``from helpers import ...``; pytest's default
"prepend" import mode puts tests/ on sys.path, since tests/ has no __init__.py)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from convrnn.layers import RecurrentOp

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these maps are tiny, and on a loaded 2-core machine two threads make
    each convolution much slower; restored after the module (import it into a test module to use it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(module, std=0.5):
    """Signed random weights everywhere, so that no block (zero peepholes or flow outputs, positive
    Hadamard weights, constant forget biases) can hide behind its initialisation."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def load_config(*parts):
    """A YAML config under configs/, e.g. ``load_config("msrnn", "trajgru")``."""
    *folders, stem = parts
    return yaml.safe_load(CONFIGS.joinpath(*folders, f"{stem}.yaml").read_text())


# -- hand computation helpers ----------------------------------------------------------------
def in_blocks(conv, x, n):
    """W_b * x + b_b for each of the n blocks of a fused convolution (no bias if it has none)."""
    w, b = conv.weight, conv.bias
    c = w.shape[0] // n
    return [F.conv2d(x, w[i * c:(i + 1) * c], None if b is None else b[i * c:(i + 1) * c],
                     padding=w.shape[-1] // 2) for i in range(n)]


def rec_blocks(op, h):
    """U_b ∘ h for each block of a RecurrentOp, in block order: conv blocks take consecutive
    slices of op.conv.weight, Hadamard blocks consecutive rows of op.weight."""
    out, ci, hi, c = [], 0, 0, op.channels
    for kind in op.kinds:
        if kind == "conv":
            w = op.conv.weight[ci * c:(ci + 1) * c]
            out.append(F.conv2d(h, w, padding=w.shape[-1] // 2))
            ci += 1
        else:
            out.append(op.weight[hi] * h)
            hi += 1
    return out


def hadamard_blocks(module):
    """Hadamard blocks of every RecurrentOp inside ``module``."""
    return sum(m.n_hadamard for m in module.modules() if isinstance(m, RecurrentOp))


# -- costs -----------------------------------------------------------------------------------
class Count(TorchDispatchMode):
    """Elements of every aten.mul of two non-scalar tensors, and convolution MACs; unlike
    convrnn.cost.count_ops it does not count the products inside grid_sample."""

    def __init__(self):
        super().__init__()
        self.products = 0
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.mul and all(
                isinstance(a, torch.Tensor) and a.dim() > 0 for a in args[:2]):
            self.products += out.numel()
        if func.overloadpacket is torch.ops.aten.convolution:
            x, w, transposed = args[0], args[1], args[6]
            per = x[0, 0].numel() if transposed else out[0, 0].numel()  # input / output pixels
            self.macs += w.numel() * per * x.shape[0]
        return out


# -- training --------------------------------------------------------------------------------
def moving_square(batch=2, steps=6, size=16, channels=1):
    """Moving-MNIST-like data: a bright 4x4 square bouncing across a dark frame."""
    frames = torch.zeros(batch, steps, channels, size, size)
    for b in range(batch):
        y, x, dy, dx = 2 + 3 * b, 1 + 2 * b, 1, 2
        for t in range(steps):
            frames[b, t, :, y:y + 4, x:x + 4] = 1.0
            if not 0 <= y + dy <= size - 4:
                dy = -dy
            if not 0 <= x + dx <= size - 4:
                dx = -dx
            y, x = y + dy, x + dx
    return frames


def mse_loss(pred):
    return F.mse_loss(pred.outputs, pred.targets)


def train_losses(model, frames, teacher, lr, steps=30, loss_fn=mse_loss):
    """Adam for ``steps`` steps on one fixed batch; the loss of every step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(frames, teacher))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def fit_small(tmp_path: Path, dataset: str, stem: str) -> dict:
    """``convrnn fit --config configs/<dataset>/<stem>.yaml --data.root DIR`` for 2 steps on a small dataset in
    the real format, the net narrowed to 4 channels (16x16 frames) by a second config; checks the run and
    returns its metrics.json."""
    import json

    import numpy as np

    from convrnn.lightning_cli import cli_main
    from formats import SMALL_DATASETS

    root = tmp_path / "data"
    root.mkdir()
    extra = SMALL_DATASETS[dataset](root)
    net = load_config(dataset, stem)["model"]["net"]
    narrow = tmp_path / "narrow.yaml"    # a second config replaces the net: 4 channels, 16x16 frames
    small = {**net, "channels": 4, "frame_size": [32, 32] if dataset == "taxibj" else [16, 16]}
    narrow.write_text(yaml.safe_dump({"model": {"net": small}}))
    args = ["fit", "--config", str(CONFIGS / dataset / f"{stem}.yaml"), "--config", str(narrow),
            "--data.root", str(root), "--run_dir", str(tmp_path / "runs"),
            "--data.batch_size", "1", "--data.num_workers", "0", "--trainer.max_steps", "2",
            "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]
    assert cli_main(args) == 0
    (metrics,) = (tmp_path / "runs").rglob("*-fit/metrics.json")   # runs/<config path>/<time>-fit
    record = json.loads(metrics.read_text())
    assert np.isfinite(record["mse"]) and len(record["mse_per_frame"]) == net["out_len"]
    assert record["config"]["data"]["init_args"]["root"] == str(root)
    protocol = record["data_protocol"]       # the DataModule's protocol, with the test's overrides
    assert protocol["name"] == load_config(dataset, stem)["data"]["init_args"].get("protocol", "default")
    assert set(protocol) == {"name", "source", "settings", "overrides", "unverified"}
    return record
