"""The shared loader machinery (convrnn.data.windows): window starts and index, runs of consecutive time
steps, protocol resolution, the lazy Windows dataset and the one-time .npy cache."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convrnn.data.windows import (
    Protocol,
    Windows,
    cache_path,
    cached_npy,
    resolve_protocol,
    runs,
    window_index,
    window_starts,
)


def test_window_starts_by_hand():
    assert window_starts(13, 5, 5).tolist() == [0, 5]                  # 0..4, 5..9 (10..12 left over)
    assert window_starts(13, 5, 5, anchor="end").tolist() == [3, 8]    # ..., 8..12: the last frame is used
    assert window_starts(11, 5, 3, anchor="end").tolist() == [0, 3, 6]
    assert window_starts(4, 5, 1).tolist() == []
    with pytest.raises(ValueError, match="anchor"):
        window_starts(10, 2, 1, anchor="middle")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 8), st.integers(1, 6), st.sampled_from(["start", "end"]))
def test_windows_fit_and_are_stride_apart(length, size, stride, anchor):
    starts = window_starts(length, size, stride, anchor)
    assert ((starts >= 0) & (starts + size <= length)).all()
    assert (np.diff(starts) == stride).all()
    if length >= size:   # as many as fit, and the anchored end is used
        assert len(starts) == (length - size) // stride + 1
        assert starts[0] == 0 if anchor == "start" else starts[-1] == length - size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=40, unique=True), st.integers(1, 3))
def test_runs_split_exactly_at_gaps(values, step):
    values = np.array(sorted(values), dtype=np.int64)
    pieces = runs(values, step)
    assert [i for a, b in pieces for i in range(a, b)] == list(range(len(values)))   # a partition, in order
    for a, b in pieces:
        assert (np.diff(values[a:b]) == step).all()                                  # inside: consecutive
    for (_, b), (c, _) in zip(pieces, pieces[1:]):
        assert values[c] - values[b - 1] != step                                     # between: a gap


def test_window_index_never_crosses_a_segment():
    index = window_index([7, 3, 10], 3, [2, 1, 4])
    assert index.tolist() == [[0, 0], [0, 2], [0, 4], [1, 0], [2, 0], [2, 4]]
    assert window_index([], 3, 1).shape == (0, 2)


class Ramp:
    """A source whose frame at (segment, t) is filled with 10 * segment + t."""

    def __init__(self, masked: bool = False):
        self.masked = masked

    def window(self, segment, start, length):
        frames = np.stack([np.full((1, 2, 2), 10 * segment + start + k, np.uint8) for k in range(length)])
        return (frames, frames > 11) if self.masked else frames


def test_windows_dataset_reads_lazily_and_returns_dicts_with_masks():
    plain = Windows(Ramp(), window_index([4, 5], 3, 1), 3)
    assert len(plain) == 2 + 3 and plain[3].flatten().tolist()[::4] == [11, 12, 13]
    masked = Windows(Ramp(masked=True), window_index([4, 5], 3, 1), 3)
    item = masked[3]
    assert set(item) == {"frames", "mask"} and item["mask"][:, 0, 0, 0].tolist() == [False, True, True]
    with pytest.raises(IndexError):
        plain[5]


PROTOCOLS = {"a": Protocol("a", "paper A", {"size": (64, 64), "in_len": 10, "crop": (0, 0, 8, 8)},
                           {"crop": "nobody knows"})}


def test_protocol_overrides_and_unverified_settings():
    with pytest.warns(UserWarning, match="crop=.*nobody knows"):
        settings_, record = resolve_protocol(PROTOCOLS, "a", {"size": None, "in_len": 5, "crop": None})
    assert settings_ == {"size": (64, 64), "in_len": 5, "crop": (0, 0, 8, 8)}
    assert record == {"name": "a", "source": "paper A", "settings": {"size": [64, 64], "in_len": 5, "crop": [0, 0, 8, 8]},
                      "overrides": {"in_len": 5}, "unverified": {"crop": "nobody knows"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # overriding the unverified setting silences the warning
        settings_, record = resolve_protocol(PROTOCOLS, "a", {"crop": False})
    assert settings_["crop"] is False and record["unverified"] == {}
    with pytest.raises(ValueError, match="choose one of \\['a'\\]"):
        resolve_protocol(PROTOCOLS, "b", {})
    with pytest.raises(TypeError, match="no settings \\['colour'\\]"):
        resolve_protocol(PROTOCOLS, "a", {"colour": 3})


def test_cache_is_built_once_and_written_atomically(tmp_path):
    source = tmp_path / "video.avi"
    source.write_bytes(b"x")
    path = cache_path(tmp_path / "cache", "kth", source, "gray")
    calls = []

    def build():
        calls.append(1)
        return np.arange(6, dtype=np.uint8).reshape(2, 3)

    first = cached_npy(path, build)
    again = cached_npy(path, build)
    assert calls == [1] and isinstance(again, np.memmap) and again.tolist() == first.tolist()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]      # no temporary file left

    def broken():
        raise RuntimeError("decoder crashed")

    other = cache_path(tmp_path / "cache", "kth", source, "rgb")
    assert other != path                                                      # settings are part of the key
    with pytest.raises(RuntimeError, match="decoder crashed"):
        cached_npy(other, broken)
    assert not other.exists()
    source.write_bytes(b"changed")                                            # a changed file: a new key
    assert cache_path(tmp_path / "cache", "kth", source, "gray") != path
    torch.testing.assert_close(torch.from_numpy(np.array(first)), torch.arange(6, dtype=torch.uint8).view(2, 3))
