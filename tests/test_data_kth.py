"""KTHDataModule on small files in both real layouts (AVI via PyAV, the PredRNN JPEG tree): person splits,
the stride rules, window boundaries (never across a video or a numbering gap), resizing, the cache, errors."""
import warnings

import numpy as np
import pytest
import torch

from convrnn.data import DatasetFormatError, DatasetNotFoundError, KTHDataModule
from convrnn.data.kth import read_clips
from convrnn.data.windows import resize_frames

from formats import frame_number, write_avi, write_jpeg_video

SMALL = {"size": 8, "in_len": 2, "out_len": 3, "train_persons": [1, 2, 3], "val_persons": [3],
         "test_persons": [4]}


def numbers_of(window: torch.Tensor) -> list[int]:
    """The frame numbers a (T, 1, H, W) window of constant test frames holds."""
    return [frame_number(window[t].float().mean()) for t in range(window.shape[0])]


@pytest.fixture(scope="module")
def avi_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kth_avi")
    for person in (1, 2, 3, 4):
        write_avi(root / f"person{person:02d}_boxing_d1_uncomp.avi", range(1, 14))      # 13 frames
        write_avi(root / "running" / f"person{person:02d}_running_d2_uncomp.avi", range(1, 12))  # 11 frames
    write_avi(root / "person05_walking_d1_uncomp.avi", range(1, 9))
    return root


def test_avi_splits_and_stride_rule(avi_root, tmp_path):
    dm = KTHDataModule(str(avi_root), "openstl", cache_dir=str(tmp_path), batch_size=2, **SMALL)
    info = dm.describe()
    # window length 5.  boxing (13 frames), stride = 5, aligned to the end: starts 8, 3 -> 2 windows;
    # running (11 frames), stride 3 from the end: starts 6, 3, 0 -> 3 windows.  train = persons 1, 2 (3 is val)
    assert info["splits"] == {"train": 2 * (2 + 3), "val": 2 + 3, "test": 2 + 3}
    assert (info["in_len"], info["out_len"], info["channels"], info["height"], info["width"]) == (2, 3, 1, 8, 8)
    assert info["dataset"] == "kth" and info["protocol"] == "openstl"
    windows = [numbers_of(dm.datasets["test"][i]) for i in range(5)]
    assert windows == [[4, 5, 6, 7, 8], [9, 10, 11, 12, 13], [1, 2, 3, 4, 5], [4, 5, 6, 7, 8], [7, 8, 9, 10, 11]]
    item = dm.datasets["train"][0]
    assert item.dtype == torch.uint8 and item.shape == (5, 1, 8, 8)
    batch = next(iter(dm.test_dataloader()))
    assert batch.shape == (2, 5, 1, 8, 8) and batch.dtype == torch.uint8


def test_val_is_carved_from_training_persons(avi_root, tmp_path):
    dm = KTHDataModule(str(avi_root), "openstl", cache_dir=str(tmp_path), **SMALL)
    dm.setup()
    persons = {s: {dm.datasets[s].source.videos[v].person for v, _, _ in dm.datasets[s].source.segments}
               for s in ("train", "val", "test")}
    assert persons == {"train": {1, 2}, "val": {3}, "test": {4}}
    with pytest.raises(ValueError, match="not training persons"):
        KTHDataModule(str(avi_root), "openstl", **{**SMALL, "val_persons": [4]})
    with pytest.raises(ValueError, match="both train_persons and test_persons"):
        KTHDataModule(str(avi_root), "openstl", **{**SMALL, "test_persons": [3]})


def reference_predrnn_starts(videos: list[tuple[str, str, list[int]]], seq_len: int) -> list[tuple[str, int]]:
    """PredRNN's index rule as its kth_action.py describes it, written out independently: scan the frames of
    all videos from the last one backwards; a window ending at frame i is taken when frame i - L + 1 belongs
    to the same video and their numbers differ by L - 1; then step back L (boxing, handclapping,
    handwaving, walking) or 3 (jogging, running) frames, else 1."""
    flat = [(name, action, n) for name, action, numbers in videos for n in numbers]
    starts, i = [], len(flat) - 1
    while i >= seq_len - 1:
        first = flat[i - seq_len + 1]
        if first[0] == flat[i][0] and flat[i][2] - first[2] == seq_len - 1:
            starts.append((first[0], first[2]))
            i -= (seq_len - 1) if flat[i][1] not in ("jogging", "running") else 2
        i -= 1
    return sorted(starts)


def test_jpeg_layout_follows_predrnn_rule(tmp_path):
    root = tmp_path / "kth_jpeg"
    videos = [("person01_boxing_d1", "boxing", list(range(1, 8)) + list(range(9, 22))),   # gap at 8
              ("person01_jogging_d1", "jogging", list(range(1, 16))),
              ("person02_handwaving_d3", "handwaving", list(range(3, 12)))]
    for name, action, numbers in videos:
        write_jpeg_video(root / action / f"{name}_uncomp", numbers)
    dm = KTHDataModule(str(root), "openstl", size=6, in_len=2, out_len=3, train_persons=[1, 2],
                       val_persons=[], test_persons=[9])
    dm.setup("fit")
    train = dm.datasets["train"]
    got = sorted((train.source.videos[train.source.segments[seg][0]].name,
                  numbers_of(train[i])[0]) for i, (seg, _) in enumerate(train.index))
    assert got == reference_predrnn_starts(videos, 5)
    for i, (seg, _) in enumerate(train.index):   # consecutive numbers of one video, never across the gap
        n = numbers_of(train[i])
        assert n == list(range(n[0], n[0] + 5))
        if train.source.segments[seg][0] == 0:     # person01_boxing_d1 has no frame 8
            assert not n[0] <= 8 <= n[-1]
    assert train[0].shape == (5, 1, 6, 6)
    assert len(dm.datasets["val"]) == 0 and dm.val_dataloader() == []


def test_msrnn_protocol_actions_strides_and_clips(avi_root, tmp_path):
    clips = tmp_path / "00sequences.txt"
    clips.write_text("person01_running_d2\t\tframes\t1-4, 5-11\n\nperson02_running_d2 2 9\n")
    assert read_clips(clips) == {"person01_running_d2": [(1, 4), (5, 11)], "person02_running_d2": [(2, 9)]}
    with pytest.warns(UserWarning, match="unverified"):
        KTHDataModule(str(avi_root), "msrnn", cache_dir=str(tmp_path), **SMALL)
    dm = KTHDataModule(str(avi_root), "msrnn", cache_dir=str(tmp_path), clips=str(clips),
                       **{**SMALL, "presize": 10})
    dm.setup("fit")
    train = dm.datasets["train"]
    # boxing is not an msrnn action; running stride 3 from the start of each clip:
    # person 1: clip 1-4 is too short, clip 5-11 -> starts 5; person 2: clip 2-9 -> starts 2, 5
    got = sorted((train.source.videos[train.source.segments[s][0]].person, numbers_of(train[i])[0])
                 for i, (s, _) in enumerate(train.index))
    assert got == [(1, 5), (2, 2), (2, 5)]
    assert dm.protocol["name"] == "msrnn" and dm.protocol["unverified"] == {}
    assert dm.protocol["overrides"]["clips"] == str(clips)


def test_cache_is_built_once(avi_root, tmp_path, monkeypatch):
    dm = KTHDataModule(str(avi_root), "openstl", cache_dir=str(tmp_path), **SMALL)
    dm.setup("test")
    cached = sorted((tmp_path / "kth").glob("*.npy"))
    assert len(cached) == 2 and np.load(cached[0]).shape == (13, 12, 16)
    import convrnn.data.kth as kth
    monkeypatch.setattr(kth, "decode_avi", lambda path: pytest.fail("decoded again"))
    again = KTHDataModule(str(avi_root), "openstl", cache_dir=str(tmp_path), **SMALL)
    again.setup("test")
    assert torch.equal(again.datasets["test"][1], dm.datasets["test"][1])


def test_resize_is_bilinear_with_half_pixel_centres():
    # 1 x 2 -> 1 x 4: sample points at x = -0.25, 0.25, 0.75, 1.25 (clamped): a, 3a/4 + b/4, a/4 + 3b/4, b
    frames = np.array([[[[40, 200]]]], dtype=np.uint8)
    out = resize_frames(frames, (1, 4))
    assert out.dtype == np.uint8 and out[0, 0, 0].tolist() == [40, 80, 160, 200]
    floats = resize_frames(frames.astype(np.float32), (1, 4))
    assert floats.dtype == np.float32 and floats[0, 0, 0].tolist() == [40.0, 80.0, 160.0, 200.0]


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"does not exist(.|\n)*csc\.kth\.se"):
        KTHDataModule(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="no KTH videos found(.|\n)*Expected under"):
        KTHDataModule(str(empty)).setup()
    broken = tmp_path / "broken"
    (broken / "boxing" / "person01_boxing_d1_uncomp").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="holds no image_NNNN.jpg"):
        KTHDataModule(str(broken), **{**SMALL, "val_persons": []}).setup("fit")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "person01_boxing_d1_uncomp.avi").write_bytes(b"not a video" * 10)
    with pytest.raises(DatasetFormatError, match="cannot decode"):
        KTHDataModule(str(corrupt), cache_dir=str(tmp_path / "c"), **{**SMALL, "val_persons": []}).setup("fit")
    with pytest.raises(DatasetNotFoundError, match=r"persons \[4\] \(test split\)"):
        write_avi(tmp_path / "only1" / "person01_boxing_d1_uncomp.avi", range(1, 6))
        KTHDataModule(str(tmp_path / "only1"), cache_dir=str(tmp_path / "c"), **SMALL).setup("test")
    with pytest.raises(ValueError, match="protocol='nope'"):
        KTHDataModule(str(empty), "nope")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the openstl protocol has no unverified setting
        KTHDataModule(str(empty), "openstl")
