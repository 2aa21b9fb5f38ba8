"""Use a trained model: :class:`Forecaster` (predict, stream, save and load without pickle).

    from convrnn import Forecaster
    fc = Forecaster.from_checkpoint("runs/quickstart/<run>/checkpoints/last.ckpt")
    future = fc.predict(frames)                 # (T, H, W) uint8 in -> (out_len, H, W) uint8 out
    stream = fc.stream()                        # frame by frame, the same numbers as predict
    for frame in frames:
        stream.push(frame)
    next_ten = stream.forecast(10)              # the state is left as it was
    fc.save_pretrained("my_model")              # model.safetensors + config.json
    fc = Forecaster.from_pretrained("my_model")  # a directory, or a name in list_pretrained()

Frames are uint8 (0..255) or float in [0, 1], as numpy arrays or torch tensors; a forecast comes
back in the kind it was given (numpy or torch, uint8 or the float dtype, the same rank).
Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint from someone else is
untrusted input, and loading it never runs pickled code.
"""
from __future__ import annotations

import json
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .registry import model_from_config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "convrnn-pretrained"


# -- frames in, frames out --------------------------------------------------------------------
class _Kind:
    """How frames came in (numpy or torch, dtype, device, rank), to give the forecast back alike."""

    def __init__(self, frames: Any, rank: int):
        self.numpy = isinstance(frames, np.ndarray)
        self.dtype = frames.dtype
        self.device = None if self.numpy else frames.device
        self.rank = rank
        self.uint8 = self.dtype == (np.uint8 if self.numpy else torch.uint8)

    def back(self, y: Tensor, squeeze: int) -> Any:
        """``y`` (B, T, C, H, W) float in [0, 1] -> the input's kind, with ``squeeze`` leading axes
        dropped (batch for (T, C, H, W), batch and channel for (T, H, W))."""
        if squeeze:
            y = y[0]
            if squeeze == 2:
                y = y[:, 0]
        if self.uint8:
            y = (y.clamp(0, 1) * 255).round().to(torch.uint8)
        if self.numpy:
            y = y.cpu().numpy()
            return y if self.uint8 else y.astype(self.dtype, copy=False)
        return y.to(device=self.device, dtype=self.dtype)


def _as_float(frames: Any, what: str) -> tuple[Tensor, _Kind]:
    """numpy/torch, uint8 (0..255) or float in [0, 1] -> float32 tensor and how it came."""
    if isinstance(frames, np.ndarray):
        kind = _Kind(frames, frames.ndim)
        if not (frames.dtype == np.uint8 or np.issubdtype(frames.dtype, np.floating)):
            raise TypeError(f"{what} of dtype {frames.dtype}: pass uint8 (0..255) or float in [0, 1] "
                            "(convert other integers first, e.g. frames.astype(np.float32) / 65535)")
        x = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, Tensor):
        kind = _Kind(frames, frames.dim())
        if not (frames.dtype == torch.uint8 or frames.is_floating_point()):
            raise TypeError(f"{what} of dtype {frames.dtype}: pass uint8 (0..255) or float in [0, 1]")
        x = frames.detach()
    else:
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(frames).__name__}")
    if kind.uint8:
        return x.float() / 255, kind
    x = x.float()
    if x.numel() and (x.min() < -0.5 or x.max() > 1.5):
        raise ValueError(f"{what} hold values in [{x.min().item():g}, {x.max().item():g}] but float frames must "
                         "be in [0, 1]: divide 0..255 floats by 255 or pass uint8")
    return x, kind


class Forecaster:
    """A trained network ready to forecast: eval mode, no gradients, numpy or torch frames.

    Args:
        model: any registered network (a :class:`~convrnn.models.base.Predictor`), e.g. from
            :func:`convrnn.create_model`; its ``config`` (set by ``create_model``) is what
            :meth:`save_pretrained` writes, or pass ``config`` yourself.

    Build one with :meth:`from_checkpoint` (a ``convrnn fit`` checkpoint: the network is rebuilt from
    the hyperparameters stored in it) or :meth:`from_pretrained` (safetensors + JSON).
    """

    def __init__(self, model: nn.Module, config: dict | None = None):
        self.model = model.eval()
        self.config = config if config is not None else getattr(model, "config", None)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: Any = "cpu") -> Forecaster:
        """A checkpoint written by ``convrnn fit`` (best-*.ckpt, last.ckpt): the network config is its
        ``hyper_parameters['net']``, the weights its ``state_dict['net.*']``.  Loaded with
        ``weights_only=True``: no pickled code runs."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} not found: give the path of a .ckpt written by "
                                    "`convrnn fit` (runs/<config>/<run>/checkpoints/last.ckpt or best-*.ckpt)")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: holds pickled objects beyond tensors and plain containers, and loading it "
                             "would run their code, so it is refused (torch.load weights_only=True). If you wrote "
                             "it yourself and trust it, load it with torch.load(weights_only=False), build the "
                             f"model and pass it to Forecaster(model). ({e})") from None
        net = (ckpt.get("hyper_parameters") or {}).get("net") if isinstance(ckpt, dict) else None
        if not isinstance(net, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise ValueError(f"{path}: not a checkpoint of `convrnn fit` (no hyper_parameters['net'] network config "
                             "and state_dict); for a saved directory use Forecaster.from_pretrained")
        model = model_from_config(net)
        state = {_strip(k): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        model.load_state_dict(state, strict=True)
        return cls(model.to(map_location) if map_location is not None else model, dict(net))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, map_location: Any = "cpu") -> Forecaster:
        """A directory written by :meth:`save_pretrained` (``config.json`` + ``model.safetensors``), or
        the name of weights shipped with the package (:func:`list_pretrained`)."""
        from safetensors.torch import load_model
        folder = Path(name_or_dir)
        if not folder.is_dir():
            shipped = list_pretrained()
            if str(name_or_dir) not in shipped:
                raise FileNotFoundError(
                    f"{str(name_or_dir)!r} is neither a directory nor the name of shipped weights "
                    f"({', '.join(shipped) if shipped else 'none are shipped in this version'}); give a directory "
                    f"written by Forecaster.save_pretrained ({CONFIG_FILE} + {WEIGHTS_FILE})")
            folder = _pretrained_root() / str(name_or_dir)
        net = _read_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: {WEIGHTS_FILE} is missing beside {CONFIG_FILE}")
        model = model_from_config(net)
        device = "cpu" if map_location is None else str(torch.device(map_location))
        load_model(model, str(weights), strict=True, device=device)
        return cls(model, net)

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``config.json`` (the network config) and ``model.safetensors`` (the weights) into
        ``directory``; :meth:`from_pretrained` reads them back with no pickle.  An existing save is
        kept unless ``overwrite``."""
        from safetensors.torch import save_model
        if self.config is None:
            raise ValueError("this model's config is unknown: build it with convrnn.create_model / "
                             "model_from_config, or pass Forecaster(model, config={'name': ..., ...})")
        folder = Path(directory)
        targets = [folder / CONFIG_FILE, folder / WEIGHTS_FILE]
        if not overwrite and any(t.exists() for t in targets):
            raise FileExistsError(f"{folder} already holds a saved model; choose another directory or pass "
                                  "overwrite=True")
        text = json.dumps({"format": FORMAT, "version": 1, "net": self.config}, indent=2)  # fails on non-JSON config
        folder.mkdir(parents=True, exist_ok=True)
        tmp = [t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in targets]
        try:
            tmp[0].write_text(text + "\n")
            save_model(self.model, str(tmp[1]), metadata={"format": FORMAT})
            for src, dst in zip(tmp, targets):
                os.replace(src, dst)
        finally:
            for t in tmp:
                t.unlink(missing_ok=True)
        return folder

    # -- facts ----------------------------------------------------------------------------------
    @property
    def in_len(self) -> int:
        return self.model.in_len

    @property
    def out_len(self) -> int:
        return self.model.out_len

    @property
    def frame_channels(self) -> int:
        return self.model.frame_channels

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.model.frame_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- forecasting ----------------------------------------------------------------------------
    def _batch(self, frames: Any, what: str = "frames") -> tuple[Tensor, _Kind, int]:
        """(B, T, C, H, W) | (T, C, H, W) | (T, H, W) -> float (B, T, C, H, W) on the model's device."""
        x, kind = _as_float(frames, what)
        squeeze = {5: 0, 4: 1, 3: 2}.get(x.dim())
        if squeeze is None:
            raise ValueError(f"{what} of shape {tuple(x.shape)}: expected (B, T, C, H, W), (T, C, H, W) or (T, H, W)")
        if squeeze == 2 and self.frame_channels != 1:
            raise ValueError(f"{what} of shape {tuple(x.shape)} read as (T, H, W), but the model takes "
                             f"{self.frame_channels}-channel frames: pass (T, C, H, W)")
        x = x[None] if squeeze == 1 else x[None, :, None] if squeeze == 2 else x
        return x.to(self.device), kind, squeeze

    @torch.no_grad()
    def predict(self, frames: Any, out_len: int | None = None) -> Any:
        """Forecast ``out_len`` frames (default: the trained ``out_len``) after ``frames``.

        Every given frame is observed (a recurrent model warms up on any number; it was trained on
        ``in_len``); ``out_len`` longer than trained runs the model on its own outputs.  Eval mode,
        no gradients.  Returns the forecast in the kind of ``frames`` (numpy or torch, uint8 or float,
        (B, out_len, C, H, W) / (out_len, C, H, W) / (out_len, H, W))."""
        x, kind, squeeze = self._batch(frames)
        return kind.back(self.model.forecast(x, out_len), squeeze)

    def stream(self, batch: int = 1) -> Stream:
        """A frame-by-frame stream of ``batch`` sequences (see :class:`Stream`)."""
        return Stream(self, batch)

    def __repr__(self) -> str:
        name = (self.config or {}).get("name", type(self.model).__name__)
        return (f"Forecaster({name}, frames {self.frame_channels}x{self.frame_size[0]}x{self.frame_size[1]}, "
                f"in_len={self.in_len}, out_len={self.out_len})")


class Stream:
    """Frames one at a time: ``push(frame)`` feeds an observed frame and keeps the recurrent state;
    ``forecast(k)`` returns the next k frames without disturbing it, so pushing and forecasting can
    alternate (nowcasting: forecast after every new radar image).  Pushing the frames of a sequence
    and forecasting gives the numbers of ``Forecaster.predict`` on that sequence.

    A frame is (B, C, H, W), or (C, H, W) / (H, W) for a stream of batch 1; forecasts come back in
    the kind of the last pushed frame, (B, k, C, H, W) / (k, C, H, W) / (k, H, W).
    """

    def __init__(self, forecaster: Forecaster, batch: int = 1):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.forecaster = forecaster
        self.batch = batch
        self.state: Any = None
        self.seen = 0
        self._kind: tuple[_Kind, int] | None = None

    @torch.no_grad()
    def push(self, frame: Any) -> None:
        """Observe one frame: (B, C, H, W), or (C, H, W) / (H, W) when ``batch`` is 1."""
        fc = self.forecaster
        x, kind = _as_float(frame, "frame")
        squeeze = {4: 0, 3: 1, 2: 2}.get(x.dim())
        if squeeze is None or (squeeze and self.batch != 1):
            raise ValueError(f"frame of shape {tuple(x.shape)}: expected (B={self.batch}, C, H, W)"
                             + (", (C, H, W) or (H, W)" if self.batch == 1 else ""))
        x = x[None] if squeeze == 1 else x[None, None] if squeeze == 2 else x
        if x.shape[0] != self.batch:
            raise ValueError(f"frame batch {x.shape[0]} but this stream was opened for batch={self.batch}")
        x = x.to(fc.device)
        fc.model.check_frames(x[:, None], min_len=1)
        self.state = fc.model.observe(x, self.state)
        self.seen += 1
        self._kind = (kind, squeeze)

    @torch.no_grad()
    def forecast(self, k: int | None = None) -> Any:
        """The next ``k`` frames (default: the trained ``out_len``); the stream's state is unchanged."""
        if self.state is None:
            raise ValueError("push at least one frame before forecasting")
        kind, squeeze = self._kind
        return kind.back(self.forecaster.model.rollout(self.state, k or self.forecaster.out_len), squeeze)

    def reset(self) -> None:
        """Forget every pushed frame (a new sequence starts)."""
        self.state, self.seen, self._kind = None, 0, None


# -- shipped weights --------------------------------------------------------------------------
def _pretrained_root() -> Path:
    return Path(str(resources.files("convrnn") / "pretrained"))


def list_pretrained() -> list[str]:
    """Names of the weights shipped inside the package (``convrnn/pretrained/<name>/`` holding
    ``config.json`` and ``model.safetensors``), for :meth:`Forecaster.from_pretrained`."""
    root = _pretrained_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file())


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; a saved model is a directory with {CONFIG_FILE} "
                                f"and {WEIGHTS_FILE} (Forecaster.save_pretrained)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("net"), dict):
        raise ValueError(f"{path}: expected {{'format': '{FORMAT}', 'version': 1, 'net': {{'name': ..., ...}}}}")
    return record["net"]


def _strip(key: str) -> str:
    """``net.cells.0.wx.weight`` -> ``cells.0.wx.weight`` (and torch.compile's ``_orig_mod.``)."""
    return key[len("net."):].replace("_orig_mod.", "")


def load_forecaster(spec: str | os.PathLike, map_location: Any = "cpu") -> Forecaster:
    """What a command's ``--ckpt_path`` names: a ``convrnn fit`` checkpoint file, a directory written
    by :meth:`Forecaster.save_pretrained`, or the name of shipped weights.  Never random weights."""
    path = Path(spec)
    if path.is_file():
        return Forecaster.from_checkpoint(path, map_location)
    if path.is_dir() or str(spec) in list_pretrained():
        return Forecaster.from_pretrained(spec, map_location)
    shipped = list_pretrained()
    raise FileNotFoundError(
        f"no checkpoint at {str(spec)!r}: give the .ckpt of a fit run (runs/<config>/<run>/checkpoints/last.ckpt "
        "or best-*.ckpt), a directory written by Forecaster.save_pretrained"
        + (f", or one of the shipped names {shipped}" if shipped else ""))
