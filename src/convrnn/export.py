"""ONNX export of a trained network, checked in ONNX Runtime (``pip install convrnn[deploy]``).

Two graphs, each with a dynamic batch axis:

- ``sequence``: input ``frames`` (B, in_len, C, H, W) float32 in [0, 1] -> output ``forecast``
  (B, out_len, C, H, W): the whole forecast, as :meth:`convrnn.Forecaster.predict`.
- ``step``: one recurrent step for streaming on a device.  Inputs ``frame`` (B, C, H, W) and the
  state tensors ``state.<path>``; outputs ``prediction`` (B, C, H, W), the forecast of the next frame,
  and ``next_state.<path>`` with the same shapes.  ``<path>`` names a tensor of the stack's state:
  ``layers.<l>.<field>`` for the field of layer l's cell state (``h``, ``c``, ``m`` ...) and ``m``
  for the zig-zag memory leaving the top layer (PredRNN family).  Start from zeros (the state of a
  network that has seen nothing), feed each observed frame with the state the previous call
  returned, and to forecast k frames feed ``prediction`` back k - 1 times (on a copy of the state,
  to keep streaming).  The names and per-sample shapes are in the file's metadata
  (``convrnn.state``, JSON) and printed by ``convrnn export``.

The composite model (seed 003) streams in Python (its predictor is a second network started from
the encoder's state) but has no single step graph: export it as ``sequence``.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)`` first (under a second per tiny
network) and, when it cannot export a network (e.g. PrecipLSTM's ``Tensor.unfold`` with a dynamic
batch) or is gone from a future torch, the ``torch.export``-based one (``dynamo=True``, needs
onnxscript); ``exporter=`` picks one.  Opset 18 (``GridSample``, used by TrajGRU's and MotionRNN's
warps, needs >= 16).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

OPSET = 18
EXPORTERS = ("auto", "torchscript", "dynamo")
MODES = ("sequence", "step")


# -- the state as named tensors ---------------------------------------------------------------
def flatten_state(state: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    """A nested state (NamedTuples, lists, tensors, None) -> [(path, tensor)], depth first;
    None entries are left out (``layers.0.h``, ``layers.0.c``, ``m`` ...)."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [(prefix, state)]
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        items = zip(state._fields, state)
    elif isinstance(state, (list, tuple)):
        items = ((str(i), s) for i, s in enumerate(state))
    else:
        raise TypeError(f"cannot export a state entry of type {type(state).__name__} at {prefix or 'the top'}")
    out = []
    for key, value in items:
        out += flatten_state(value, f"{prefix}.{key}" if prefix else key)
    return out


def rebuild_state(template: Any, tensors) -> Any:
    """The inverse of :func:`flatten_state`: ``template``'s structure with its tensors taken in order
    from the iterator ``tensors``."""
    if template is None:
        return None
    if isinstance(template, Tensor):
        return next(tensors)
    values = [rebuild_state(v, tensors) for v in template]
    if hasattr(template, "_fields"):
        return type(template)(*values)
    return type(template)(values)


class StepState(NamedTuple):
    """The state a step graph carries: every layer's cell state and the zig-zag memory M."""
    layers: list
    m: Tensor | None


class SequenceGraph(nn.Module):
    """``frames`` (B, in_len, C, H, W) -> ``forecast`` (B, out_len, C, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> Tensor:
        return self.model.forecast(frames, self.model.out_len)


class StepGraph(nn.Module):
    """``frame``, state tensors -> ``prediction``, next state tensors (a stack's ``step``); with no
    template, the first step (``frame`` -> ``prediction``, state), from the network's own initial state."""

    def __init__(self, model: nn.Module, template: Any = None):
        super().__init__()
        self.model = model
        self.template = template

    def forward(self, frame: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if self.template is None:
            pred, new = self.model.step(frame, None)
        else:
            layers, m = rebuild_state(self.template, iter(state))
            pred, new = self.model.step(frame, (layers, m, None))
        return (pred, *[t for _, t in flatten_state(StepState(new.layers, new.m))])


class Exported(NamedTuple):
    """What :func:`export_onnx` wrote: the file, the graph's input and output names, the per-sample
    shapes of its state (step mode), the exporter used, and the start graph (step mode, only for a
    network whose state before the first frame is not zeros)."""
    path: Path
    inputs: list[str]
    outputs: list[str]
    state: dict[str, list[int]]
    exporter: str
    start: Path | None = None


def step_template(model: nn.Module, batch: int = 2) -> StepState:
    """The structure of a stack's recurrent state (layers, m), from one step on zeros."""
    if not hasattr(model, "step"):
        raise ValueError(f"{type(model).__name__} has no single recurrent step to export (the composite model "
                         "runs a separate predictor from its encoder's state); export it with mode='sequence', "
                         "or stream it in Python with convrnn.Forecaster.stream")
    frame = torch.zeros(batch, model.frame_channels, *model.frame_size)
    with torch.no_grad():
        _, state = model.step(frame, None)
    return StepState(state.layers, state.m)


def starts_from_zeros(model: nn.Module, template: StepState) -> bool:
    """Whether a first step from an all-zero state equals the network's own first step.  Not for
    MIM and MotionRNN, whose initial ``prev_input`` is the layer's first input (δ = 0 at t = 0)."""
    frame = torch.rand(template.layers[0][0].shape[0], model.frame_channels, *model.frame_size,
                       generator=torch.Generator().manual_seed(0))
    zeros = rebuild_state(template, (torch.zeros_like(t) for _, t in flatten_state(template)))
    with torch.no_grad():
        own = StepGraph(model)(frame)
        given = StepGraph(model, template)(frame, *[t for _, t in flatten_state(zeros)])
    return all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(own, given))


def export_onnx(model: nn.Module, path: str | os.PathLike, mode: str = "sequence", exporter: str = "auto",
                opset: int = OPSET, config: dict | None = None) -> Exported:
    """Export ``model`` (a registered network, any device; exported on CPU in eval mode) to ONNX.

    See the module docstring for the two modes.  In step mode a network whose state before the first
    frame is not zeros (:func:`starts_from_zeros`) gets a second file ``<stem>.start.onnx`` for the
    first frame.  Files are written atomically (a temporary file renamed over the target).  Raises
    ValueError for a model or mode that cannot be exported, naming the reason (and, from the
    exporter, the operator)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {MODES}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}; choose one of {EXPORTERS}")
    config = config if config is not None else getattr(model, "config", None)
    model = copy.deepcopy(model).cpu().eval()    # the caller's model keeps its device and mode
    b = 2   # traced with batch 2 so that the batch axis is not specialised to 1
    c, (h, w) = model.frame_channels, model.frame_size
    path = Path(path)
    if mode == "sequence":
        frames = torch.rand(b, model.in_len, c, h, w)
        used, inputs, outputs, _ = _write(SequenceGraph(model), (frames,), path, ["frames"], ["forecast"], {},
                                          exporter, opset, model, mode, config)
        return Exported(path, inputs, outputs, {}, used)
    template = step_template(model, b)
    named = flatten_state(template)
    frame = torch.rand(b, c, h, w)
    state = {n: list(t.shape[1:]) for n, t in named}
    produced = ["prediction"] + [f"next_state.{n}" for n in state]
    start = None if starts_from_zeros(model, template) else path.with_name(f"{path.stem}.start.onnx")
    used, inputs, outputs, state = _write(
        StepGraph(model, template), (frame, *[torch.zeros_like(t) for _, t in named]), path,
        ["frame"] + [f"state.{n}" for n in state], produced, state, exporter, opset, model, mode, config, start)
    if start is not None:   # the first step: frame -> prediction and the state the step graph reads
        _write(StepGraph(model), (frame,), start, ["frame"], produced, state, used, opset, model, "start", config)
    return Exported(path, inputs, outputs, state, used, start)


def _write(graph: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], state: dict,
           exporter: str, opset: int, model: nn.Module, mode: str, config: dict | None, start: Path | None = None
           ) -> tuple[str, list[str], list[str], dict]:
    """Export one graph to ``path`` atomically; returns the exporter used and the final names/state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    graph.eval()       # a wrapper starts in training mode, and the exporter restores the mode it found
    try:
        used = _export(graph, args, tmp, inputs, outputs, exporter, opset)
        inputs, outputs, state = _finish(tmp, model, mode, state, config, start)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return used, inputs, outputs, state


def _export(graph: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], exporter: str,
            opset: int) -> str:
    axes = {name: {0: "batch"} for name in inputs + outputs}
    tried = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors = []
    for kind in tried:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation, tracer warnings
                if kind == "torchscript":
                    with _quiet_stderr():   # on failure it prints the whole TorchScript graph to fd 2
                        torch.onnx.export(graph, args, str(path), input_names=inputs, output_names=outputs,
                                          dynamic_axes=axes, opset_version=opset, dynamo=False)
                else:
                    batch = torch.export.Dim("batch", min=1)
                    shapes: tuple = ({0: batch},)           # frames / frame
                    if len(args) > 1:                      # StepGraph.forward(frame, *state)
                        shapes += (tuple({0: batch} for _ in args[1:]),)
                    program = torch.onnx.export(graph, args, input_names=inputs, output_names=outputs,
                                                dynamic_shapes=shapes, opset_version=opset, dynamo=True)
                    program.save(str(path), external_data=False)
            return kind
        except Exception as e:  # noqa: BLE001  (each exporter raises its own types; all are reported)
            errors.append(f"{kind}: {type(e).__name__}: {_first_lines(str(e))}")
    raise ValueError(f"ONNX export of {type(graph.model).__name__} failed ({'; '.join(errors)}); the operator named "
                     "above has no ONNX conversion at opset "
                     f"{opset} in this torch version (try another --opset or exporter)")


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptors 1 and 2 (where torch's C++ side logs) to /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _first_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:n])[:600]


def _finish(path: Path, model: nn.Module, mode: str, state: dict, config: dict | None, start: Path | None
            ) -> tuple[list[str], list[str], dict]:
    """Keep only the state the step reads (the exporter drops unread inputs, e.g. a PredRNN cell's own
    copy of M, which the stack's M replaces; the start graph keeps what the step graph reads) in the
    outputs, and write what a device needs to drive the graph into the file's metadata.  Returns the
    final input and output names and state."""
    import onnx
    proto = onnx.load(str(path))
    if mode == "step":
        read = {i.name[len("state."):] for i in proto.graph.input if i.name.startswith("state.")}
        state = {name: shape for name, shape in state.items() if name in read}
    for out in list(proto.graph.output):
        if out.name.startswith("next_state.") and out.name[len("next_state."):] not in state:
            proto.graph.output.remove(out)
    meta = {"convrnn.mode": mode, "convrnn.in_len": str(model.in_len), "convrnn.out_len": str(model.out_len),
            "convrnn.frame": json.dumps([model.frame_channels, *model.frame_size]),
            "convrnn.state": json.dumps(state), "convrnn.config": json.dumps(config),
            "convrnn.start": start.name if start is not None else ""}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return [i.name for i in proto.graph.input], [o.name for o in proto.graph.output], state


def onnx_metadata(path: str | os.PathLike) -> dict:
    """The ``convrnn.*`` metadata of an exported file: mode, in_len, out_len, frame (C, H, W), state
    (name -> per-sample shape), start (the start graph's file name or ''), config."""
    import onnx
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    meta = {k[len("convrnn."):]: v for k, v in props.items() if k.startswith("convrnn.")}
    if "mode" not in meta:
        raise ValueError(f"{path} was not written by convrnn export (no convrnn.* metadata)")
    for key in ("in_len", "out_len"):
        meta[key] = int(meta[key])
    for key in ("frame", "state", "config"):
        meta[key] = json.loads(meta[key])
    return meta


def onnx_forecast(path: str | os.PathLike, frames, steps: int | None = None):
    """Run an exported file in ONNX Runtime: ``frames`` (B, T, C, H, W) float32 numpy -> the next
    ``steps`` frames (B, steps, C, H, W).  A sequence graph needs T = in_len and steps <= out_len; a
    step graph takes any T >= 1 and any steps (the reference implementation of the step protocol in
    the module docstring: zeros or the start graph first, the state fed back, predictions fed back)."""
    import numpy as np
    import onnxruntime as ort
    meta = onnx_metadata(path)
    steps = meta["out_len"] if steps is None else steps
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if meta["mode"] == "sequence":
        if frames.shape[1] != meta["in_len"] or steps > meta["out_len"]:
            raise ValueError(f"{path} is a sequence graph: it takes in_len={meta['in_len']} frames and forecasts "
                             f"out_len={meta['out_len']}; got {frames.shape[1]} frames and steps={steps} "
                             "(export with --mode step for any lengths)")
        return session.run(None, {"frames": frames})[0][:, :steps]
    if meta["mode"] != "step":
        raise ValueError(f"{path} is a {meta['mode']} graph; run the step graph it belongs to")
    names = [o.name for o in session.get_outputs()][1:]
    state = {f"state.{n}": np.zeros((frames.shape[0], *shape), np.float32) for n, shape in meta["state"].items()}
    start = (ort.InferenceSession(str(Path(path).with_name(meta["start"])), providers=["CPUExecutionProvider"])
             if meta["start"] else None)

    def step(frame, first):
        out = (start.run(None, {"frame": frame}) if first and start is not None
               else session.run(None, {"frame": frame, **state}))
        state.update({n[len("next_"):]: v for n, v in zip(names, out[1:])})
        return out[0]

    for t in range(frames.shape[1]):
        y = step(frames[:, t], t == 0)
    outputs = [y]
    for _ in range(steps - 1):
        outputs.append(step(outputs[-1], False))
    return np.stack(outputs, 1)


# -- the command ------------------------------------------------------------------------------
def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="convrnn export",
        description="Export a trained network to ONNX and check it in ONNX Runtime (pip install convrnn[deploy]). "
                    "sequence: frames (B, in_len, C, H, W) -> forecast (B, out_len, C, H, W); step: one recurrent "
                    "step with the state as named inputs/outputs (state.* -> next_state.*) for streaming.")
    p.add_argument("--ckpt_path", required=True, metavar="CKPT",
                   help="a .ckpt written by `convrnn fit`, a directory of Forecaster.save_pretrained, or a shipped name")
    p.add_argument("--output", required=True, type=Path, metavar="FILE.onnx", help="where to write the graph")
    p.add_argument("--mode", choices=MODES, default="sequence", help="sequence (default) or step")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torch.onnx exporter: auto (TorchScript-based, else torch.export-based), torchscript, dynamo")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET}; GridSample needs >= 16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the ONNX Runtime check against PyTorch (random frames, max abs difference <= 1e-4)")
    return p


def command(argv: list[str]) -> int:
    """``convrnn export --ckpt_path CKPT --output model.onnx [--mode sequence|step]`` (see --help)."""
    from .forecaster import load_forecaster
    p = _parser()
    a = p.parse_args(argv)
    if a.output.exists() and not a.overwrite:
        p.error(f"{a.output} exists; choose another --output or pass --overwrite")
    try:
        import onnx  # noqa: F401
    except ImportError:
        p.error("ONNX export needs the onnx package: pip install 'convrnn[deploy]' (onnx, onnxruntime)")
    try:
        forecaster = load_forecaster(a.ckpt_path)
        done = export_onnx(forecaster.model, a.output, a.mode, a.exporter, a.opset, forecaster.config)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    c, (h, w) = forecaster.frame_channels, forecaster.frame_size
    print(f"convrnn export: wrote {done.path} ({a.mode} graph, opset {a.opset}, {done.exporter} exporter)")
    if a.mode == "sequence":
        print(f"  input  frames   (B, {forecaster.in_len}, {c}, {h}, {w}) float32 in [0, 1]")
        print(f"  output forecast (B, {forecaster.out_len}, {c}, {h}, {w})")
    else:
        print(f"  input frame (B, {c}, {h}, {w}) float32 in [0, 1] and the state; outputs prediction "
              f"(B, {c}, {h}, {w}), the next frame, and next_state.* (feed each back as state.*):")
        for name, shape in done.state.items():
            print(f"    state.{name:24s} (B, {', '.join(map(str, shape))})")
        print("  before the first frame: " + (f"run {done.start.name} instead (frame -> prediction, next_state.*)"
                                               if done.start else "every state.* is zeros"))
    return _check(done, forecaster) if a.check else 0


def _check(done: Exported, forecaster) -> int:
    """Compare the file in ONNX Runtime with PyTorch on random frames (batch 3)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("  not checked: onnxruntime is not installed (pip install 'convrnn[deploy]')")
        return 0
    import numpy as np
    c, (h, w) = forecaster.frame_channels, forecaster.frame_size
    frames = np.random.default_rng(0).random((3, forecaster.in_len, c, h, w), dtype=np.float32)
    diff = float(np.abs(onnx_forecast(done.path, frames) - forecaster.predict(frames)).max())
    ok = diff <= 1e-4
    print(f"  ONNX Runtime vs PyTorch on 3 random sequences: max abs difference {diff:.2e} "
          f"({'ok' if ok else 'FAILED'}, limit 1e-4)")
    return 0 if ok else 1
