"""Every bad input gets one clear line, nothing silent (issue 11): typed network overrides, checkpoints
that must fit their config, run folders per config path, no silent evaluation of untrained weights,
checked data values, checked model inputs, and the command line's error output.

The command-line cases run the real entry point: three ``python -m convrnn`` processes, and one
process that calls ``convrnn.cli.main()`` -- the function the ``convrnn`` console script runs, with
``sys.argv`` set -- for each error case in turn (one interpreter start-up instead of one per case).
Tiny everything: a 1-layer, 4-channel ConvLSTM on 16x16 moving squares, 3 -> 3 frames, 2 steps."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from convrnn import create_model
from convrnn.cli import COMMANDS
from convrnn.checkpoints import (AtomicCheckpointIO, CheckpointWriteError, UnreadableCheckpointError,
                                 checkpoint_hparams, read_checkpoint)
from convrnn.data import ArrayFrames, FramesDataModule
from convrnn.lightning_cli import cli_main
from convrnn.netconfig import builder_signature, check_net, net_differences
from convrnn.registry import cell_entry, cell_families, list_cells, list_models, model_entry
from convrnn.runs import find_checkpoint, run_key
from convrnn.train import CheckpointMismatchError, NonFiniteInputError, PredictionTask, checkpoint_conflicts

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
              pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = SRC.parent
NET = {"name": "stack", "cell": "convlstm", "layers": 1, "channels": 4, "kernel": 3, "frame_size": [16, 16],
       "in_len": 3, "out_len": 3, "patch": 2}
CONFIG = """\
seed_everything: 1
trainer: {{max_steps: 2, accelerator: cpu, log_every_n_steps: 1, enable_progress_bar: false,
          enable_model_summary: false}}
model:
  net: {net}
  lr: 0.003
  schedule: {{name: teacher}}
data:
  class_path: convrnn.data.FramesDataModule
  init_args: {{train: {frames}, val: {frames}, test: {frames}, layout: NTHW, batch_size: 3}}
"""


def squares(n: int = 6, t: int = 6, size: int = 16) -> np.ndarray:
    """n sequences (N, T, H, W) of a 4x4 white square moving one pixel per frame, uint8."""
    out = np.zeros((n, t, size, size), np.uint8)
    for i in range(n):
        for j in range(t):
            x = (3 * i + j) % (size - 4)
            out[i, j, 2 * i % (size - 4):2 * i % (size - 4) + 4, x:x + 4] = 255
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A frames file, a config that trains on it and a run folder root."""
    tmp = tmp_path_factory.mktemp("project")
    np.save(tmp / "frames.npy", squares())
    cfg = tmp / "tiny.yaml"
    cfg.write_text(CONFIG.format(net=json.dumps(NET), frames=tmp / "frames.npy"))
    return tmp, cfg, tmp / "runs"


def _new_run(root: Path, before: set) -> Path:
    made = set(root.glob("*/*")) - before
    assert len(made) == 1, made
    return made.pop()


def _cli(command: str, cfg: Path, root: Path, *extra: str) -> Path:
    before = set(root.glob("*/*"))
    assert cli_main([command, "--config", str(cfg), "--run_dir", str(root), *extra]) == 0
    return _new_run(root, before)


@pytest.fixture(scope="module")
def fitted(project):
    """One 2-step fit (one epoch: validation, best and last checkpoints, then its test)."""
    tmp, cfg, root = project
    return _cli("fit", cfg, root)


def _rows(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


# -- 1. typed network configs ---------------------------------------------------------------------
@pytest.mark.parametrize("name, key, given_, want", [
    ("stack", "channels", "16", 16),                    # a command-line string for an int
    ("stack", "channels", [8, "16"], [8, 16]),          # one per layer
    ("stack", "frame_size", [16, 16], [16, 16]),
    ("stack", "scales", [1, 0.5, 1], [1.0, 0.5, 1.0]),
    ("msrnn", "layers", "6", 6),                        # through the builder's **kw into RecurrentStack
    ("composite", "reconstruct", "false", False),
    ("predrnnv2_net", "decouple_beta", "1e-3", 0.001),  # YAML 1.1 reads 1e-3 as a string
    ("mim", "kernel", 5, 5),                            # an alias
])
def test_check_net_types_every_key_by_its_builder(name, key, given_, want):
    out = check_net({"name": name, key: given_})
    assert out == {"name": name, key: want} and type(out[key]) is type(want)


def _int_keys() -> list[tuple[str, str]]:
    return [(m, k) for m in list_models() for k, p in builder_signature(model_entry(m))[0].items()
            if p.annotation is int]


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(_int_keys()), value=st.integers(1, 10**6),
       junk=st.text(alphabet="abcxyz_-", min_size=1, max_size=6))
def test_every_int_argument_of_every_model_converts_and_refuses(case, value, junk):
    name, key = case
    assert check_net({"name": name, key: str(value)})[key] == value
    with pytest.raises(ValueError, match=rf"^model\.net\.{key}: model '{name}' expects int, got '{junk}'$"):
        check_net({"name": name, key: junk})


def test_check_net_errors_name_the_key_the_model_and_the_fix():
    with pytest.raises(ValueError, match=r"model\.net\.channels: model 'stack' expects int \| Sequence\[int\], "
                                         r"got 'eight'"):
        check_net({**NET, "channels": "eight"})
    with pytest.raises(ValueError, match=r"model\.net\.chanels: model 'stack' has no argument 'chanels' "
                                         r"\(did you mean 'channels'\?\); its arguments: cell, layers, channels"):
        check_net({**NET, "chanels": 8})
    with pytest.raises(ValueError, match=r"unknown model 'stak' \(did you mean 'stack'\?\); available: composite"):
        check_net({"name": "stak"})
    with pytest.raises(ValueError, match=r"model\.net\.name must name a registered model"):
        check_net({"cell": "convlstm"})
    with pytest.raises(TypeError, match="must be a mapping"):
        check_net(["stack"])


def test_net_differences_fill_in_defaults_and_resolve_aliases():
    assert net_differences({"name": "predrnnpp", "channels": 64}, {"name": "predrnnpp_net"}) == []
    assert net_differences(NET, {**NET, "channels": "4"}) == []
    assert net_differences(NET, {**NET, "channels": 8, "skip": "none"}) == ["channels: 4 vs 8",
                                                                          "skip: 'add' vs 'none'"]


def test_prediction_task_types_its_net():
    task = PredictionTask({**NET, "channels": "8"})
    assert task.hparams.net["channels"] == 8 and task.net.cells[0].channels == 8


def test_a_typed_override_trains_and_the_command_prints_its_folder(project):
    """The real `convrnn` process: `--model.net.channels 8` (once a TypeError) builds and records an
    8-channel int; nested keys work too; the last line names the run folder."""
    tmp, cfg, root = project
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "convrnn", "fit", "--config", str(cfg), "--run_dir",
                           str(tmp / "typed"), "--model.net.channels", "8", "--model.net.cell_kw.recurrent",
                           "indconv", "--trainer.max_steps", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp / "typed").glob("*/*")
    assert done.stdout.strip().splitlines()[-1] == f"convrnn: fit wrote {run}"
    net = yaml.safe_load((run / "config.yaml").read_text())["model"]["net"]
    assert net["channels"] == 8 and type(net["channels"]) is int and net["cell_kw"] == {"recurrent": "indconv"}
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["channels"] == 8
    assert ckpt["state_dict"]["net.cells.0.wx.weight"].shape[0] == 4 * 8      # 4 blocks of 8 channels


# -- 2. a checkpoint must fit its config; safe overrides on a resume are applied --------------------
def test_checkpoint_conflicts_refuse_other_networks_and_optimizers_and_list_changes():
    saved = {"net": NET, "optimizer": "adam", "scheduler": None, "lr": 1e-3, "loss": "mse", "_instantiator": "x"}
    problems, changes = checkpoint_conflicts(saved, {**saved, "net": {**NET, "channels": 8}, "lr": 1e-4}, True)
    assert len(problems) == 1 and "channels: 4 vs 8, checkpoint vs config" in problems[0]
    assert changes == ["lr: 0.001 -> 0.0001"]
    problems, changes = checkpoint_conflicts(saved, {**saved, "optimizer": "adamw", "loss": "l1"}, True)
    assert problems == ["optimizer: 'adam' in the checkpoint, 'adamw' now; a resumed fit continues the saved "
                        "optimizer state: keep optimizer: 'adam', or start a new fit without --ckpt_path"]
    assert changes == ["loss: 'mse' -> 'l1'"]
    with_sched = {**saved, "scheduler": "cosine"}
    problems, _ = checkpoint_conflicts(with_sched, {**with_sched, "lr": 1e-4}, True)
    assert problems and problems[0].startswith("lr: 0.001 in the checkpoint, 0.0001 now; the saved cosine schedule")
    # evaluating (not fitting): only the network matters
    assert checkpoint_conflicts(saved, {**saved, "optimizer": "adamw", "lr": 5.0}, False) == ([], [])


def test_a_task_refuses_a_checkpoint_of_another_network_from_python_too():
    task = PredictionTask({**NET, "channels": 8})
    with pytest.raises(CheckpointMismatchError, match="channels: 4 vs 8"):
        task.on_load_checkpoint({"hyper_parameters": {"net": NET}})


def test_a_resume_applies_the_new_lr_to_the_restored_optimizer(project, fitted):
    """Lightning restores the optimizer's saved lr after the model is built; a resume with --model.lr
    must train with the new one (the NaN-loss message advises exactly that)."""
    _, cfg, root = project
    run = _cli("fit", cfg, root, "--trainer.max_steps", "4", "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt"),
               "--model.lr", "0.0005")
    assert _rows(fitted, "lr-Adam") == [0.003, 0.003]
    assert _rows(run, "lr-Adam") == [0.0005, 0.0005]                 # steps 2 and 3
    assert checkpoint_hparams(run / "checkpoints" / "last.ckpt")["lr"] == 0.0005


# -- 3. run folders per config path; `last` only picks this network's checkpoints --------------------
def test_run_key_is_unique_per_config_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_key("configs/openstl/predrnn.yaml") == "openstl/predrnn"
    assert run_key("configs/msrnn/predrnn.yaml") == "msrnn/predrnn"
    assert run_key(tmp_path / "configs" / "quickstart.yaml") == "quickstart"
    assert run_key("mine/exp.yaml") == "mine/exp" and run_key(None) == "run"
    a, b = run_key("/elsewhere/a/tiny.yaml"), run_key("/elsewhere/b/tiny.yaml")
    assert a.startswith("tiny-") and b.startswith("tiny-") and a != b and len(a) == len("tiny-") + 8


def test_last_passes_over_newer_checkpoints_of_another_network(tmp_path):
    def save(run: str, channels: int, mtime: int) -> Path:
        path = tmp_path / "exp" / run / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"hyper_parameters": {"net": {**NET, "channels": channels}}}, path)
        os.utime(path, (mtime, mtime))
        return path

    old, new = save("1-fit", 4, 1000), save("2-fit", 8, 2000)

    def refuse(path):
        diff = net_differences(checkpoint_hparams(path)["net"], NET)
        return f"another network: {'; '.join(diff)}" if diff else None

    found, skipped = find_checkpoint(tmp_path, "exp", "last", refuse)
    assert found == old and skipped == [f"{new} (another network: channels: 8 vs 4)"]
    assert find_checkpoint(tmp_path, "exp", "last") == (new, [])
    old.unlink()
    with pytest.raises(FileNotFoundError, match=r"none of the 1 last.ckpt .* fits this config: .*channels: 8 vs 4"):
        find_checkpoint(tmp_path, "exp", "last", refuse)


# -- 4. no silent evaluation of untrained weights ----------------------------------------------------
def test_untrained_evaluation_needs_the_flag(project, fitted):
    _, cfg, root = project
    run = _cli("test", cfg, root, "--untrained", "true")
    record = json.loads((run / "metrics.json").read_text())
    assert record["checkpoint"] is None and np.isfinite(record["mse"])


# -- 5. data values ---------------------------------------------------------------------------------
def _bad_files(tmp: Path) -> list[tuple[str, dict, str]]:
    video = squares().astype(np.float32) / 255
    np.save(tmp / "float255.npy", video * 255)
    nan = video.copy()
    nan[2, 3, 0, 0] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "negative.npy", video - 0.5)
    np.save(tmp / "good.npy", video)
    raw = (tmp / "good.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(raw[:len(raw) // 2])
    (tmp / "garbage.npy").write_bytes(b"\x80\x04 not an array" * 50)
    (tmp / "garbage.npz").write_bytes(b"PK not a zip" * 50)
    (tmp / "folder.npy").mkdir()
    return [
        ("float255.npy", {}, r"values reach 255 \(all 6 sequences checked\), but frames must lie in \[0, 1\].*"
                             r"0\.\.255 pixel values\? set scale: 255"),
        ("good.npy", {"scale": 0}, r"scale=0; give a positive number"),
        ("good.npy", {"scale": float("nan")}, r"scale=nan; give a positive number"),
        ("nan.npy", {}, r"sequence 2 holds 1 NaN or infinite values: clean the file"),
        ("negative.npy", {}, r"values go down to -0\.5 .* shift and rescale"),
        ("good.npy", {"layout": "TNHW"}, r"consecutive frames differ .*x more than the same frame of consecutive "
                                         r"sequences, so layout TNHW reads sequences as time.*use layout: NTHW"),
        ("good.npy", {"scale": 0.5}, r"values reach 2 after dividing by scale=0\.5 .* set scale to the value that "
                                     r"maps to 1\.0 \(at least 1 here\)"),
        ("truncated.npy", {}, r"cannot be read as \.npy \(mmap length is greater than file size\): it is truncated"),
        ("garbage.npy", {}, r"cannot be read as \.npy .*: it is truncated or not a \.npy array file"),
        ("garbage.npz", {}, r"cannot be read as \.npz .*: it is truncated or not a \.npz array file"),
        ("folder.npy", {}, r"is a folder, not a file"),
    ]


def test_frames_files_are_checked_on_load_and_errors_name_the_file(tmp_path):
    for name, kw, message in _bad_files(tmp_path):
        with pytest.raises((ValueError, OSError)) as e:
            dm = FramesDataModule(str(tmp_path / name), **{"layout": "NTHW", **kw})
            dm.setup("fit")
        assert str(tmp_path / name) in str(e.value), (name, str(e.value))
        assert re.search(message, str(e.value)), (name, str(e.value))
        assert "allow_pickle" not in str(e.value)
    good = FramesDataModule(str(tmp_path / "good.npy"), layout="NTHW")
    good.setup("fit")
    assert len(good.datasets["train"]) == 6
    np.save(tmp_path / "time_major.npy", squares().transpose(1, 0, 2, 3))     # right layout: no false alarm
    FramesDataModule(str(tmp_path / "time_major.npy"), layout="TNHW").setup("fit")
    unchecked = FramesDataModule(str(tmp_path / "float255.npy"), layout="NTHW", checks=False)
    unchecked.setup("fit")                                                      # checks: false skips them


def test_a_large_file_is_checked_on_a_sample():
    """The sampled check reads only a budget of sequences (evenly spaced, first and last included)."""
    array = np.zeros((100, 4, 8, 8), np.float32)
    array[99, 1, 0, 0] = np.nan           # the last sequence is always in the sample
    with pytest.raises(ValueError, match="sequence 99 holds 1 NaN"):
        ArrayFrames(array, layout="NTHW")
    array[99, 1, 0, 0], array[50, 1, 0, 0] = 0, np.nan   # sequence 50 is not among 2 evenly spaced ones
    from convrnn.data.frames import check_frames_array
    check_frames_array(array, "NTHW", budget=2 * 4 * 8 * 8 * 4)
    with pytest.raises(ValueError, match="sequence 50"):
        check_frames_array(array, "NTHW")


def test_nonfinite_input_frames_are_reported_as_the_data(monkeypatch):
    task = PredictionTask(NET, finite_check_every=2)
    monkeypatch.setattr(PredictionTask, "global_step", property(lambda self: 0))
    frames = torch.rand(2, 6, 1, 16, 16)
    bad = frames.clone()
    bad[1, 4] = float("inf")
    task._record_finite(torch.tensor(1.0), frames)            # step 0 fine, nothing checked yet
    monkeypatch.setattr(PredictionTask, "global_step", property(lambda self: 1))
    with pytest.raises(NonFiniteInputError, match="training batch at global step 1 hold NaN or inf"):
        task._record_finite(torch.tensor(float("nan")), bad)  # the input is named, not the loss
    task = PredictionTask(NET)
    task.on_test_epoch_start()
    task.test_step(frames, 0)
    task.test_step(bad, 1)
    with pytest.raises(NonFiniteInputError, match=r"the test data hold NaN or inf \(first in batch 1\)"):
        task.on_test_epoch_end()


# -- 6. model inputs and arguments ------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", [("stack", {"patch": 2}), ("composite", {})])
def test_models_convert_float_and_uint8_frames_and_refuse_the_rest(name, kw):
    model = create_model(name, layers=1, channels=4, frame_size=(16, 16), in_len=2, out_len=2, **kw).eval()
    raw = torch.randint(0, 256, (2, 4, 1, 16, 16), dtype=torch.uint8)
    unit = raw.float() / 255
    with torch.no_grad():
        want = model(unit).future
        torch.testing.assert_close(model(raw).future, want, rtol=0, atol=0)
        torch.testing.assert_close(model(unit.double()).future, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model(unit.half()).future, want, rtol=1e-2, atol=1e-2)
        assert model(unit.double()).future.dtype == torch.float32
        with pytest.raises(TypeError, match="frames of dtype torch.int64: give floats in"):
            model(raw.long())
        with pytest.raises(ValueError, match=r"empty batch: frames of shape \(0, 4, 1, 16, 16\)"):
            model(unit[:0])
        with pytest.raises(ValueError, match=r"channels-last frames \(B, T, H, W, C\)\? use frames.permute"):
            model(unit.permute(0, 1, 3, 4, 2))


@pytest.mark.parametrize("name, kw, error, message", [
    ("stack", {"layers": 0}, ValueError, "layers must be a positive integer, got 0"),
    ("msrnn", {"layers": 0}, ValueError, "layers must be a positive integer, got 0"),
    ("predrnnpp_net", {"layers": 0}, ValueError, "layers must be a positive integer, got 0"),
    ("composite", {"layers": 0}, ValueError, "layers must be a positive integer, got 0"),
    ("stack", {"patch": 0}, ValueError, "patch must be a positive integer, got 0"),
    ("stack", {"kernel": 0}, ValueError, "kernel must be a positive integer, got 0"),
    ("stack", {"channels": "8"}, TypeError, r"channels must be a positive integer or a list of 4 \(one per layer\), "
                                            r"got '8' \(str\)"),
    ("stack", {"channels": "eight"}, TypeError, "got 'eight'"),
    ("stack", {"channels": [8, 0, 8, 8]}, ValueError, r"channels\[1\] must be a positive integer, got 0"),
    ("composite", {"channels": "8"}, TypeError, r"channels must be a positive integer, got '8' \(str\)"),
    ("stack", {"in_len": 2.5}, TypeError, r"in_len must be a positive integer, got 2.5 \(float\)"),
    ("stack", {"frame_size": (0, 16)}, ValueError, r"frame_size\[0\] must be a positive integer, got 0"),
    ("stack", {"cell": ["convlstm", 3], "layers": 2}, ValueError, "cell must be a cell name or a list of 2 names"),
])
def test_model_arguments_are_checked_with_their_names(name, kw, error, message):
    with pytest.raises(error, match=message):
        create_model(name, **{"frame_size": 16, "channels": 4, **kw})


# -- checkpoint files: reading and writing -----------------------------------------------------------
class Foreign:
    """An object a safe (weights_only) load refuses."""


def test_unreadable_checkpoints_name_the_file_without_unsafe_advice(tmp_path, fitted):
    raw = (fitted / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    torch.save({"x": Foreign()}, tmp_path / "foreign.ckpt")
    for name, reason in [("truncated.ckpt", ""), ("empty.ckpt", "EOFError"),
                         ("text.ckpt", ""), ("foreign.ckpt", "Unsupported global")]:
        with pytest.raises(UnreadableCheckpointError) as e:
            read_checkpoint(tmp_path / name)
        text = str(e.value)
        assert text.startswith(f"checkpoint {tmp_path / name} cannot be read (") and reason in text, text
        assert "it is truncated, damaged or not a plain" in text and "weights_only" not in text
    with pytest.raises(UnreadableCheckpointError, match=r"is a folder, not a file \(it holds best-epoch"):
        read_checkpoint(fitted / "checkpoints")
    with pytest.raises(FileNotFoundError, match="not found: pass an existing .ckpt file"):
        read_checkpoint(tmp_path / "missing.ckpt")
    assert read_checkpoint(fitted / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_a_failed_checkpoint_write_names_its_cause_and_any_file_left(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "ck" / "last.ckpt"

    def read_only(obj, f):
        f.write(b"half")
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(torch, "save", read_only)
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint {path}: Read-only file system; make "
                                                   r"its folder writable \(or pass another --run_dir\)$"):
        io.save_checkpoint({"global_step": 1}, path)
    assert list(path.parent.iterdir()) == []                  # the partial file is gone
    unlink = Path.unlink

    def stuck(self, missing_ok=False):
        if self.name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied")
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", stuck)                # the clean-up fails too: the cause still shows
    with pytest.raises(CheckpointWriteError, match=r"Read-only file system; .*a partial file remains: delete .*\.tmp"):
        io.save_checkpoint({"global_step": 1}, path)


# -- the command line as a whole ---------------------------------------------------------------------
DRIVER = r"""
import contextlib, io, json, os, sys
from convrnn.cli import main
results = []
for case in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["convrnn", *case["argv"]]
    os.environ.pop("CONVRNN_DEBUG", None)
    os.environ.update(case.get("env", {}))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main()
        except SystemExit as e:
            code = e.code
        except BaseException as e:      # what the console script would show as a traceback
            import traceback
            traceback.print_exc(file=err)
            code = "raised"
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def _errors(err: str) -> list[str]:
    """The lines convrnn itself printed on stderr (Lightning's progress messages and warnings aside)."""
    return [line for line in err.splitlines() if line.startswith(("convrnn", "(--debug", "(`convrnn"))]


def test_command_line_errors_are_one_line_and_name_the_problem(project, fitted, tmp_path):
    tmp, cfg, root = project
    frames = tmp / "frames.npy"
    np.save(tmp_path / "float255.npy", squares().astype(np.float32))
    raw = (fitted / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(raw[:1000])
    last = fitted / "checkpoints" / "last.ckpt"
    base = ["--config", str(cfg), "--run_dir", str(root)]
    cases = [  # (argv, exit status, message)
        (["fit", *base, "--model.net.channels", "eight"], 1,
         "convrnn fit: error: model.net.channels: model 'stack' expects int | Sequence[int], got 'eight'"),
        (["fit", *base, "--model.net.chanels", "8"], 1, "has no argument 'chanels' (did you mean 'channels'?)"),
        (["fit", *base, "--model.net.layers", "0"], 1, "convrnn fit: error: layers must be a positive integer, got 0"),
        (["fit", *base, "--model.loss", "huber"], 2,
         "convrnn fit: error: Parser key \"model.loss\": Expected a typing.Literal['mse', 'l1', 'l1+l2', 'bce']. "
         "Got value: huber"),
        (["fit", *base, "--ckpt_path", str(last), "--model.net.channels", "8"], 1,
         f"--ckpt_path {last} does not fit the config: its network differs from the config's (channels: 4 vs 8, "
         "checkpoint vs config)"),
        (["fit", *base, "--ckpt_path", "last", "--model.optimizer", "adamw"], 1,
         "optimizer: 'adam' in the checkpoint, 'adamw' now; a resumed fit continues the saved optimizer state"),
        (["test", *base, "--ckpt_path", "last", "--model.net.kernel", "5"], 1,
         "--ckpt_path last: none of the"),
        (["test", *base], 1, "`convrnn test` without --ckpt_path would evaluate untrained (random) weights"),
        (["predict", *base], 1, "`convrnn predict` without --ckpt_path would evaluate untrained"),
        (["fit", *base, "--trainer.max_steps", "0"], 1, "this fit trains no step (--trainer.max_steps 0"),
        (["predict", *base, "--ckpt_path", str(last), "--data.init_args.test", "null"], 1,
         "`convrnn predict` found no test sequences, so it wrote no result"),
        (["test", *base, "--ckpt_path", str(tmp_path / "truncated.ckpt")], 1,
         f"checkpoint {tmp_path / 'truncated.ckpt'} cannot be read (PytorchStreamReader failed reading zip archive"),
        (["test", *base, "--ckpt_path", str(fitted / "checkpoints")], 1, "is a folder, not a file"),
        (["fit", *base, "--data.init_args.train", str(tmp_path / "float255.npy")], 1,
         f"{tmp_path / 'float255.npy'}: values reach 255"),
        (["fit", *base, "--data.init_args.val", str(tmp)], 1, f"val frames file {tmp} is a folder, not a file"),
        (["cost", "--config", str(tmp_path / "nothing.yaml")], 2, "not found"),
        (["bogus"], 2, "convrnn: unknown command 'bogus'; the commands: models, cost"),
    ]
    specs = [{"argv": argv} for argv, _, _ in cases]
    specs += [{"argv": ["fit", *base, "--model.net.channels", "eight"], "env": {"CONVRNN_DEBUG": "1"}},
              {"argv": ["fit", *base, "--debug", "--model.net.channels", "eight"]},
              {"argv": ["--help"]}, {"argv": ["models"]}, {"argv": []}]
    before = set(root.glob("*/*"))
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(specs)], env={**os.environ, "PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (argv, code, message), result in zip(cases, results):
        lines = _errors(result["err"])
        assert result["code"] == code, (argv, result)
        assert "Traceback" not in result["err"] and "usage:" not in result["err"], (argv, result["err"][-2000:])
        assert 1 <= len(lines) <= 2 and message in lines[0], (argv, lines)
    made = set(root.glob("*/*")) - before   # only the predict without data and the fit of bad data got that far
    assert sorted(p.name.split("-")[-1] for p in made) == ["fit", "predict"]

    env_debug, debug, help_, models, bare = results[len(cases):]
    for shown in (env_debug, debug):   # CONVRNN_DEBUG=1 or --debug: the traceback
        assert shown["code"] == "raised" and "Traceback (most recent call last)" in shown["err"]
        assert shown["err"].strip().splitlines()[-1].startswith("ValueError: model.net.channels")
    assert help_["code"] == 0 and bare["code"] == 2 and bare["err"] == help_["out"]
    for word in ("--run_dir", "--ckpt_path last|best", "convrnn COMMAND --help", "--debug", "CONVRNN_DEBUG=1"):
        assert word in help_["out"], word
    listed = re.findall(r"^  ([a-z|]+) ", help_["out"], re.M)       # one line per command
    assert sorted(c for line in listed for c in line.split("|")) == sorted(COMMANDS)
    _check_models_listing(models["out"])


def _check_models_listing(out: str) -> None:
    """One line per model (with its aliases and arguments) and per cell family (with every variant)."""
    lines = out.splitlines()
    for name in list_models():
        (line,) = [ln for ln in lines if ln.startswith(f"  {name}:") or ln.startswith(f"  {name} (alias")]
        assert "Arguments: " in line and all(a in line for a in builder_signature(model_entry(name))[0])
    for family, cls in cell_families().items():
        (line,) = [ln for ln in lines if ln.startswith(f"  {family} (")]
        variants = re.match(r"  \w+ \(([^)]*)\): ", line).group(1).split(", ")
        assert set(variants) == {n for n in list_cells() if cell_entry(n)[0] is cls}, family
    assert "Memory In Memory: A Predictive Neural Network for Learning Higher-Order" in out


def test_the_real_command_prints_two_lines_and_no_traceback(project):
    _, cfg, root = project
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("CONVRNN_DEBUG", None)
    plain = subprocess.run([sys.executable, "-m", "convrnn", "fit", "--config", str(cfg), "--run_dir", str(root),
                            "--model.net.channels", "eight"], env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1 and plain.stderr.splitlines() == [
        "convrnn fit: error: model.net.channels: model 'stack' expects int | Sequence[int], got 'eight'",
        "(--debug or CONVRNN_DEBUG=1 shows the traceback)"]


def test_help_texts_and_docs_name_files_that_exist():
    texts = [p.read_text() for p in SRC.rglob("*.py")] + [p.read_text() for p in (REPO / "docs").glob("*.md")]
    texts.append((REPO / "README.md").read_text())
    named = set()
    for text in texts:
        named |= set(re.findall(r"\b((?:docs|configs|benchmarks|tests|src|reference)/[\w./-]*\w\.(?:md|yaml|py))\b",
                                text))
    assert len(named) > 10 and [n for n in sorted(named) if not (REPO / n).exists()] == []
