"""Using a trained model (convrnn.forecaster, convrnn.predict_cli): Forecaster.from_checkpoint of a real
`convrnn fit` checkpoint of the quickstart network, predict in every input kind, streaming equal to
predict for every registered model, safetensors save/load, and `convrnn predict --input` on files."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, one_thread, randomize  # noqa: F401  (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from convrnn import Forecaster, create_model, list_models, list_pretrained
from convrnn import forecaster as forecaster_module
from convrnn.cli import main as convrnn
from convrnn.data.folder import decode_video
from convrnn.train import PredictionTask

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
              pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

SMALL = {"channels": 4, "frame_size": (16, 16), "in_len": 3, "out_len": 2}


def small_model(name: str, **kw):
    """Every registered model at a tiny size, random signed weights (so no block hides behind zeros)."""
    cfg = dict(SMALL, **kw)
    if name == "composite":
        cfg["codec_channels"] = (4, 4, 4)
    if name == "msrnn":
        cfg.update(layers=3, scales=(1, 0.5, 1))
    elif name not in ("composite",):
        cfg["layers"] = 2
    torch.manual_seed(0)
    return randomize(create_model(name, **cfg), 0.2).eval()


# -- a real checkpoint of the quickstart network ------------------------------------------------
@pytest.fixture(scope="module")
def quickstart_ckpt(tmp_path_factory):
    """`convrnn fit --config configs/quickstart.yaml` cut to 2 training steps on 8 sequences: the
    quickstart network (2 x 32 ConvLSTM, patch 4, 64x64, 10 -> 10) as `fit` writes it."""
    root = tmp_path_factory.mktemp("quickstart") / "runs"
    code = convrnn(["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--run_dir", str(root),
                    "--trainer.max_steps", "2", "--trainer.max_time", "null", "--trainer.val_check_interval", "2",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--data.init_args.train_size", "8", "--data.init_args.val_size", "2",
                    "--data.init_args.test_size", "2", "--data.init_args.batch_size", "4", "--examples", "0"])
    assert code == 0
    (ckpt,) = root.glob("quickstart/*/checkpoints/last.ckpt")
    return ckpt


def test_from_checkpoint_rebuilds_the_trained_network_without_a_config(quickstart_ckpt):
    fc = Forecaster.from_checkpoint(quickstart_ckpt)
    assert fc.config["cell"] == "convlstm" and (fc.in_len, fc.out_len, fc.frame_size) == (10, 10, (64, 64))
    assert not fc.model.training
    # the same weights as Lightning's own loader (which unpickles the whole checkpoint) puts in the task
    task = PredictionTask.load_from_checkpoint(quickstart_ckpt, map_location="cpu", weights_only=False)
    ours, theirs = fc.model.state_dict(), task.net.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    frames = torch.rand(2, 10, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fc.predict(frames), task.net.eval()(frames).future, rtol=0, atol=0)


def test_quickstart_checkpoint_predicts_and_streams_equal_numbers(quickstart_ckpt):
    fc = Forecaster.from_checkpoint(quickstart_ckpt)
    frames = (np.random.default_rng(0).random((12, 64, 64)) * 255).astype(np.uint8)   # (T, H, W) uint8
    future = fc.predict(frames, out_len=4)
    assert future.shape == (4, 64, 64) and future.dtype == np.uint8
    stream = fc.stream()
    for frame in frames:
        stream.push(frame)
    np.testing.assert_array_equal(stream.forecast(4), future)


def test_a_checkpoint_that_would_run_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"net": {"name": "stack"}}, "state_dict": {}, "extra": Payload()}, ckpt)
    with pytest.raises(ValueError, match="weights_only=True"):
        Forecaster.from_checkpoint(ckpt)
    assert not marker.exists()


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="convrnn fit"):
        Forecaster.from_checkpoint(tmp_path / "missing.ckpt")
    plain = tmp_path / "plain.pt"
    torch.save(small_model("stack").state_dict(), plain)
    with pytest.raises(ValueError, match="not a checkpoint of `convrnn fit`"):
        Forecaster.from_checkpoint(plain)


# -- predict: kinds in, the same kind out ---------------------------------------------------------
def test_predict_returns_the_kind_it_was_given():
    model = small_model("stack")
    fc = Forecaster(model)
    x = torch.rand(2, 3, 1, 16, 16)
    with torch.no_grad():
        want = model(x).future                                   # (2, 2, 1, 16, 16) float32
    torch.testing.assert_close(fc.predict(x), want, rtol=0, atol=0)
    got64 = fc.predict(x.double())
    assert got64.dtype == torch.float64 and torch.allclose(got64, want.double(), atol=1e-7)
    got_np = fc.predict(x[0].numpy())                            # (T, C, H, W) numpy -> (out_len, C, H, W)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float32 and got_np.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(got_np, want[0].numpy(), rtol=0, atol=1e-6)
    u8 = (x[0, :, 0].numpy() * 255).round().astype(np.uint8)     # (T, H, W) uint8 -> (out_len, H, W) uint8
    with torch.no_grad():
        expect = (model(torch.from_numpy(u8).float()[None, :, None] / 255).future[0, :, 0].clamp(0, 1) * 255).round()
    got_u8 = fc.predict(u8)
    assert got_u8.dtype == np.uint8 and got_u8.shape == (2, 16, 16)
    np.testing.assert_array_equal(got_u8, expect.to(torch.uint8).numpy())
    assert torch.is_grad_enabled()          # predict's no_grad does not leak


def test_predict_rejects_what_it_cannot_read():
    fc = Forecaster(small_model("stack"))
    with pytest.raises(ValueError, match="divide 0..255 floats by 255"):
        fc.predict(np.full((3, 16, 16), 200.0, np.float32))
    with pytest.raises(TypeError, match="uint8"):
        fc.predict(np.zeros((3, 16, 16), np.int16))
    with pytest.raises(ValueError, match="expected \\(B, T, C, H, W\\)"):
        fc.predict(np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match="16x16"):
        fc.predict(np.zeros((3, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="steps"):
        fc.predict(np.zeros((3, 16, 16), np.float32), out_len=0)


@pytest.mark.parametrize("name", ["stack", "composite"])
def test_out_len_longer_than_trained_runs_on_its_own_outputs(name):
    """Forecasting 5 frames with a model trained for 2 = that model built with out_len=5 (the time loop
    feeds its own outputs back after the observed frames)."""
    short = small_model(name)
    long = small_model(name, out_len=5)
    long.load_state_dict(short.state_dict())
    x = torch.rand(2, 3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(Forecaster(short).predict(x, out_len=5), long.eval()(x).future, rtol=0, atol=0)


# -- streaming ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_model_forecasts_as_its_forward_and_streams_as_it_predicts(name):
    model = small_model(name)
    fc = Forecaster(model)
    x = torch.rand(2, 5, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.forecast(x[:, :3]), model(x[:, :3]).future, rtol=0, atol=0)
    stream = fc.stream(batch=2)
    for t in range(3):
        stream.push(x[:, t])
    first = stream.forecast(4)
    torch.testing.assert_close(first, fc.predict(x[:, :3], out_len=4), rtol=0, atol=0)
    torch.testing.assert_close(stream.forecast(4), first, rtol=0, atol=0)     # the state was not disturbed
    for t in range(3, 5):                                                      # keep streaming after forecasting
        stream.push(x[:, t])
    torch.testing.assert_close(stream.forecast(3), fc.predict(x, out_len=3), rtol=0, atol=0)
    assert stream.seen == 5


@settings(max_examples=8, deadline=None)
@given(pushed=st.integers(1, 6), k=st.integers(1, 6), batch=st.integers(1, 3))
def test_stream_equals_predict_for_any_lengths(pushed, k, batch):
    fc = Forecaster(small_model("stack", cell="convgru", cell_kw={"recurrent": "indconv"}))
    x = torch.rand(batch, pushed, 1, 16, 16, generator=torch.Generator().manual_seed(pushed * 7 + k))
    stream = fc.stream(batch)
    for t in range(pushed):
        stream.push(x[:, t])
    torch.testing.assert_close(stream.forecast(k), fc.predict(x, out_len=k), rtol=0, atol=0)


def test_stream_errors_name_the_fix():
    stream = Forecaster(small_model("stack")).stream(batch=2)
    with pytest.raises(ValueError, match="push at least one frame"):
        stream.forecast(2)
    with pytest.raises(ValueError, match="batch=2"):
        stream.push(torch.rand(3, 1, 16, 16))
    with pytest.raises(ValueError, match="B=2"):
        stream.push(torch.rand(1, 16, 16))
    stream.push(torch.rand(2, 1, 16, 16))
    stream.reset()
    assert stream.seen == 0 and stream.state is None


# -- save_pretrained / from_pretrained ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(list_models()))
def test_save_and_load_pretrained_without_pickle(tmp_path, name):
    model = small_model(name)
    if name == "composite":           # BatchNorm running statistics are buffers: they must travel too
        model.frame_encoder[2].running_mean.uniform_(0.1, 0.5)
    fc = Forecaster(model)
    folder = fc.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["net"]["name"] == name
    back = Forecaster.from_pretrained(folder)
    ours, theirs = model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.rand(2, 3, 1, 16, 16)
    torch.testing.assert_close(back.predict(x), fc.predict(x), rtol=0, atol=0)


def test_save_pretrained_keeps_an_existing_save_and_needs_a_config(tmp_path):
    fc = Forecaster(small_model("stack"))
    fc.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        Forecaster(small_model("stack", channels=8)).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    from convrnn.models.stack import RecurrentStack
    with pytest.raises(ValueError, match="config is unknown"):
        Forecaster(RecurrentStack(layers=1, channels=4, frame_size=(16, 16))).save_pretrained(tmp_path / "x")


def test_from_pretrained_finds_shipped_names_and_explains_unknown_ones(tmp_path, monkeypatch):
    root = tmp_path / "pretrained"
    Forecaster(small_model("stack")).save_pretrained(root / "tiny_convlstm")
    (root / "half").mkdir()                       # no weights: not listed
    (root / "half" / "config.json").write_text("{}")
    monkeypatch.setattr(forecaster_module, "_pretrained_root", lambda: root)
    assert list_pretrained() == ["tiny_convlstm"]
    assert Forecaster.from_pretrained("tiny_convlstm").config["name"] == "stack"
    with pytest.raises(FileNotFoundError, match="tiny_convlstm"):
        Forecaster.from_pretrained("nonexistent")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"net": 3}')
    with pytest.raises(ValueError, match="convrnn-pretrained"):
        Forecaster.from_pretrained(bad)


def test_the_package_ships_no_weights_yet():
    assert list_pretrained() == []
    with pytest.raises(FileNotFoundError, match="none are shipped"):
        Forecaster.from_pretrained("convlstm_mnist")


# -- `convrnn predict --ckpt_path ... --input ...` --------------------------------------------------
def test_convrnn_predict_on_an_npy_writes_predictions_and_gifs(quickstart_ckpt, tmp_path, capsys):
    frames = (np.random.default_rng(1).random((3, 12, 1, 64, 64)) * 255).astype(np.uint8)
    np.save(tmp_path / "some.npy", frames)
    out = tmp_path / "out"
    assert convrnn(["predict", "--ckpt_path", str(quickstart_ckpt), "--input", str(tmp_path / "some.npy"),
                    "--out_len", "3", "--output", str(out), "--batch_size", "2"]) == 0
    pred = np.load(out / "predictions.npy")
    assert pred.shape == (3, 3, 1, 64, 64) and pred.dtype == np.float32
    want = Forecaster.from_checkpoint(quickstart_ckpt).predict(frames, out_len=3).astype(np.float32) / 255
    np.testing.assert_array_equal(pred, want)
    assert (out / "sequences.txt").read_text().split() == ["some[0]", "some[1]", "some[2]"]
    for i in range(3):
        gif = Image.open(out / f"example_{i:03d}.gif")
        assert gif.n_frames == 12 + 3 and (out / f"example_{i:03d}.png").is_file()
    assert str(out / "predictions.npy") in capsys.readouterr().out
    # a second run never overwrites the first
    assert convrnn(["predict", "--ckpt_path", str(quickstart_ckpt), "--input", str(tmp_path / "some.npy"),
                    "--output", str(out)]) == 2
    np.testing.assert_array_equal(np.load(out / "predictions.npy"), pred)


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A tiny network saved with save_pretrained (what --ckpt_path also accepts)."""
    return Forecaster(small_model("stack")).save_pretrained(tmp_path / "tiny")


def test_convrnn_predict_reads_image_folders_videos_and_arrays_alike(tiny_ckpt, tmp_path):
    rng = np.random.default_rng(2)
    seqs = (rng.random((2, 4, 16, 16)) * 255).astype(np.uint8)
    data = tmp_path / "data"
    for i, seq in enumerate(seqs):          # one folder of PNGs per sequence
        (data / f"seq{i}").mkdir(parents=True)
        for t, frame in enumerate(seq):
            Image.fromarray(frame).save(data / f"seq{i}" / f"{t:04d}.png")
    out = tmp_path / "pngs"
    assert convrnn(["predict", "--ckpt_path", str(tiny_ckpt), "--input", str(data), "--output", str(out)]) == 0
    want = Forecaster.from_pretrained(tiny_ckpt).predict(seqs[:, :, None])      # (2, 2, 1, 16, 16) uint8
    np.testing.assert_array_equal(np.load(out / "predictions.npy"), want.astype(np.float32) / 255)
    assert (out / "sequences.txt").read_text().split() == ["seq0", "seq1"]
    # a GIF is a video: its RGB frames become grey for a 1-channel network, as training reads them
    pytest.importorskip("av")
    rgb = np.repeat(seqs[0][..., None], 3, -1)
    Image.fromarray(rgb[0]).save(tmp_path / "clip.gif", save_all=True, append_images=[Image.fromarray(f) for f in rgb[1:]],
                                 duration=100, loop=0)
    out = tmp_path / "gif"
    assert convrnn(["predict", "--ckpt_path", str(tiny_ckpt), "--input", str(tmp_path / "clip.gif"),
                    "--output", str(out), "--examples", "0"]) == 0
    grey = decode_video(tmp_path / "clip.gif", 1)
    assert np.abs(grey.astype(int) - seqs[0]).max() <= 1          # grey in, (nearly) the same grey out
    want_gif = Forecaster.from_pretrained(tiny_ckpt).predict(grey)
    np.testing.assert_array_equal(np.load(out / "predictions.npy")[0], want_gif.astype(np.float32)[:, None] / 255)
    assert not list(out.glob("*.gif"))


def test_convrnn_predict_reads_an_mp4_with_pyav(tiny_ckpt, tmp_path):
    pytest.importorskip("av")
    import imageio.v3 as iio
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    frames[:, 4:12, 4:12] = 255
    iio.imwrite(tmp_path / "clip.mp4", frames, plugin="pyav", codec="mpeg4", fps=5)
    out = tmp_path / "mp4"
    assert convrnn(["predict", "--ckpt_path", str(tiny_ckpt), "--input", str(tmp_path / "clip.mp4"),
                    "--output", str(out), "--examples", "0"]) == 0
    grey = decode_video(tmp_path / "clip.mp4", 1)                 # what training reads from the same file
    assert grey.shape == (5, 16, 16) and grey[:, 4:12, 4:12].min() > 200 and grey[:, :2].max() < 50
    want = Forecaster.from_pretrained(tiny_ckpt).predict(grey)
    np.testing.assert_array_equal(np.load(out / "predictions.npy")[0, :, 0], want.astype(np.float32) / 255)


def test_convrnn_predict_writes_a_new_run_directory_by_default(tiny_ckpt, tmp_path, monkeypatch):
    np.save(tmp_path / "clip.npy", np.zeros((1, 3, 1, 16, 16), np.uint8))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):       # two runs, two directories: the first is never overwritten
        assert convrnn(["predict", "--ckpt_path", str(tiny_ckpt), "--input", "clip.npy", "--examples", "0"]) == 0
    runs = sorted((tmp_path / "runs" / "clip").iterdir())
    assert len(runs) == 2 and all("-predict" in r.name and (r / "predictions.npy").is_file() for r in runs)


def test_convrnn_predict_errors_are_clear(tiny_ckpt, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.zeros((2, 4, 1, 32, 32), np.uint8))
    np.save(tmp_path / "ok.npy", np.zeros((2, 4, 1, 16, 16), np.uint8))
    cases = [
        (["--input", str(tmp_path / "ok.npy")], "--ckpt_path is required"),
        (["--ckpt_path", str(tmp_path / "nothing.ckpt"), "--input", str(tmp_path / "ok.npy")], "no checkpoint at"),
        (["--ckpt_path", str(tiny_ckpt), "--input", str(tmp_path / "big.npy")], "resize or crop them to 16x16"),
        (["--ckpt_path", str(tiny_ckpt), "--input", str(tmp_path / "none.npy")], "no such file"),
        (["--ckpt_path", str(tiny_ckpt), "--input", str(tmp_path / "ok.npy"), "--in_len", "9"], "fewer than --in_len"),
    ]
    for args, message in cases:
        assert convrnn(["predict", *args]) == 2, args
        assert message in capsys.readouterr().err


def test_convrnn_predict_shows_the_truth_after_in_len(tiny_ckpt, tmp_path):
    frames = (np.random.default_rng(3).random((1, 5, 1, 16, 16)) * 255).astype(np.uint8)
    np.save(tmp_path / "s.npy", frames)
    out = tmp_path / "o"
    assert convrnn(["predict", "--ckpt_path", str(tiny_ckpt), "--input", str(tmp_path / "s.npy"),
                    "--in_len", "3", "--output", str(out)]) == 0
    want = Forecaster.from_pretrained(tiny_ckpt).predict(frames[:, :3])
    np.testing.assert_array_equal(np.load(out / "predictions.npy"), want.astype(np.float32) / 255)
    gif = Image.open(out / "example_000.gif")
    assert gif.n_frames == 3 + 2
    gif.seek(4)        # t = 4: panels input (held) | truth | prediction, each 16x16 enlarged 8x, 2-pixel gaps
    shown = np.asarray(gif.convert("L"))[::8, 130:258:8]
    np.testing.assert_array_equal(shown, frames[0, 4, 0])
