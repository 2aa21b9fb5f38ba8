"""What every real-data loader shares: protocols, window indexing, lazy windows, the frame cache, resizing,
clear errors and the DataModule base class.

- A :class:`Protocol` is a named set of settings from the literature (``"openstl"``, ``"msrnn"``, ``"hko7"``...).
  A DataModule takes its settings unless an argument overrides one, and records name, settings, overrides
  and the settings taken from unpublished or secondary sources (``unverified``, with a warning) in
  ``DataModule.protocol``, which goes to metrics.json.
- Windows are ``length`` consecutive frames of one *segment* (a video, a run of evenly spaced time steps);
  :func:`window_index` lists them as (segment, start) rows, so no window crosses a segment, and each split
  builds its own segments, so none crosses a split.
- :class:`Windows` is the Dataset: it asks a *source* for each window when it is drawn
  (``source.window(segment, start, length)`` -> frames (T, C, H, W) [, mask]), so nothing is loaded whole.
- :func:`cached_npy` / :func:`build_caches`: a one-time cache of decoded frames as .npy files (memory-mapped,
  written atomically, with a progress bar), for sources that cannot be read window by window (video files).
- :func:`resize_frames`: bilinear resizing with half-pixel centres and no antialiasing, which is OpenCV's
  ``INTER_LINEAR`` (what PredRNN's and MS-RNN's loaders call).
- :class:`DatasetNotFoundError` / :class:`DatasetFormatError`: what was expected, where, and how to get it.
- :class:`WindowDataModule`: the LightningDataModule of every loader here; batches are (B, T, C, H, W)
  tensors, or dicts ``{"frames": ..., "mask": ...}`` where the data has a validity mask (radar).
"""
from __future__ import annotations

import hashlib
import os
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
                None: SPLITS}
DOCS = "docs/data.md"


# -- errors ---------------------------------------------------------------------------------------
class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or one of its files is missing."""


class DatasetFormatError(ValueError):
    """A dataset file or folder is not in the expected format."""


# -- protocols ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """A named setting from the literature: ``settings`` maps option -> value; ``source`` says where it
    comes from; ``unverified`` maps the settings taken from secondary sources or unpublished files to a
    note saying why."""

    name: str
    source: str
    settings: dict = field(default_factory=dict)
    unverified: dict = field(default_factory=dict)


def resolve_protocol(protocols: dict[str, Protocol], name: str, given: dict) -> tuple[dict, dict]:
    """The settings of protocol ``name`` with the non-None values of ``given`` in place of its own (so None
    means "the protocol's"; False turns an optional setting such as a crop or a resize off), and the record
    for metrics.json: ``{"name", "source", "settings", "overrides", "unverified"}``.  Warns when an
    unverified setting is used as the protocol gives it."""
    if name not in protocols:
        raise ValueError(f"protocol={name!r}; choose one of {list(protocols)}")
    spec = protocols[name]
    unknown = sorted(set(given) - set(spec.settings))
    if unknown:
        raise TypeError(f"protocol {name!r} has no settings {unknown}; it has {sorted(spec.settings)}")
    settings = {key: value if given.get(key) is None else given[key] for key, value in spec.settings.items()}
    overrides = {key: value for key, value in given.items() if value is not None and value != spec.settings[key]}
    assumed = {key: note for key, note in spec.unverified.items() if key not in overrides}
    if assumed:
        notes = "; ".join(f"{k}={settings[k]!r}: {note}" for k, note in assumed.items())
        warnings.warn(f"protocol {name!r} uses unverified settings ({notes}); recorded as such in "
                      f"metrics.json, see {DOCS}", stacklevel=3)
    record = {"name": name, "source": spec.source, "settings": _plain(settings), "overrides": _plain(overrides),
              "unverified": assumed}
    return settings, record


def _plain(value):
    """Tuples -> lists, Paths -> str (JSON- and YAML-friendly)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- window indexing ------------------------------------------------------------------------------
def window_starts(length: int, size: int, stride: int, anchor: str = "start") -> np.ndarray:
    """Start positions of windows of ``size`` consecutive items in a segment of ``length`` items, ``stride``
    apart: counted from the segment's first item (``anchor="start"``) or aligned to its last one
    (``"end"``: the last window ends on the last item, PredRNN's KTH rule).  Ascending."""
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be >= 1, got {size} and {stride}")
    if anchor not in ("start", "end"):
        raise ValueError(f"anchor must be 'start' or 'end', got {anchor!r}")
    if length < size:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, length - size + 1, stride, dtype=np.int64)
    return starts if anchor == "start" else (length - size) - starts[::-1]


def window_index(lengths: Sequence[int], size: int, stride: int | Sequence[int],
                 anchor: str = "start") -> np.ndarray:
    """(N, 2) int64 rows (segment, start) of every window of ``size`` items inside each segment;
    ``stride`` is one int or one per segment."""
    strides = [stride] * len(lengths) if np.isscalar(stride) else list(stride)
    rows = []
    for segment, (length, step) in enumerate(zip(lengths, strides)):
        starts = window_starts(int(length), size, int(step), anchor)
        rows.append(np.stack([np.full(len(starts), segment, dtype=np.int64), starts], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)


def runs(values: np.ndarray, step: int = 1) -> list[tuple[int, int]]:
    """Maximal runs of a sorted integer array whose neighbours differ by exactly ``step``:
    ``[(begin, end), ...]`` positions, end exclusive.  runs([1, 2, 3, 7, 8], 1) == [(0, 3), (3, 5)]."""
    values = np.asarray(values)
    if len(values) == 0:
        return []
    cuts = np.flatnonzero(np.diff(values) != step) + 1
    bounds = np.concatenate([[0], cuts, [len(values)]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class Windows(Dataset):
    """Windows of a frame source, read lazily: item i is ``source.window(segment, start, length)`` for row
    i of ``index`` (N, 2), as a (T, C, H, W) tensor, or ``{"frames", "mask"}`` when the source returns
    (frames, mask).  The source must be picklable (DataLoader workers)."""

    def __init__(self, source, index: np.ndarray, length: int):
        self.source, self.index, self.length = source, np.asarray(index, dtype=np.int64).reshape(-1, 2), length

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        segment, start = self.index[i]
        item = self.source.window(int(segment), int(start), self.length)
        if isinstance(item, tuple):
            frames, mask = item
            return {"frames": _tensor(frames), "mask": _tensor(mask)}
        return _tensor(item)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor of its own memory (a slice of a read-only memory map is copied)."""
    return torch.from_numpy(np.require(array, requirements=["C", "W", "O"]))


# -- frames ---------------------------------------------------------------------------------------
def as_size(value) -> tuple[int, int] | None:
    """A frame size setting -> (h, w): an int n means (n, n); None or False (off) -> None."""
    if value is None or value is False:
        return None
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def resize_frames(frames: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """Frames (T, C, H, W) resized to ``size`` = (h, w) bilinearly (half-pixel centres, no antialiasing:
    OpenCV's INTER_LINEAR).  uint8 in, uint8 out (rounded); floats stay float32.  None: unchanged."""
    if size is None or tuple(frames.shape[-2:]) == tuple(size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    y = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False, antialias=False)
    if frames.dtype == np.uint8:
        return y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return y.numpy()


# -- cache ----------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$CONVRNN_DATA/cache``, else ``~/.cache/convrnn/cache``."""
    root = os.environ.get("CONVRNN_DATA")
    return (Path(root) if root else Path.home() / ".cache" / "convrnn") / "cache"


def cache_path(cache_dir: str | os.PathLike | None, dataset: str, source: Path, *settings) -> Path:
    """Where the cached frames of ``source`` go: ``<cache_dir>/<dataset>/<stem>-<key>.npy``; the key hashes
    the source's absolute path, size and modification time and ``settings``, so a changed file or setting
    gets a new cache file."""
    stat = source.stat()
    text = repr((str(source.resolve()), stat.st_size, stat.st_mtime_ns) + settings)
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / dataset / f"{source.stem}-{key}.npy"


def cached_npy(path: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    """The array in ``path`` (memory-mapped); built once with ``build()`` and written atomically (a
    temporary file in the same folder, renamed), so an interrupted build never leaves a partial cache."""
    path = Path(path)
    if not path.is_file():
        array = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, array)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def build_caches(jobs: Iterable[tuple[Path, Callable[[], np.ndarray]]], desc: str) -> list[np.ndarray]:
    """:func:`cached_npy` for each (path, build) job, with a progress bar over the ones still to build."""
    from tqdm.auto import tqdm

    jobs = list(jobs)
    todo = sum(not Path(p).is_file() for p, _ in jobs)
    with tqdm(total=todo, desc=desc, unit="file", disable=todo == 0) as bar:
        out = []
        for path, build in jobs:
            fresh = not Path(path).is_file()
            out.append(cached_npy(path, build))
            bar.update(int(fresh))
    return out


# -- the DataModule -------------------------------------------------------------------------------
class WindowDataModule(L.LightningDataModule):
    """Base of the real-data DataModules: named protocol, lazy window datasets per split, loaders, and
    :meth:`describe` for ``convrnn data``.

    A subclass sets ``NAME`` (the ``convrnn data`` name), ``PROTOCOLS``, ``LAYOUT`` (the expected folder
    layout, for error messages), ``GET`` (where to get the data) and, for radar data, ``zr`` (a, b of
    Z = a R^b, to convert rain-rate thresholds), and implements :meth:`build` (split -> Dataset).
    ``self.settings`` holds the resolved protocol settings; ``self.protocol`` the record for metrics.json.
    """

    NAME = ""
    PROTOCOLS: dict[str, Protocol] = {}
    LAYOUT = ""
    GET = ""
    zr: tuple[float, float] | None = None

    def __init__(self, root: str | os.PathLike, protocol: str, batch_size: int, num_workers: int, **options):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.root = Path(root).expanduser()
        self.settings, self.protocol = resolve_protocol(self.PROTOCOLS, protocol, options)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: dict[str, Dataset] = {}
        if not self.root.is_dir():
            raise self.not_found(f"the folder {self.root} does not exist" if not self.root.exists()
                                 else f"{self.root} is not a folder")

    # errors that say what was expected, where, and how to get the data
    def _message(self, problem: str) -> str:
        layout = textwrap.indent(textwrap.dedent(self.LAYOUT).strip(), "    ")
        return (f"{self.NAME}: {problem}.\n  Expected under {self.root}:\n{layout}\n"
                f"  Get the data: {self.GET}\n  (details: {DOCS}, section '{self.NAME}')")

    def not_found(self, problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(self._message(problem))

    def bad_format(self, problem: str) -> DatasetFormatError:
        return DatasetFormatError(self._message(problem))

    # splits
    @property
    def in_len(self) -> int:
        return int(self.settings["in_len"])

    @property
    def out_len(self) -> int:
        return int(self.settings["out_len"])

    @property
    def seq_len(self) -> int:
        return self.in_len + self.out_len

    def build(self, splits: tuple[str, ...]) -> dict[str, Dataset]:
        """The datasets of ``splits`` (a subclass's work)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        missing = tuple(s for s in STAGE_SPLITS[stage] if s not in self.datasets)
        if missing:
            self.datasets.update(self.build(missing))

    def frame_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the frames the loaders yield."""
        for dataset in self.datasets.values():
            if len(dataset):
                item = dataset[0]
                return tuple((item["frames"] if isinstance(item, dict) else item).shape[1:])
        raise self.bad_format("no split holds a single window, so no frame could be read")

    def describe(self) -> dict:
        """What ``convrnn data NAME --json`` prints: dataset, protocol, number of windows per split,
        in_len, out_len and the frames' channels, height and width (sets up every split)."""
        self.setup()
        c, h, w = self.frame_shape()
        return {"dataset": self.NAME, "protocol": self.protocol["name"],
                "splits": {split: len(self.datasets[split]) for split in SPLITS},
                "in_len": self.in_len, "out_len": self.out_len, "channels": int(c), "height": int(h),
                "width": int(w)}

    # loaders
    def _loader(self, split: str, shuffle: bool = False):
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, "test"))
        dataset = self.datasets[split]
        if len(dataset) == 0 and split == "train":
            raise self.bad_format(f"the training split holds no window of {self.seq_len} frames")
        if len(dataset) == 0:
            return []  # Lightning skips a stage whose loader is empty
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("test")
