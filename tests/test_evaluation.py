"""What PredictionTask logs when it validates, and training in bfloat16 on the CPU.

The validation values are checked against hand computations on the same frames (the model's free
run and the copy-last-frame baseline, each scored on the true future); bf16: ``frame_loss`` sums in
float32 whatever the dtype of the predictions (its docstring's promise), and ``precision="bf16-mixed"``
and ``"bf16-true"`` train on the CPU with the network computing in bfloat16 and a float32 loss."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import one_thread  # noqa: F401  (autouse fixture)
from test_train import NET, Squares, squares
from torch.utils.data import DataLoader

from convrnn.losses import frame_loss
from convrnn.metrics import PredictionMetrics
from convrnn.train import PredictionTask

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def quiet_trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)


def hand_scores(pred: torch.Tensor, future: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE and MAE summed over a frame's pixels, PSNR of the clipped prediction (capped at 100 dB),
    each averaged over frames and sequences (docs/training.md, metrics.py's module docstring)."""
    err = pred - future
    mse_pixel = (pred.clamp(0, 1) - future).square().mean((2, 3, 4)).clamp_min(1e-10)
    return {"mse": err.square().sum((2, 3, 4)).mean(), "mae": err.abs().sum((2, 3, 4)).mean(),
            "psnr": (10 * torch.log10(1 / mse_pixel)).mean()}


def test_validation_logs_the_model_and_the_copy_last_baseline_on_the_true_future():
    torch.manual_seed(0)
    task = PredictionTask(NET)
    data = squares(6, 1000)                                  # 6 sequences in batches of 4 and 2
    (logged,) = quiet_trainer().validate(task, DataLoader(data, batch_size=4), verbose=False)
    observed, future = data[:, :3], data[:, 3:]
    with torch.no_grad():
        pred = task.net(observed).future                     # free run from the 3 observed frames only
    copy_last = observed[:, 2:3].expand_as(future)           # the last observed frame, repeated
    for prefix, frames in (("val/", pred), ("val/baseline_", copy_last)):
        for key, want in hand_scores(frames, future).items():
            assert logged[prefix + key] == pytest.approx(want.item(), rel=1e-5), prefix + key
    # SSIM: the same metric object fed with the same frames (its values are tested in test_metrics.py)
    for prefix, frames in (("val/", pred), ("val/baseline_", copy_last)):
        metric = PredictionMetrics()
        metric.update(frames, future)
        assert logged[prefix + "ssim"] == pytest.approx(metric.compute()["ssim"].item(), rel=1e-5)
    assert logged["val/mse"] != pytest.approx(logged["val/baseline_mse"], rel=1e-3)   # two forecasts


# -- bfloat16 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mse", "l1", "l1+l2", "bce"])
def test_frame_loss_sums_bf16_predictions_in_float32(kind):
    torch.manual_seed(0)
    y = (torch.rand(3, 4, 1, 32, 32) * 0.98 + 0.01).bfloat16()
    x = torch.rand(3, 4, 1, 32, 32).bfloat16()
    loss = frame_loss(y, x, kind)
    assert loss.dtype == torch.float32
    # the same values exactly (bf16 -> float32 is exact), so the same float32 sums bit for bit;
    # summed in bf16 (8 bits of mantissa) the loss would be off by about 1 %
    torch.testing.assert_close(loss, frame_loss(y.float(), x.float(), kind), rtol=0, atol=0)


class Record(L.Callback):
    """The dtype of the network's predictions and of the training loss at every step."""

    def __init__(self):
        self.outputs, self.losses = [], []

    def on_fit_start(self, trainer, task):
        task.net.register_forward_hook(lambda mod, args, out: self.outputs.append(out.outputs.dtype))

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_training_on_the_cpu_keeps_a_float32_loss(precision):
    torch.manual_seed(0)
    task = PredictionTask(NET, lr=3e-3, schedule={"name": "teacher"})
    before = [p.detach().clone() for p in task.parameters()]
    record = Record()
    trainer = quiet_trainer(precision=precision, max_steps=4, limit_val_batches=0, callbacks=[record])
    trainer.fit(task, Squares())
    assert record.outputs == [torch.bfloat16] * 4            # the network computed in bfloat16 ...
    assert [loss.dtype for loss in record.losses] == [torch.float32] * 4   # ... the loss in float32
    assert all(torch.isfinite(loss) for loss in record.losses)
    assert all(not torch.equal(a.float(), b.float()) for a, b in zip(before, task.parameters()))  # trained
