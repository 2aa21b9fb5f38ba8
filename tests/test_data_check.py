"""``convrnn data NAME --root DIR [--protocol P] [--json]``: the split counts it reports on small files in each
real format, its text output, and one clear message (exit status 1) for a missing or malformed folder."""
import datetime as dt
import json

import numpy as np
import pytest

from convrnn.data.check import NAMES, main
from convrnn.data.taxibj import FILES

from formats import (
    radolan_name,
    write_avi,
    write_hko_days,
    write_hko_frame,
    write_radolan,
    write_taxibj,
)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def report(capsys, *argv) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_kth_counts_and_text(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVRNN_DATA", str(tmp_path / "data"))      # the AVI cache goes there
    for person in (1, 16, 17):
        write_avi(tmp_path / "kth" / f"person{person:02d}_running_d1_uncomp.avi", range(1, 36))
    info = report(capsys, "kth", "--root", str(tmp_path / "kth"), "--set", "size=16")
    # openstl: 35 frames, window 30, running stride 3 from the end: starts 5, 2 -> 2 per video;
    # train person 1, val person 16 (carved from 1-16), test person 17
    assert info == {"dataset": "kth", "protocol": "openstl", "splits": {"train": 2, "val": 2, "test": 2},
                    "in_len": 10, "out_len": 20, "channels": 1, "height": 16, "width": 16}
    code, out, err = run(capsys, "kth", "--root", str(tmp_path / "kth"), "--protocol", "msrnn", "--set", "size=16")
    # msrnn: window 20, running stride 3 from the start: starts 0, 3, ..., 15 -> 6 per video
    assert code == 0 and "sequences: train 6, val 6, test 6" in out and "protocol msrnn" in out
    assert "unverified: clips" in out and "warning" in err


def test_taxibj_counts(tmp_path, capsys):
    days = {FILES[0]: [dt.date(2013, 7, 1)], FILES[1]: [dt.date(2014, 3, 1)], FILES[2]: [dt.date(2015, 3, 1)],
            FILES[3]: [dt.date(2016, 4, 9), dt.date(2016, 4, 10)]}
    for name, d in days.items():
        write_taxibj(tmp_path / name, d)
    info = report(capsys, "taxibj", "--root", str(tmp_path), "--set", "test_windows=10", "--protocol", "msrnn")
    # windows of 8: 41 + 41 + 41 + 89 = 212; test the last 10; before them 212 - 10 - 7 = 195;
    # val ceil(19.5) = 20; train 195 - 20 - 7 = 168
    assert info["splits"] == {"train": 168, "val": 20, "test": 10}
    assert (info["channels"], info["height"], info["in_len"], info["out_len"]) == (1, 32, 4, 4)


def test_hko7_counts(tmp_path, capsys):
    days = {"train": dt.date(2009, 6, 1), "valid": dt.date(2009, 6, 2), "test": dt.date(2015, 6, 1)}
    for split, day in days.items():
        for k in range(30):
            write_hko_frame(tmp_path, dt.datetime(day.year, day.month, day.day) + dt.timedelta(minutes=6 * k))
        write_hko_days(tmp_path, f"hko7_rainy_{split}_days.txt", [day])
    info = report(capsys, "hko7", "--root", str(tmp_path), "--set", "masks=false")
    # 30 frames, window 25: train every frame with a valid window (<= 2 consecutive missing at the end):
    # starts 0..7 -> 8; val/test sequent with stride 5: 0, 5 (5..29) -> 2
    assert info["splits"] == {"train": 8, "val": 2, "test": 2}
    assert (info["in_len"], info["out_len"], info["height"]) == (5, 20, 24)


def test_radolan_counts(tmp_path, capsys):
    for year in (2014, 2015, 2016):
        for k in range(12):
            t = dt.datetime(year, 5, 1) + dt.timedelta(minutes=5 * k)
            write_radolan(tmp_path / radolan_name(t), t, np.zeros((16, 16), np.uint16))
    info = report(capsys, "radolan", "--root", str(tmp_path), "--set", "crop=[2, 2, 8, 8]")
    assert info["splits"] == {"train": 1, "val": 1, "test": 1}     # 12 frames, windows of 10
    assert (info["height"], info["width"], info["in_len"], info["out_len"]) == (8, 8, 5, 5)


def test_convrnn_command_dispatches_data(tmp_path, capsys):
    from convrnn.cli import main as convrnn
    for name in ("a.avi", "b.avi"):
        write_avi(tmp_path / "own" / "train" / name, range(1, 25))
    code = convrnn(["data", "folder", "--root", str(tmp_path / "own"), "--json", "--set", f"cache_dir={tmp_path}"])
    assert code == 0 and json.loads(capsys.readouterr().out)["splits"] == {"train": 2, "val": 0, "test": 0}
    assert convrnn(["data", "folder", "--root", str(tmp_path / "none")]) == 1


def test_folder_and_movingmnist_counts(tmp_path, capsys):
    for name in ("a.avi", "b.avi", "c.avi", "d.avi"):
        write_avi(tmp_path / "own" / name, range(1, 45))
    info = report(capsys, "folder", "--root", str(tmp_path / "own"), "--set", "split=[0.5, 0.25, 0.25]",
                  "--set", f"cache_dir={tmp_path / 'c'}")
    assert info["splits"] == {"train": 4, "val": 2, "test": 2}      # 44 frames: 2 windows of 20 per video
    np.save(tmp_path / "mnist_test_seq.npy", np.zeros((20, 3, 64, 64), np.uint8))
    info = report(capsys, "movingmnist", "--root", str(tmp_path), "--set", "train_size=8", "--set", "val_size=4")
    assert info == {"dataset": "movingmnist", "protocol": "srivastava", "splits": {"train": 8, "val": 4, "test": 3},
                    "in_len": 10, "out_len": 10, "channels": 1, "height": 64, "width": 64}


@pytest.mark.parametrize("name", NAMES)
def test_missing_folder_gives_one_clear_message(tmp_path, capsys, name):
    code, out, err = run(capsys, name, "--root", str(tmp_path / "missing"), "--json")
    assert code == 1 and out == ""
    assert err.startswith("convrnn data: ") and str(tmp_path / "missing") in err
    assert "http" in err or name == "folder"                      # where to get the data
    if name != "movingmnist":
        assert "Expected under" in err and "docs/data.md" in err


def test_malformed_folder_and_bad_arguments(tmp_path, capsys):
    (tmp_path / "boxing" / "person01_boxing_d1_uncomp").mkdir(parents=True)
    code, _, err = run(capsys, "kth", "--root", str(tmp_path))
    assert code == 1 and "no jpeg videos of persons [15, 16] (val split)" in err
    code, _, err = run(capsys, "kth", "--root", str(tmp_path), "--set", "val_persons=[]", "--set", "test_persons=[]")
    assert code == 1 and "holds no image_NNNN.jpg frames" in err
    code, _, err = run(capsys, "kth", "--root", str(tmp_path), "--protocol", "nope")
    assert code == 1 and "choose one of ['openstl', 'msrnn']" in err
    with pytest.raises(SystemExit) as exit_:
        main(["imagenet", "--root", str(tmp_path)])
    assert exit_.value.code == 2
