"""FolderDataModule on your own data: folders of PNG/JPEG frames and video files (AVI, MKV, MP4 via PyAV),
split by folder or by ratio; windows never cross a sequence; natural frame order; RGB; clear errors."""
import numpy as np
import pytest
import torch

from convrnn.data import DatasetFormatError, DatasetNotFoundError, FolderDataModule

from formats import frame_number, frame_value, write_avi

SMALL = {"in_len": 2, "out_len": 2}


def write_pngs(folder, numbers, size=(6, 8), rgb=False):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:   # names f1.png ... f12.png: natural order differs from string order
        value = frame_value(n)
        image = np.full(size + ((3,) if rgb else ()), value, dtype=np.uint8)
        if rgb:
            image[..., 1], image[..., 2] = value + 1, value + 2
        Image.fromarray(image).save(folder / f"f{n}.png")
    return folder


def numbers_of(window):
    return [frame_number(window[t].float().mean()) for t in range(window.shape[0])]


def test_split_by_folder_with_images_and_videos(tmp_path):
    write_pngs(tmp_path / "train" / "a", range(5, 12))                  # f5..f11: 7 frames -> 1 window of 4
    write_pngs(tmp_path / "train" / "b", range(21, 30))                 # 9 frames -> 2
    write_avi(tmp_path / "train" / "c.avi", range(41, 53), size=(6, 8))  # 12 frames -> 3
    write_pngs(tmp_path / "val" / "d", range(61, 66))                   # 5 -> 1
    write_avi(tmp_path / "test" / "e.mkv", range(1, 11), size=(6, 8))   # 10 -> 2
    dm = FolderDataModule(str(tmp_path), cache_dir=str(tmp_path / "cache"), **SMALL)
    info = dm.describe()
    assert info["splits"] == {"train": 6, "val": 1, "test": 2}
    assert (info["in_len"], info["out_len"], info["channels"], info["height"], info["width"]) == (2, 2, 1, 6, 8)
    windows = [numbers_of(dm.datasets["train"][i]) for i in range(6)]
    assert windows == [[5, 6, 7, 8], [21, 22, 23, 24], [25, 26, 27, 28], [41, 42, 43, 44], [45, 46, 47, 48],
                       [49, 50, 51, 52]]
    assert numbers_of(dm.datasets["test"][1]) == [5, 6, 7, 8]
    assert dm.datasets["train"][0].dtype == torch.uint8
    dense = FolderDataModule(str(tmp_path), stride=1, cache_dir=str(tmp_path / "cache"), **SMALL)
    dense.setup("fit")
    assert len(dense.datasets["train"]) == 4 + 6 + 9


def test_split_by_ratio_in_name_order(tmp_path):
    for k in range(1, 11):   # seq1 .. seq10: natural order puts seq10 last
        write_pngs(tmp_path / f"seq{k}", range(5 * k, 5 * k + 4))
    dm = FolderDataModule(str(tmp_path), **SMALL)
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert numbers_of(dm.datasets["val"][0])[0] == 45 and numbers_of(dm.datasets["test"][0])[0] == 50
    other = FolderDataModule(str(tmp_path), split=[0.5, 0.2, 0.3], **SMALL)
    other.setup()
    assert [len(other.datasets[s]) for s in ("train", "val", "test")] == [5, 2, 3]


def test_rgb_and_resize(tmp_path):
    write_pngs(tmp_path / "train" / "a", range(1, 5), rgb=True)
    write_pngs(tmp_path / "train" / "b", range(11, 15), size=(12, 16), rgb=True)
    with pytest.raises(DatasetFormatError, match="different sizes(.|\n)*give size="):
        FolderDataModule(str(tmp_path), channels=3, **SMALL).setup("fit")
    dm = FolderDataModule(str(tmp_path), channels=3, size=[3, 4], **SMALL)
    dm.setup("fit")
    window = dm.datasets["train"][0]
    assert window.shape == (4, 3, 3, 4)
    assert window[0, :, 0, 0].tolist() == [frame_value(1), frame_value(1) + 1, frame_value(1) + 2]


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no sequences"):
        FolderDataModule(str(tmp_path)).setup()
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="train/ holds no sequence"):
        FolderDataModule(str(tmp_path)).setup()
    (tmp_path / "train" / "x.mp4").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(DatasetFormatError, match="cannot decode"):
        FolderDataModule(str(tmp_path), cache_dir=str(tmp_path / "c")).setup("fit")
    with pytest.raises(ValueError, match="channels=2"):
        FolderDataModule(str(tmp_path), channels=2)
    with pytest.raises(ValueError, match="sum to 1"):
        FolderDataModule(str(tmp_path), split=[0.5, 0.1, 0.1])
