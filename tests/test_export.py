"""ONNX export (convrnn.export, `convrnn export`): every registered cell family exports as a sequence
graph and as a step graph, and ONNX Runtime reproduces PyTorch within 1e-4 at another batch size
than the one traced (the batch axis is dynamic).  New cells are tested by being registered."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import one_thread, randomize  # noqa: F401  (autouse fixture)

from convrnn import Forecaster, cell_families, create_model
from convrnn.cli import main as convrnn
from convrnn.export import export_onnx, onnx_forecast, onnx_metadata

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FAMILIES = sorted(cell_families())
TOL = 1e-4


def tiny_stack(family: str, **cell_kw):
    """2 layers x 4 channels, 16x16 frames, 2 -> 2; MotionRNN's highway needs a first layer of another
    cell, PrecipLSTM a small attention window (a quick test)."""
    cells = ["convlstm", family] if family == "motionrnn" else family
    if family == "preciplstm":
        cell_kw.setdefault("neighbourhood", 3)
    torch.manual_seed(0)
    model = create_model("stack", cell=cells, layers=2, channels=4, frame_size=(16, 16), in_len=2, out_len=2,
                         cell_kw=cell_kw)
    return randomize(model, 0.3).eval()


def pytorch_forecast(model, frames: np.ndarray, steps: int) -> np.ndarray:
    with torch.no_grad():
        return model.forecast(torch.from_numpy(frames), steps).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_cell_family_exports_and_runs_in_onnx_runtime(tmp_path, family):
    model = tiny_stack(family)
    frames = np.random.default_rng(0).random((3, 2, 1, 16, 16), dtype=np.float32)   # batch 3, traced with 2
    seq = export_onnx(model, tmp_path / "seq.onnx", mode="sequence")
    assert [i.name for i in onnx.load(str(seq.path)).graph.input] == ["frames"]
    got = onnx_forecast(seq.path, frames)
    assert got.shape == (3, 2, 1, 16, 16)
    assert np.abs(got - pytorch_forecast(model, frames, 2)).max() <= TOL
    step = export_onnx(model, tmp_path / "step.onnx", mode="step")
    got = onnx_forecast(step.path, frames, steps=4)   # the step graph forecasts past the trained out_len
    assert np.abs(got - pytorch_forecast(model, frames, 4)).max() <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["seq.onnx", "step.onnx"] + ([step.start.name] if step.start else []))   # no temporary files left


@pytest.mark.parametrize("variant", ["indconv", "ind"])
@pytest.mark.parametrize("family", ["convlstm", "convgru", "convjanet", "gem"])
def test_the_hadamard_variants_export_their_fused_steps(tmp_path, family, variant):
    """The fused recurrent terms (RecurrentOp.add_to writes into views in eager mode) export intact."""
    model = tiny_stack(family, recurrent=variant)
    frames = np.random.default_rng(3).random((3, 2, 1, 16, 16), dtype=np.float32)
    done = export_onnx(model, tmp_path / "seq.onnx")
    assert np.abs(onnx_forecast(done.path, frames) - pytorch_forecast(model, frames, 2)).max() <= TOL


def test_the_step_graph_names_its_state_and_starts_from_zeros_or_its_start_graph(tmp_path):
    lstm = export_onnx(tiny_stack("convlstm"), tmp_path / "lstm.onnx", mode="step")
    assert lstm.inputs == ["frame", "state.layers.0.h", "state.layers.0.c", "state.layers.1.h", "state.layers.1.c"]
    assert lstm.outputs == ["prediction"] + [f"next_{n}" for n in lstm.inputs[1:]]
    assert lstm.state == {"layers.0.h": [4, 16, 16], "layers.0.c": [4, 16, 16], "layers.1.h": [4, 16, 16],
                          "layers.1.c": [4, 16, 16]}
    assert lstm.start is None and onnx_metadata(lstm.path)["state"] == lstm.state
    # PredRNN: the stack's zig-zag M is state; each cell's own copy of M is never read, so it is not
    pred = export_onnx(tiny_stack("predrnn"), tmp_path / "predrnn.onnx", mode="step")
    assert "state.m" in pred.inputs and not any(n.endswith(".m") and "layers" in n for n in pred.inputs)
    # MIM starts from its first input (prev_input = x), not from zeros: a start graph is written
    mim = export_onnx(tiny_stack("mim"), tmp_path / "mim.onnx", mode="step")
    assert mim.start == tmp_path / "mim.start.onnx"
    start = onnx.load(str(mim.start))
    assert [i.name for i in start.graph.input] == ["frame"] and [o.name for o in start.graph.output] == mim.outputs


def test_the_step_graph_keeps_its_dynamic_batch_and_opset(tmp_path):
    done = export_onnx(tiny_stack("trajgru"), tmp_path / "traj.onnx", mode="step")
    proto = onnx.load(str(done.path))
    assert proto.opset_import[0].version == 18
    assert "GridSample" in {n.op_type for n in proto.graph.node}
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param, value.name   # a named (dynamic) batch axis


def test_an_unsupported_operator_is_named(tmp_path):
    with pytest.raises(ValueError, match="grid_sampler.*opset version 15"):
        export_onnx(tiny_stack("trajgru"), tmp_path / "old.onnx", opset=15, exporter="torchscript")
    assert not list(tmp_path.iterdir())


def test_the_composite_model_exports_its_sequence_and_explains_why_not_a_step(tmp_path):
    torch.manual_seed(0)
    model = randomize(create_model("composite", channels=4, frame_size=(16, 16), in_len=3, out_len=2,
                                   codec_channels=(4, 4, 4)), 0.3).eval()
    frames = np.random.default_rng(1).random((3, 3, 1, 16, 16), dtype=np.float32)
    stats = model.frame_encoder[2].running_mean.clone()
    done = export_onnx(model, tmp_path / "composite.onnx")
    # exporting leaves the caller's model as it was: eval mode, BatchNorm statistics untouched
    assert not model.training and torch.equal(model.frame_encoder[2].running_mean, stats)
    assert np.abs(onnx_forecast(done.path, frames) - pytorch_forecast(model, frames, 2)).max() <= TOL
    with pytest.raises(ValueError, match="CompositeModel has no single recurrent step.*mode='sequence'"):
        export_onnx(model, tmp_path / "step.onnx", mode="step")


def test_the_torch_export_based_exporter_gives_the_same_graphs(tmp_path):
    pytest.importorskip("onnxscript")
    model = tiny_stack("convgru", recurrent="indconv")
    frames = np.random.default_rng(2).random((3, 2, 1, 16, 16), dtype=np.float32)
    for mode, steps in (("sequence", 2), ("step", 3)):
        done = export_onnx(model, tmp_path / f"{mode}.onnx", mode=mode, exporter="dynamo")
        assert done.exporter == "dynamo"
        assert np.abs(onnx_forecast(done.path, frames, steps) - pytorch_forecast(model, frames, steps)).max() <= TOL


def test_a_sequence_graph_refuses_other_lengths(tmp_path):
    done = export_onnx(tiny_stack("convlstm"), tmp_path / "seq.onnx")
    with pytest.raises(ValueError, match="--mode step"):
        onnx_forecast(done.path, np.zeros((1, 3, 1, 16, 16), np.float32))


def test_convrnn_export_writes_checks_and_never_overwrites(tmp_path, capsys):
    saved = Forecaster(tiny_stack("convjanet", recurrent="ind", hadamard="channel")).save_pretrained(
        tmp_path / "tiny")
    out = tmp_path / "model.onnx"
    assert convrnn(["export", "--ckpt_path", str(saved), "--output", str(out), "--mode", "step"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "state.layers.1.h" in text and "(ok, limit 1e-4)" in text
    before = out.read_bytes()
    assert convrnn(["export", "--ckpt_path", str(saved), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert convrnn(["export", "--ckpt_path", str(tmp_path / "none"), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
