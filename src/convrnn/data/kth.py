"""KTH human actions: the raw AVI files or the PredRNN JPEG release, as windows of grayscale frames.

Schuldt, Laptev & Caputo, "Recognizing human actions: a local SVM approach", ICPR 2004.  6 actions x 25
persons x 4 scenarios (d1-d4), 160x120 grayscale video at 25 fps.  Two layouts are read:

- ``avi``: ``person01_boxing_d1_uncomp.avi`` ... in ``root`` or in ``root/<action>/`` (the files of the KTH
  site), decoded once with PyAV (FFmpeg, its luma plane as 8-bit gray) into a .npy cache;
- ``jpeg``: ``root/<action>/person01_boxing_d1_uncomp/image_0001.jpg`` ... (PredRNN's release, which
  OpenSTL uses; the first channel of each JPEG, as PredRNN reads it), read window by window.

A video's frames are numbered 1, 2, ... (the AVI frame order, or the number in the JPEG name); windows are
consecutive numbers of one video (a gap in the numbering splits it), optionally inside clip ranges (a KTH
``00sequences.txt`` or a "name first last" list), ``strides[action]`` apart, counted from the start of a
run or aligned to its end (``anchor``).  Frames are resized bilinearly (OpenCV's INTER_LINEAR, what both
reference loaders call), optionally in two steps (``presize`` then ``size``, as MS-RNN stored 160x160 PNGs
first), and kept as uint8.  Splits are by person; ``val_persons`` are carved out of the training persons
(the reference code validates on its test set instead).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .windows import (
    Protocol,
    WindowDataModule,
    Windows,
    as_size,
    build_caches,
    cache_path,
    resize_frames,
    runs,
    window_index,
)

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
VIDEO_NAME = re.compile(r"^person(\d\d)_([a-z]+)_d(\d)(?:_uncomp)?$")
FRAME_NAME = re.compile(r"^image_?(\d+)\.jpe?g$", re.IGNORECASE)
CLIP_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")

PROTOCOLS = {
    "openstl": Protocol(
        "openstl",
        "PredRNN / OpenSTL KTH loader (core/data_provider/kth_action.py, openstl/datasets/dataloader_kth.py): "
        "persons 1-16 train, 17-25 test, 128x128, 10 -> 20, stride = window length for boxing, handclapping, "
        "handwaving and walking, 3 for jogging and running, windows aligned to the end of each video",
        {"actions": ACTIONS, "train_persons": tuple(range(1, 17)), "test_persons": tuple(range(17, 26)),
         "val_persons": (15, 16), "size": (128, 128), "presize": None, "in_len": 10, "out_len": 20,
         "strides": {"boxing": None, "handclapping": None, "handwaving": None, "walking": None,
                     "jogging": 3, "running": 3},
         "anchor": "end", "clips": None}),
    "msrnn": Protocol(
        "msrnn",
        "MS-RNN code (config.py, util/load_kth_only_run.py, util/kth_preproccess.py): walking, jogging, "
        "running; persons 1-16 / 17-25; AVI frames resized to 160x160, then 88x88; 10 -> 10; stride 10 "
        "for walking and jogging, 3 for running, from the start of each clip",
        {"actions": ("jogging", "running", "walking"), "train_persons": tuple(range(1, 17)),
         "test_persons": tuple(range(17, 26)), "val_persons": (15, 16), "size": (88, 88),
         "presize": (160, 160), "in_len": 10, "out_len": 10,
         "strides": {"jogging": 10, "running": 3, "walking": 10}, "anchor": "start", "clips": None},
        {"clips": "MS-RNN windows only the frames of its trimmed clip lists (*_trimmed_only_run.txt), which "
                  "are not published; give the KTH 00sequences.txt (or your list) with clips=..."}),
}


@dataclass
class Video:
    """One KTH video: its name (``person01_boxing_d1``), person, action, and where its frames are."""

    name: str
    person: int
    action: str
    path: Path                                           # the AVI file or the JPEG folder
    frames: list[Path] = field(default_factory=list)     # JPEG files (jpeg layout)
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _video_name(name: str) -> tuple[str, int, str] | None:
    stem = name[:-4] if name.lower().endswith(".avi") else name
    match = VIDEO_NAME.match(stem)
    if match is None or match.group(2) not in ACTIONS:
        return None
    person, action, scenario = match.groups()
    return f"person{person}_{action}_d{scenario}", int(person), action


def find_videos(root: Path, layout: str) -> tuple[str, list[Video]]:
    """The layout found (``jpeg`` preferred when both are there) and its videos, sorted by name."""
    folders = [root] + [root / a for a in ACTIONS if (root / a).is_dir()]
    avi, jpeg = [], []
    for folder in folders:
        for entry in folder.iterdir():
            parsed = _video_name(entry.name)
            if parsed is None:
                continue
            if entry.is_file() and entry.suffix.lower() == ".avi":
                avi.append(Video(*parsed, entry))
            elif entry.is_dir() and folder != root:
                jpeg.append(Video(*parsed, entry))
    if layout == "auto":
        layout = "jpeg" if jpeg else "avi"
    videos = jpeg if layout == "jpeg" else avi
    return layout, sorted(videos, key=lambda v: v.name)


def list_jpeg_frames(video: Video) -> None:
    """Fill ``video.frames`` / ``video.numbers`` from its folder's image_NNNN.jpg files, in number order."""
    found = []
    for entry in video.path.iterdir():
        match = FRAME_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    found.sort()
    video.numbers = np.array([n for n, _ in found], dtype=np.int64)
    video.frames = [p for _, p in found]


def decode_avi(path: Path) -> np.ndarray:
    """Every frame of a video file as uint8 (T, H, W): FFmpeg's 8-bit gray (luma) conversion, via PyAV."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        frames = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no decodable frame")
    return np.stack(frames)


def read_clips(path: str | Path) -> dict[str, list[tuple[int, int]]]:
    """Clip ranges per video name, frame numbers first..last inclusive (1-based), from KTH's
    ``00sequences.txt`` ("person01_boxing_d1  frames 1-95, 96-185, ...") or a list of "name first last"."""
    clips: dict[str, list[tuple[int, int]]] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts or _video_name(parts[0]) is None:
            continue
        name = _video_name(parts[0])[0]
        rest = " ".join(parts[1:])
        ranges = [(int(a), int(b)) for a, b in CLIP_RANGE.findall(rest)]
        if not ranges:
            numbers = [int(x) for x in parts[1:3] if x.isdigit()]
            if len(numbers) != 2:
                raise ValueError(f"{path}: cannot read the clip ranges of line {line!r}; expected "
                                 "'person01_boxing_d1 frames 1-95, 96-185' or 'person01_boxing_d1 1 95'")
            ranges = [tuple(numbers)]
        clips.setdefault(name, []).extend(ranges)
    return clips


class KTHFrames:
    """The frames of a list of videos, read window by window: segments are (video, first position,
    length) runs of consecutive frame numbers; frames (T, 1, h, w) uint8."""

    def __init__(self, videos: list[Video], arrays: list | None, segments: list[tuple[int, int, int]],
                 presize, size):
        self.videos, self.arrays, self.segments = videos, arrays, segments
        self.presize, self.size = presize, size

    def window(self, segment: int, start: int, length: int) -> np.ndarray:
        v, first, _ = self.segments[segment]
        lo = first + start
        if self.arrays is not None:
            frames = np.asarray(self.arrays[v][lo:lo + length])
        else:
            frames = np.stack([_first_channel(p) for p in self.videos[v].frames[lo:lo + length]])
        frames = resize_frames(frames[:, None], self.presize)
        return resize_frames(frames, self.size)


def _first_channel(path: Path) -> np.ndarray:
    """A JPEG's first channel (PredRNN reads ``np.array(Image.open(f))[:, :, 0]``), uint8 (H, W)."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img)
    return array[..., 0] if array.ndim == 3 else array


class KTHDataModule(WindowDataModule):
    """KTH human actions (Schuldt et al., ICPR 2004) as uint8 batches (B, T, 1, H, W).

    Protocols (each setting below can be overridden; see docs/data.md, section 'kth'):

    - ``"openstl"``: PredRNN / OpenSTL -- all 6 actions, persons 1-16 train / 17-25 test, 128x128,
      10 -> 20, stride = window length (boxing, handclapping, handwaving, walking) or 3 (jogging, running),
      windows aligned to the end of each video.
    - ``"msrnn"``: MS-RNN -- walking, jogging, running; 160x160 then 88x88; 10 -> 10; stride 10 (walking,
      jogging) or 3 (running) from the start of each clip; its trimmed clip lists are unpublished
      (``clips`` unverified).

    Args:
        root: the folder of ``*_uncomp.avi`` files (or of ``<action>/`` folders holding them) or of the
            JPEG release's ``<action>/<video>/image_NNNN.jpg``.
        layout: ``"auto"`` (JPEG when present, else AVI), ``"avi"`` or ``"jpeg"``.
        cache_dir: where decoded AVI frames are cached (default ``$CONVRNN_DATA/cache`` or
            ``~/.cache/convrnn/cache``).
        actions, train_persons, val_persons, test_persons: override the protocol's; ``val_persons`` must be
            training persons (default 15 and 16: trained on persons 1-14).
        size, presize: (h, w) or an int; in_len, out_len: frames in and out.
        strides: {action: stride} (None = the window length); anchor: ``"start"`` or ``"end"``.
        clips: a clip list (KTH's 00sequences.txt or "name first last" lines): only these frames are used.
    """

    NAME = "kth"
    PROTOCOLS = PROTOCOLS
    LAYOUT = """
        person01_boxing_d1_uncomp.avi ... person25_walking_d4_uncomp.avi   (the KTH files; also in <action>/)
      or the PredRNN JPEG release:
        boxing/person01_boxing_d1_uncomp/image_0001.jpg ...  (one folder per action and video)
    """
    GET = ("https://www.csc.kth.se/cvap/actions/ (the six zip files of AVI videos, free); the JPEG release is "
           "linked from PredRNN's and OpenSTL's READMEs")

    def __init__(self, root: str, protocol: str = "openstl", batch_size: int = 16, num_workers: int = 0,
                 layout: str = "auto", cache_dir: str | None = None, actions: list[str] | None = None,
                 train_persons: list[int] | None = None, val_persons: list[int] | None = None,
                 test_persons: list[int] | None = None, size: int | tuple[int, int] | None = None,
                 presize: int | tuple[int, int] | None = None, in_len: int | None = None,
                 out_len: int | None = None, strides: dict[str, int | None] | None = None,
                 anchor: str | None = None, clips: str | None = None):
        if layout not in ("auto", "avi", "jpeg"):
            raise ValueError(f"layout={layout!r}; choose 'auto', 'avi' or 'jpeg'")
        super().__init__(root, protocol, batch_size, num_workers, actions=actions, train_persons=train_persons,
                         val_persons=val_persons, test_persons=test_persons, size=size, presize=presize,
                         in_len=in_len, out_len=out_len, strides=strides, anchor=anchor, clips=clips)
        self.save_hyperparameters()
        self.layout, self.cache_dir = layout, cache_dir
        s = self.settings
        unknown = sorted(set(s["actions"]) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown KTH actions {unknown}; choose from {list(ACTIONS)}")
        missing = sorted(set(s["actions"]) - set(s["strides"]))
        if missing:
            raise ValueError(f"strides has no entry for {missing}; give {{action: stride}} for every action "
                             "(None = the window length)")
        train, val, test = (set(s[k]) for k in ("train_persons", "val_persons", "test_persons"))
        if train & test:
            raise ValueError(f"persons {sorted(train & test)} are in both train_persons and test_persons")
        if not val <= train:
            raise ValueError(f"val_persons {sorted(val - train)} are not training persons; the validation split "
                             "is carved from train_persons, never from the test persons")

    def _persons(self, split: str) -> set[int]:
        s = self.settings
        train = set(s["train_persons"]) - set(s["val_persons"])
        return {"train": train, "val": set(s["val_persons"]), "test": set(s["test_persons"])}[split]

    def build(self, splits: tuple[str, ...]) -> dict:
        layout, videos = find_videos(self.root, self.layout)
        if not videos:
            raise self.not_found(f"no KTH videos found (layout {layout}): neither person??_<action>_d?_uncomp.avi "
                                 "files nor <action>/person??_<action>_d?_uncomp/ frame folders")
        actions = set(self.settings["actions"])
        clips = read_clips(self.settings["clips"]) if self.settings["clips"] else None
        chosen = {}
        for split in splits:
            persons = self._persons(split)
            chosen[split] = [v for v in videos if v.person in persons and v.action in actions]
            if not chosen[split] and persons:
                raise self.not_found(f"no {layout} videos of persons {sorted(persons)} ({split} split) for the "
                                     f"actions {sorted(actions)}")
        frames = self._frames(sorted({v.name: v for vs in chosen.values() for v in vs}.values(),
                                     key=lambda v: v.name), layout)
        arrays = {split: None if layout == "jpeg" else [frames[v.name] for v in videos]
                  for split, videos in chosen.items()}
        return {split: self._windows(videos, arrays[split], clips) for split, videos in chosen.items()}

    def _frames(self, videos: list[Video], layout: str) -> dict:
        """Per video name: its frame array (AVI, decoded once into the cache) or None (JPEG, read per window);
        fills the videos' frame numbers."""
        if layout == "jpeg":
            for video in videos:
                list_jpeg_frames(video)
                if not video.frames:
                    raise self.bad_format(f"{video.path} holds no image_NNNN.jpg frames")
            return {v.name: None for v in videos}
        arrays = self._decode_all(videos)
        for video, array in zip(videos, arrays):
            video.numbers = np.arange(1, len(array) + 1, dtype=np.int64)
        return {v.name: a for v, a in zip(videos, arrays)}

    def _windows(self, videos: list[Video], arrays: list | None, clips) -> Windows:
        segments, strides = [], []
        for v, video in enumerate(videos):
            stride = self.settings["strides"][video.action] or self.seq_len
            for first, stop in _segments(video, clips):
                segments.append((v, first, stop - first))
                strides.append(stride)
        index = window_index([n for _, _, n in segments], self.seq_len, strides, self.settings["anchor"])
        size, presize = as_size(self.settings["size"]), as_size(self.settings["presize"])
        source = KTHFrames(videos, arrays, segments, presize, size)
        return Windows(source, index, self.seq_len)

    def _decode_all(self, videos: list[Video]) -> list[np.ndarray]:
        def job(video: Video):
            def build():
                try:
                    return decode_avi(video.path)
                except Exception as err:   # PyAV raises its own FFmpeg errors
                    raise self.bad_format(f"cannot decode {video.path}: {err}") from err
            return cache_path(self.cache_dir, "kth", video.path, "gray"), build

        return build_caches([job(v) for v in videos], "KTH: decoding AVI files once")


def _segments(video: Video, clips) -> list[tuple[int, int]]:
    """(first, stop) positions in the video's frame list of runs of consecutive frame numbers, cut to its
    clip ranges when ``clips`` is given."""
    numbers = video.numbers
    if clips is None:
        return runs(numbers)
    out = []
    for lo, hi in clips.get(video.name, []):
        inside = np.flatnonzero((numbers >= lo) & (numbers <= hi))
        out += [(int(inside[a]), int(inside[b - 1]) + 1) for a, b in runs(numbers[inside])]
    return out
