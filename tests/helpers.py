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


# docs/models.md §1, written here and not read from the code under test: the kind of the recurrent
# term U ∘ h of a gate ("g") and of a candidate ("c") under each variant.
VARIANT_KINDS = {
    "conv": {"g": "conv", "c": "conv"},             # Conv*: every recurrent term a convolution
    "indconv": {"g": "hadamard", "c": "conv"},      # ConvIndConv*: gates Hadamard, candidates convolutions
    "ind": {"g": "hadamard", "c": "hadamard"},      # ConvInd*: every recurrent term a Hadamard product
}


def rec_blocks(op, h, variant, roles):
    """U_b ∘ h for each block of a RecurrentOp, in block order.  ``roles`` names each block a gate
    ("g") or a candidate ("c") as the cell's equations do (ConvLSTM's i, f, o, g: "gggc"), and
    ``variant`` says which of them are convolutions (VARIANT_KINDS), so a module whose blocks have
    other kinds fails here: conv blocks take consecutive C-row slices of op.conv.weight, Hadamard
    blocks consecutive rows of op.weight, and both must be used up exactly."""
    kinds = [VARIANT_KINDS[variant][r] for r in roles]
    out, ci, hi, c = [], 0, 0, op.channels
    for kind in kinds:
        if kind == "conv":
            assert op.conv is not None, f"{variant}: expected convolution blocks {roles!r}, the module has none"
            w = op.conv.weight[ci * c:(ci + 1) * c]
            out.append(F.conv2d(h, w, padding=w.shape[-1] // 2))
            ci += 1
        else:
            assert op.weight is not None, f"{variant}: expected Hadamard blocks {roles!r}, the module has none"
            out.append(op.weight[hi] * h)
            hi += 1
    n_conv = 0 if op.conv is None else op.conv.weight.shape[0] // c
    n_had = 0 if op.weight is None else op.weight.shape[0]
    assert (ci, hi) == (n_conv, n_had), (f"{variant} {roles!r}: expected {ci} convolution and {hi} Hadamard "
                                         f"blocks, the module has {n_conv} and {n_had}")
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
